"""Captum attributions for clinical_lf, done the way Captum's contract requires (event
ablation, shared by every model, lives in explainers.py).

- The model has ONE logit: every method attributes that logit with `target=None`, never
  the sigmoid (it saturates, flattening gradients) and never `target=1` (an index error
  on a one-logit output, not "the positive class").
- The model runs in eval mode (dropout would make the integration path random).
- The padding mask travels in `additional_forward_args`: it is [B, T], so Captum's
  repetition along dim 0 for every integration step or perturbation is correct.
- Removing an event means masking it in the padding mask, not zeroing its features: a
  zeroed step is still a position the encoder and the pooling attend to
  (`ClinicalLFExplainer.logits`).

Baseline (`mean_baselines`): the TRAIN-MEAN step (event-kind frequencies, mean text
embedding, mean time) and the train-mean static vector, rather than zeros. Sentence
embeddings lie near a sphere far from the origin, so the zero vector is a text the model
has never seen and the straight path from it crosses inputs off the data; from the mean
step, an event's attribution answers "how much does THIS event's kind, text and timing
move the risk logit compared with an average event at its place". Padded positions keep
the input's own values in the baseline, so input and baseline agree there and IG gives
them exactly zero.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pandas as pd
import torch
from captum.attr import FeatureAblation, IntegratedGradients, LayerIntegratedGradients
from torch import nn

from ehrseq.features import FeatureEncoder
from ehrseq.torch_utils import Batch, eval_mode


def logit_function(model: nn.Module) -> Callable[..., torch.Tensor]:
    """(steps, static, padding_mask) -> logits [B]: the quantity every method attributes."""
    def logits(steps: torch.Tensor, static: torch.Tensor, padding_mask: torch.Tensor) -> torch.Tensor:
        return model(steps, static, padding_mask)["logits"]
    return logits


def mean_baselines(batch: Batch, encoder: FeatureEncoder) -> tuple[torch.Tensor, torch.Tensor]:
    """(steps [B, T, F], static [B, S]) baselines: the train-mean step at real positions, the
    input itself at padding; the train-mean static vector. See the module docstring."""
    steps, static, padding = batch["steps"], batch["static"], batch["padding_mask"]
    step_mean = torch.tensor(encoder.step_mean, dtype=steps.dtype, device=steps.device)  # [F]
    steps_base = torch.where(padding[..., None], steps, step_mean.expand_as(steps))  # [B, T, F]
    static_base = torch.tensor(encoder.static_mean, dtype=static.dtype, device=static.device).expand_as(static)
    return steps_base, static_base.contiguous()


@dataclass
class IGResult:
    steps: torch.Tensor  # [B, T, F]
    static: torch.Tensor  # [B, S]
    delta: torch.Tensor  # [B] sum of attributions - (f(x) - f(baseline)), in logit units


def integrated_gradients(
    model: nn.Module, batch: Batch, baselines: tuple[torch.Tensor, torch.Tensor],
    n_steps: int = 50, internal_batch_size: int | None = None,
) -> IGResult:
    """IG of the logit w.r.t. step and static features together (a tuple input)."""
    with eval_mode(model):
        ig = IntegratedGradients(logit_function(model))
        (steps_attr, static_attr), delta = ig.attribute(
            (batch["steps"], batch["static"]), baselines=baselines, target=None,
            additional_forward_args=(batch["padding_mask"],), n_steps=n_steps,
            internal_batch_size=internal_batch_size, return_convergence_delta=True,
        )
    return IGResult(steps_attr.detach(), static_attr.detach(), delta.detach())


def layer_integrated_gradients(
    model: nn.Module, batch: Batch, steps_baseline: torch.Tensor,
    n_steps: int = 50, internal_batch_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """IG on the output of the input projection: ([B, T, E] attributions, [B] delta).

    Baselines are in INPUT space: Captum passes `steps_baseline` through the projection,
    so the reference is W @ mean_step + b (a zero input would map to the bias b, not to
    zero). Static features are held at their real values, so this explains the steps'
    share of f(x) - f(baseline steps, real static).
    """
    with eval_mode(model):
        lig = LayerIntegratedGradients(logit_function(model), model.input_proj)
        attr, delta = lig.attribute(
            batch["steps"], baselines=steps_baseline, target=None,
            additional_forward_args=(batch["static"], batch["padding_mask"]), n_steps=n_steps,
            internal_batch_size=internal_batch_size, return_convergence_delta=True,
        )
    return attr.detach(), delta.detach()


def group_ablation(
    model: nn.Module, batch: Batch, baselines: tuple[torch.Tensor, torch.Tensor], encoder: FeatureEncoder
) -> dict[str, torch.Tensor]:
    """{group: [B] logit(x) - logit(x with that group at its baseline)} by FeatureAblation.

    Groups: the event kind, text and time features of all events at once, and each static
    feature (a categorical's whole one-hot block, or age).
    """
    steps, static = batch["steps"], batch["static"]
    step_mask = torch.zeros(1, 1, steps.shape[-1], dtype=torch.long, device=steps.device)  # [1, 1, F]
    names = list(encoder.step_groups)
    for gid, cols in enumerate(encoder.step_groups.values()):
        step_mask[..., cols] = gid
    static_mask = torch.zeros(1, static.shape[-1], dtype=torch.long, device=static.device)  # [1, S]
    for name, cols in encoder.static_groups.items():
        static_mask[0, cols] = len(names)
        names.append(name)
    with eval_mode(model), torch.no_grad():
        steps_attr, static_attr = FeatureAblation(logit_function(model)).attribute(
            (steps, static), baselines=baselines, target=None,
            additional_forward_args=(batch["padding_mask"],), feature_mask=(step_mask, static_mask),
        )
    out = {}
    for name, cols in encoder.step_groups.items():
        out[name] = steps_attr[:, 0, cols.start]  # every element of a group carries the group's value
    for name, cols in encoder.static_groups.items():
        out[name] = static_attr[:, cols[0]]
    return out


def importance_by(scores: pd.DataFrame, column: str) -> pd.DataFrame:
    """Global importance per value of `column` (e.g. event_type, code) and method: mean
    absolute score, mean signed score and number of events, most important first. With a
    `text` column, `description` names the group for a reader: its most frequent event
    text with standalone numbers removed ("Lab: Lactate mmol/L (abnormal)" for LAB//50813)."""
    grouped = scores.assign(abs_score=scores["score"].abs()).groupby(["method", column], observed=True)
    table = grouped.agg(mean_abs_score=("abs_score", "mean"), mean_score=("score", "mean"), n_events=("score", "size"))
    if "text" in scores.columns:
        plain = scores["text"].str.replace(r"\s-?\d[\d.,]*(?=\s|$)", "", regex=True)
        table["description"] = plain.groupby([scores["method"], scores[column]], observed=True).agg(
            lambda t: t.mode().iat[0])
    return table.reset_index().sort_values(["method", "mean_abs_score"], ascending=[True, False], ignore_index=True)
