"""One explainer per model family: how to run it, remove events from it, and score events.

An explainer knows its model's inputs; everything downstream (deletion curves,
precision@k, sanity checks, plots) sees only per-event scores [B, E] and a function
"logits without these events". Methods, all attributing the mortality LOGIT (never the
sigmoid, which saturates) of a one-logit model (`target=None`), in eval mode:

Token models (`lstm`, `transformer`, `gpt2`; `TokenExplainer`):
- `layer_integrated_gradients`: Captum LayerIntegratedGradients on the token embedding
  layer, summed over the embedding dimension and over an event's tokens. Baseline: the
  `<unk>` token at every EVENT token, the input itself at every other token (`<bos>`,
  demographics, `<eos>`, gaps) and at padding, so those get exactly 0 and the event
  attributions sum to logit(x) - logit(all events replaced by `<unk>`), up to the
  convergence delta. `<unk>` is a trained embedding ("some rare event"); the `<pad>`
  embedding is never trained as an input (LSTM: fixed at 0), and a train-mean embedding
  is no token, so LIG (baselines in input space) could not pass it through the layer.
- `event_ablation`: Captum FeatureAblation on an event-presence vector [B, E]; the
  wrapper REMOVES an absent event's tokens and re-packs the row (kept tokens moved left,
  positions renumbered, the rest padding), which is what the model would have seen
  without that event. Zeroing an embedding or masking a key in place would not do: the
  LSTM reads every token inside `lengths`, and positions would keep their numbers.
- `attention_pooling`: the weights of the MortalityHead (models/head.py), which
  pools the hidden states of ALL real tokens with a softmax over a learned score -- it
  is not read from the last token. So there is no single "position that feeds the head":
  the head's read-out over positions is these weights.
- `attention_rollout` (transformer, gpt2): the head's weights carried back through the
  causal self-attention layers: w^T R, R the rollout of the layers' attention (captured
  with hooks, `token_attention.py`).

survival_lstm (`SurvivalExplainer`): the landmark's logit(1 - S(horizon)); LayerIG on the
code embedding from the <pad> (zero, = empty visit) embedding, and event ablation, per
(visit, code) unit of the pre-cutoff visits (explain/visits.py). It has no attention.

clinical_lf (`ClinicalLFExplainer`): IG on steps and static features from the train-mean
baseline, LayerIG on the input projection, event ablation by the padding mask, the
pooling attention and its rollout (see attributions.py and attention.py).

`cascade()` lists parameter groups from the output head down to the inputs, for the
model-parameter randomisation check (sanity.py).
"""
from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from captum.attr import FeatureAblation, LayerIntegratedGradients
from torch import nn
from torch.nn import functional as F

from ehrseq.explain.attention import attention_rollout, pooling_event_scores
from ehrseq.explain.attributions import group_ablation, integrated_gradients, layer_integrated_gradients, mean_baselines
from ehrseq.explain.events import EventIndex, index_events, positions_of, to_events
from ehrseq.explain.token_attention import record_token_attention, token_layer_attention
from ehrseq.models.attention import forward_with_attention
from ehrseq.schema import PAD_ID, UNK_ID
from ehrseq.survival import landmark_logits
from ehrseq.torch_utils import eval_mode

Batch = dict[str, torch.Tensor]


@dataclass
class Explanation:
    """Per-event scores of one batch by every method, and what else the batch produced."""
    scores: dict[str, torch.Tensor]  # method -> [B, E]
    logits: torch.Tensor  # [B]
    # method -> ([B] delta, [B] change)
    convergence: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    # arrays to save: layer_i [B, H, T, T], pooling ...
    attention: dict[str, torch.Tensor] = field(default_factory=dict)
    frames: dict[str, pd.DataFrame] = field(default_factory=dict)  # model-specific tables (clinical_lf)


def _repeat_to(t: torch.Tensor, n: int) -> torch.Tensor:
    """Repeat a [B, ...] tensor along dim 0 to n rows, as Captum stacks perturbed copies."""
    return t if t.shape[0] == n else t.repeat(n // t.shape[0], *([1] * (t.dim() - 1)))


def event_ablation(
    logits_without: Callable[[torch.Tensor, int], torch.Tensor], events: EventIndex, perturbations_per_eval: int = 1,
) -> torch.Tensor:
    """[B, E] logit(all events) - logit(without event e), by Captum FeatureAblation.

    The ablated input is event presence [B, E] (1 = present), one feature group per
    event column; its baseline 0 = absent. `logits_without(removed [N, E] bool, N)`
    returns the logits with those events removed (N = B times the perturbations Captum
    stacks into one call). Padding columns are already 0 = baseline, so they score 0.
    """
    present = (~events.padding).float()  # [B, E]
    mask = torch.arange(present.shape[1], device=present.device)[None, :]  # [1, E]: one group per event

    def forward(present: torch.Tensor) -> torch.Tensor:
        return logits_without(present < 0.5, present.shape[0])

    with torch.no_grad():
        attr = FeatureAblation(forward).attribute(
            present, baselines=0.0, target=None, feature_mask=mask, perturbations_per_eval=perturbations_per_eval)
    return attr.masked_fill(events.padding, 0.0)


def _reset_prefixes(model: nn.Module, prefixes: tuple[str, ...]) -> list[str]:
    """Re-initialise every parameter under `prefixes` with its module's own initialiser
    (`reset_parameters`), or N(0, 0.02) / 0 for a bare parameter (GPT-2 init); returns names."""
    def under(name: str) -> bool:
        return any(name == p or name.startswith(p + ".") for p in prefixes)

    done: set[int] = set()
    for name, module in model.named_modules():
        if not under(name):
            continue
        reset = getattr(module, "reset_parameters", None) or getattr(module, "_reset_parameters", None)
        if reset is not None:
            reset()
            done.update(id(p) for p in module.parameters())
    names = []
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not under(name):
                continue
            names.append(name)
            if id(p) not in done:
                p.normal_(0.0, 0.02) if p.dim() >= 2 else p.zero_()
    if not names:
        raise KeyError(f"no parameter under {prefixes}")
    return names


class Explainer:
    methods: tuple[str, ...] = ()
    gradient_methods: tuple[str, ...] = ()
    baseline: str = ""

    def __init__(self, model: nn.Module, name: str):
        self.model = model.eval()
        self.name = name

    def events(self, batch: Batch) -> EventIndex: ...
    def logits(self, batch: Batch, removed: torch.Tensor | None = None) -> torch.Tensor: ...
    def explain(self, batch: Batch, events: EventIndex, config) -> Explanation: ...
    def cascade(self) -> list[tuple[str, tuple[str, ...]]]: ...

    def randomised(self, prefixes: tuple[str, ...], seed: int) -> Explainer:
        """A copy whose parameters under `prefixes` are re-initialised (seeded)."""
        model = copy.deepcopy(self.model)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            _reset_prefixes(model, prefixes)
        return type(self)(model.eval(), self.name, **self._init_kwargs())

    def with_model(self, model: nn.Module) -> Explainer:
        return type(self)(model.eval(), self.name, **self._init_kwargs())

    def _init_kwargs(self) -> dict:
        return {}

    @contextlib.contextmanager
    def _gradients(self):
        # cuDNN's RNN backward refuses eval mode; the plain kernels give the same gradients
        with eval_mode(self.model), torch.backends.cudnn.flags(enabled=False):
            yield

    def logits_without(self, batch: Batch, events: EventIndex) -> Callable[[torch.Tensor, int], torch.Tensor]:
        """(removed [N, E] bool, N) -> [N] logits, for N = k * B stacked copies of the batch."""
        def run(removed: torch.Tensor, n: int) -> torch.Tensor:
            big = {k: _repeat_to(v, n) for k, v in batch.items()}
            index = EventIndex(_repeat_to(events.index, n), _repeat_to(events.rows, n), _repeat_to(events.padding, n))
            return self.logits(big, positions_of(removed, index))
        return run


# ------------------------------------------------------------------- token models


def compact(input_ids: torch.Tensor, keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Move each row's kept tokens to the front (order kept), pad the rest:
    ([B, T] ids, [B, T] attention mask). The model then sees the stay without the dropped tokens."""
    order = (~keep).to(torch.int8).argsort(dim=1, stable=True)  # kept positions first
    ids = input_ids.gather(1, order)
    mask = torch.arange(input_ids.shape[1], device=input_ids.device)[None, :] < keep.sum(dim=1, keepdim=True)
    return ids.masked_fill(~mask, PAD_ID), mask


EMBEDDING_LAYER = {"LSTMTokenModel": "embed", "TransformerTokenModel": "tok_emb", "GPT2TokenModel": "backbone.wte"}


class TokenExplainer(Explainer):
    gradient_methods = ("layer_integrated_gradients",)
    baseline = ("layer_integrated_gradients: the <unk> token embedding at every event token; the input itself at "
                "<bos>, demographic, <eos> and gap tokens and at padding (they get 0)")

    def __init__(self, model: nn.Module, name: str):
        super().__init__(model, name)
        self.has_attention = hasattr(model, "blocks") or hasattr(model, "backbone")
        self.methods = ("layer_integrated_gradients", "event_ablation", "attention_pooling") + (
            ("attention_rollout",) if self.has_attention else ())
        self.embedding = model.get_submodule(EMBEDDING_LAYER[type(model).__name__])

    def events(self, batch):
        return index_events(batch["event_row"], batch["attention_mask"])

    def _forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids, attention_mask)["logits"]

    def logits(self, batch, removed=None):
        if removed is None:
            return self._forward(batch["input_ids"], batch["attention_mask"])
        ids, mask = compact(batch["input_ids"], batch["attention_mask"] & ~removed)
        return self._forward(ids, mask)

    def layer_integrated_gradients(self, batch, events, n_steps, internal_batch_size):
        ids, mask = batch["input_ids"], batch["attention_mask"]
        baseline = torch.where(events.index >= 0, torch.full_like(ids, UNK_ID), ids)  # [B, T]
        with self._gradients():
            lig = LayerIntegratedGradients(self._forward, self.embedding)
            attr, delta = lig.attribute(ids, baselines=baseline, target=None, additional_forward_args=(mask,),
                                        n_steps=n_steps, internal_batch_size=internal_batch_size,
                                        return_convergence_delta=True)  # [B, T, D], [B]
        with torch.no_grad():
            change = self._forward(ids, mask) - self._forward(baseline, mask)
        return to_events(attr.detach().sum(dim=-1), events), delta.detach(), change

    def explain(self, batch, events, config):
        ids, mask = batch["input_ids"], batch["attention_mask"]
        lig, delta, change = self.layer_integrated_gradients(batch, events, config.ig_steps, config.internal_batch_size)
        with torch.no_grad():
            if self.has_attention:
                with record_token_attention(self.model) as records:
                    out = self.model(ids, mask)
                layers = token_layer_attention(records)
            else:
                out, layers = self.model(ids, mask), []
        pool = out["pool_weights"]  # [B, T], zero on padding
        scores = {
            "layer_integrated_gradients": lig,
            "event_ablation": event_ablation(self.logits_without(batch, events), events, config.perturbations_per_eval),
            "attention_pooling": to_events(pool, events),
        }
        attention = {"pooling": pool}
        if layers:
            rollout = attention_rollout(layers, ~mask)  # [B, T, T]
            scores["attention_rollout"] = to_events((pool[:, None, :] @ rollout).squeeze(1), events)
            attention.update({f"layer_{i}": w for i, w in enumerate(layers)})
        return Explanation(scores, out["logits"], {"layer_integrated_gradients": (delta, change)}, attention)

    def cascade(self):
        m = self.model
        if hasattr(m, "blocks"):
            blocks = [(f"block_{i}", (f"blocks.{i}",)) for i in reversed(range(len(m.blocks)))]
            return [("mortality_head", ("mortality_head",)), ("final_norm", ("ln_f",)), *blocks,
                    ("embeddings", ("tok_emb", "pos_emb"))]
        if hasattr(m, "backbone"):
            blocks = [(f"block_{i}", (f"backbone.h.{i}",)) for i in reversed(range(len(m.backbone.h)))]
            return [("mortality_head", ("mortality_head",)), ("final_norm", ("backbone.ln_f",)), *blocks,
                    ("embeddings", ("backbone.wte", "backbone.wpe"))]
        stacks = [("backward_lstm", ("backward_lstm",))] if m.backward_lstm is not None else []
        return [("mortality_head", ("mortality_head",)), *stacks, ("forward_lstm", ("forward_lstm",)),
                ("embeddings", ("embed",))]


# ------------------------------------------------------------------------ clinical_lf


class ClinicalLFExplainer(Explainer):
    methods = ("integrated_gradients", "layer_integrated_gradients", "event_ablation", "attention_pooling",
               "attention_rollout")
    gradient_methods = ("integrated_gradients", "layer_integrated_gradients")
    baseline = ("integrated_gradients: the train-mean step at every event and the train-mean static vector; "
                "layer_integrated_gradients: the train-mean step passed through the input projection, static "
                "features at their real values; padding keeps the input's values (gets 0)")

    def __init__(self, model: nn.Module, name: str, encoder=None):
        super().__init__(model, name)
        if encoder is None:
            raise ValueError("clinical_lf needs the feature encoder its checkpoint was trained with")
        self.encoder = encoder

    def _init_kwargs(self):
        return {"encoder": self.encoder}

    def events(self, batch):
        return index_events(batch["event_row"], ~batch["padding_mask"])

    def logits(self, batch, removed=None):
        padding = batch["padding_mask"] if removed is None else batch["padding_mask"] | removed
        return self.model(batch["steps"], batch["static"], padding)["logits"]

    def explain(self, batch, events, config):
        padding = batch["padding_mask"]
        steps_base, static_base = mean_baselines(batch, self.encoder)
        steps, chunk = config.ig_steps, config.internal_batch_size
        ig = integrated_gradients(self.model, batch, (steps_base, static_base), steps, chunk)
        lig, lig_delta = layer_integrated_gradients(self.model, batch, steps_base, steps, chunk)
        outputs, attention = forward_with_attention(self.model, batch)
        with torch.no_grad():
            base_logits = self.model(steps_base, static_base, padding)["logits"]
            steps_base_logits = self.model(steps_base, batch["static"], padding)["logits"]
        rollout = attention_rollout(attention.layers, padding)
        scores = {
            "integrated_gradients": to_events(ig.steps.sum(dim=-1).masked_fill(padding, 0.0), events),
            "layer_integrated_gradients": to_events(lig.sum(dim=-1).masked_fill(padding, 0.0), events),
            "event_ablation": event_ablation(self.logits_without(batch, events), events, config.perturbations_per_eval),
            "attention_pooling": to_events(pooling_event_scores(attention.pooling, padding), events),
            "attention_rollout": to_events(pooling_event_scores(attention.pooling, padding, rollout), events),
        }
        logits = outputs["logits"]
        stay_ids = batch["stay_id"].cpu().numpy()
        groups = group_ablation(self.model, batch, (steps_base, static_base), self.encoder)
        frames = {
            "static_attributions": pd.DataFrame(ig.static.cpu().numpy(), columns=self.encoder.static_names)
            .assign(stay_id=stay_ids).melt("stay_id", var_name="feature", value_name="score"),
            "group_ablation": pd.DataFrame({g: v.cpu().numpy() for g, v in groups.items()})
            .assign(stay_id=stay_ids).melt("stay_id", var_name="group", value_name="score"),
        }
        return Explanation(
            scores, logits,
            {"integrated_gradients": (ig.delta, logits - base_logits),
             "layer_integrated_gradients": (lig_delta, logits - steps_base_logits)},
            {**{f"layer_{i}": w for i, w in enumerate(attention.layers)}, "pooling": attention.pooling},
            frames,
        )

    def cascade(self):
        layers = [(f"layer_{i}", (f"encoder.layers.{i}",)) for i in reversed(range(len(self.model.encoder.layers)))]
        return [("classifier", ("classifier", "step_head")), ("pooling", ("pool", "pool_query")), *layers,
                ("input_projection", ("input_proj",))]


# ---------------------------------------------------------------------- survival_lstm


def risk_logit(hazard_logits: torch.Tensor) -> torch.Tensor:
    """logit(1 - S(H)) from the landmark's H hazard logits [B, H] -> [B]: the log-odds of
    death within the horizon, computed in log space (log S = sum log(1 - h_m);
    logit(1 - S) = log(-expm1(log S)) - log S), never through the probability."""
    log_s = F.logsigmoid(-hazard_logits).sum(dim=-1)  # [B], < 0
    return torch.log(-torch.expm1(log_s)) - log_s


class SurvivalExplainer(Explainer):
    """survival_lstm at the cutoff. The attributed scalar is the landmark state's
    logit(1 - S(H)), the log-odds of death within the horizon (the risk `evaluate` ranks
    stays by is its sigmoid, 1 - S(H)). Events are (visit, code) units of the pre-cutoff
    visits (explain/visits.py); removing one drops the code from its visit's mean (a visit
    left without codes is an empty visit, as the view writes an empty bin)."""

    methods = ("layer_integrated_gradients", "event_ablation")
    gradient_methods = ("layer_integrated_gradients",)
    baseline = ("layer_integrated_gradients: the <pad> embedding (a fixed zero vector) at every code, so every "
                "pre-cutoff visit becomes an empty visit -- inputs the model sees for bins without events; the "
                "reference is the stay with no pre-cutoff events. Padding keeps the input (gets 0)")

    def events(self, batch):
        return index_events(batch["event_row"].flatten(1), batch["visit_mask"].flatten(1))  # positions = V x C

    def _forward(self, visit_codes, visit_mask, sequence_mask, landmark) -> torch.Tensor:
        out = self.model(visit_codes, visit_mask, sequence_mask, landmark)["logits"]  # [B, V, H]
        return risk_logit(landmark_logits(out, landmark))

    def logits(self, batch, removed=None):
        mask = batch["visit_mask"]
        if removed is not None:
            mask = mask & ~removed.view_as(mask)
        return self._forward(batch["visit_codes"], mask, batch["sequence_mask"], batch["landmark"])

    def explain(self, batch, events, config):
        codes, mask = batch["visit_codes"], batch["visit_mask"]
        rest = (mask, batch["sequence_mask"], batch["landmark"])
        baseline = codes.masked_fill(mask, PAD_ID)  # [B, V, C]
        with self._gradients():
            lig = LayerIntegratedGradients(self._forward, self.model.embed)
            attr, delta = lig.attribute(codes, baselines=baseline, target=None, additional_forward_args=rest,
                                        n_steps=config.ig_steps, internal_batch_size=config.internal_batch_size,
                                        return_convergence_delta=True)  # [B, V, C, E], [B]
        with torch.no_grad():
            logits = self._forward(codes, *rest)
            change = logits - self._forward(baseline, *rest)
        scores = {
            "layer_integrated_gradients": to_events(attr.detach().sum(dim=-1).flatten(1), events),
            "event_ablation": event_ablation(self.logits_without(batch, events), events, config.perturbations_per_eval),
        }
        return Explanation(scores, logits, {"layer_integrated_gradients": (delta.detach(), change)})

    def cascade(self):
        return [("hazard_head", ("hazard_head", "baseline")), ("lstm", ("lstm",)), ("embeddings", ("embed",))]


def make_explainer(name: str, model: nn.Module, encoder=None) -> Explainer:
    """The explainer of a registered model."""
    if name == "survival_lstm":
        return SurvivalExplainer(model, name)
    if name == "clinical_lf":
        return ClinicalLFExplainer(model, name, encoder=encoder)
    if name in ("lstm", "transformer", "gpt2"):
        return TokenExplainer(model, name)
    raise KeyError(f"no explainer for model {name!r}")


def as_numpy(tensors: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    return {k: v.detach().float().cpu().numpy() for k, v in tensors.items()}
