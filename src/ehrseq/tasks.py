"""What a model is trained and evaluated on: one class per task, plugged into `training.fit`.

A task implements the loop's `Task` protocol (see `ehrseq.training`):

    task.loss(model, batch)    -> (scalar loss, {name: float} to log besides the loss)
    task.predict(model, batch) -> {name: [B] tensor}, one row per example
    task.metrics(predictions)  -> {name: float} over a whole split (numpy arrays in)
    task.monitor, task.mode    -> the validation metric early stopping watches, "max"/"min"
    task.config()              -> constructor arguments, stored in checkpoints

Every model returns its prediction as `logits` (and token models their states as
`hidden`), so a task reads model outputs by one name; only the inputs differ between
token models (`input_ids`, `attention_mask`) and clinical_lf (`steps`, `static`,
`padding_mask`); prompt_bart reads encoder and decoder ids and demographics and returns
`logits` [B, T, V].
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ehrseq import metrics
from ehrseq.data import class_balance_weights
from ehrseq.models.clinical_lf import clinical_lf_loss
from ehrseq.models.med2vec import negative_sampling_loss
from ehrseq.survival import discrete_time_nll, landmark_logits, log_likelihood, loss_masks, survival_curve

Batch = dict[str, torch.Tensor]


class NextTokenTask:
    """Next-token pretraining: the state at position t predicts token t+1.

    Only pairs whose target is a real token count, and only their hidden states go
    through the vocabulary projection (the largest matrix multiply) -- not the padding.
    """

    name = "pretrain"
    monitor, mode = "loss", "min"

    def _token_nll(self, model: nn.Module, batch: Batch):
        out = model(batch["input_ids"], batch["attention_mask"])
        target_mask = batch["attention_mask"][:, 1:]  # [B, T-1]
        hidden = out["hidden"][:, :-1][target_mask]  # [N, H]
        targets = batch["input_ids"][:, 1:][target_mask]  # [N]
        logits = model.next_token_logits(hidden).float()  # [N, V]
        return logits, targets, F.cross_entropy(logits, targets, reduction="none"), target_mask

    def loss(self, model, batch):
        _, _, nll, _ = self._token_nll(model, batch)
        return nll.mean(), {}

    def predict(self, model, batch):
        logits, targets, nll, target_mask = self._token_nll(model, batch)
        row = target_mask.nonzero()[:, 0]  # [N] which sequence each target belongs to
        per_row = torch.zeros(target_mask.shape[0], device=nll.device)
        correct = (logits.argmax(dim=-1) == targets).float()
        return {
            "stay_id": batch["stay_id"],
            "nll_sum": per_row.index_add(0, row, nll),
            "n_correct": per_row.index_add(0, row, correct),
            "n_tokens": target_mask.sum(dim=1),
        }

    def metrics(self, p):
        return {
            "loss": float(p["nll_sum"].sum() / p["n_tokens"].sum()),
            "perplexity": metrics.perplexity(p["nll_sum"], p["n_tokens"]),
            "accuracy": metrics.token_accuracy(p["n_correct"], p["n_tokens"]),
        }

    def config(self):
        return {}


class MortalityTask:
    """In-hospital mortality from the model's single logit (token models).

    Rare positives are up-weighted either in the loss (`pos_weight`) or by a
    class-balanced sampler. Both raise the training odds of death by a known factor, so
    the best logit moves up by log(that factor); `logit_shift` subtracts it again at
    prediction time (prior correction), keeping probabilities calibrated to the real
    prevalence. Ranking metrics are unaffected.
    """

    name = "mortality"
    monitor, mode = "auroc", "max"

    def __init__(self, pos_weight: float = 1.0, logit_shift: float = 0.0):
        self.pos_weight = pos_weight
        self.logit_shift = logit_shift

    def outputs(self, model: nn.Module, batch: Batch) -> dict[str, torch.Tensor]:
        return model(batch["input_ids"], batch["attention_mask"])

    def loss(self, model, batch):
        logit = self.outputs(model, batch)["logits"].float()  # [B]
        pos_weight = torch.tensor(self.pos_weight, device=logit.device)
        return F.binary_cross_entropy_with_logits(logit, batch["label"], pos_weight=pos_weight), {}

    def predict(self, model, batch):
        logit = self.outputs(model, batch)["logits"].float() - self.logit_shift
        return {"stay_id": batch["stay_id"], "label": batch["label"], "logit": logit, "prob": torch.sigmoid(logit)}

    def metrics(self, p):
        log_loss = F.binary_cross_entropy_with_logits(torch.from_numpy(p["logit"]), torch.from_numpy(p["label"]))
        return {"auroc": metrics.auroc(p["label"], p["prob"]), "loss": float(log_loss)}

    def config(self):
        return {"pos_weight": self.pos_weight, "logit_shift": self.logit_shift}


class ClinicalLFTask(MortalityTask):
    """Mortality for `clinical_lf`: its stay logit, plus the temporal auxiliary loss when
    `temporal_lambda` > 0 (see `models.clinical_lf.clinical_lf_loss`)."""

    def __init__(self, pos_weight: float = 1.0, logit_shift: float = 0.0, temporal_lambda: float = 0.0):
        super().__init__(pos_weight, logit_shift)
        self.temporal_lambda = temporal_lambda

    def outputs(self, model, batch):
        return model(batch["steps"], batch["static"], batch["padding_mask"])

    def loss(self, model, batch):
        out = {k: v.float() for k, v in self.outputs(model, batch).items()}
        losses = clinical_lf_loss(out, batch, self.temporal_lambda, self.pos_weight)
        return losses["loss"], {"stay_loss": losses["stay_loss"].item(), "step_loss": losses["step_loss"].item()}

    def config(self):
        return {"pos_weight": self.pos_weight, "logit_shift": self.logit_shift, "temporal_lambda": self.temporal_lambda}


IMBALANCE_STRATEGIES = ("pos_weight", "sampler", "none")


def mortality_task(
    labels: np.ndarray, imbalance: str, task_class: type[MortalityTask] = MortalityTask, **task_kwargs
) -> tuple[MortalityTask, np.ndarray | None]:
    """The mortality task for one imbalance strategy, and sampling weights if it needs them."""
    if imbalance not in IMBALANCE_STRATEGIES:
        raise ValueError(f"imbalance must be one of {IMBALANCE_STRATEGIES}, got {imbalance!r}")
    labels = np.asarray(labels)
    n_pos = int(labels.sum())
    if n_pos in (0, len(labels)):
        raise ValueError(f"training labels have one class ({n_pos} deaths in {len(labels)} stays)")
    odds_factor = (len(labels) - n_pos) / n_pos  # negatives per positive
    if imbalance == "pos_weight":
        return task_class(pos_weight=odds_factor, logit_shift=math.log(odds_factor), **task_kwargs), None
    if imbalance == "sampler":
        return task_class(logit_shift=math.log(odds_factor), **task_kwargs), class_balance_weights(labels)
    return task_class(**task_kwargs), None


class SurvivalTask:
    """survival_lstm's task for `training.fit`: trains on every at-risk state, predicts
    and monitors at the landmark (the landmark NLL on val: a proper score of the curve
    that is evaluated)."""

    name = "survival"
    monitor, mode = "landmark_nll", "min"

    def loss(self, model: nn.Module, batch: Batch):
        return discrete_time_nll(self.logits(model, batch), batch), {}

    def logits(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        out = model(batch["visit_codes"], batch["visit_mask"], batch["sequence_mask"], batch["landmark"])
        return out["logits"].float()

    def predict(self, model: nn.Module, batch: Batch):
        logits = self.logits(model, batch)  # [B, V, H]
        survived, at_event = loss_masks(batch["sequence_mask"], batch["landmark"], batch["event_bin"], batch["event"],
                                        logits.shape[-1], max_state=0)
        return {
            "stay_id": batch["stay_id"], "subject_id": batch["subject_id"], "time_hours": batch["time_hours"],
            "event": batch["event"], "event_bin": batch["event_bin"],
            "survival": survival_curve(landmark_logits(logits, batch["landmark"])),  # [B, H]
            "landmark_nll": -log_likelihood(logits, survived, at_event),  # [B]
        }

    def metrics(self, p):
        n_bins = p["survival"].shape[1]
        curve = np.hstack([np.ones((len(p["survival"]), 1)), p["survival"]])  # S(0) = 1
        out = {"landmark_nll": float(p["landmark_nll"].mean())}
        # Imported here: pycox and scikit-survival take seconds to import, which every stage
        # importing this module (all training, evaluation and explanation) would pay.
        from ehrseq.survival_metrics import antolini_c

        try:  # in bin units: enough to watch ranking during training
            out["c_index"] = antolini_c(curve, np.arange(n_bins + 1.0), p["event_bin"], p["event"])
        except metrics.UndefinedMetricError:
            pass
        return out

    def config(self):
        return {}
class SkipGramTask:
    """TemporalMed2Vec with negative sampling on `code_embeddings.pairs.SkipGramBatches`.

    Validation reports the temporally weighted negative-sampling loss on val patients
    (codes mapped with the train vocabulary), the value early stopping watches.
    """

    name = "skipgram"
    monitor, mode = "loss", "min"
    # Negatives' scores: up to this many codes, read from one [B, V] matmul (`score_all`);
    # above, gathered row by row (`score`). Same values either way; per training step the
    # matmul is 2.7x faster at 655 codes, 1.6x at 2,000, 0.77x at 5,000 (benchmarks/med2vec.py).
    score_all_max_vocab = 3000

    def _scores(self, model, batch: Batch) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        out = model(batch["target"], batch["context"], batch["dt"], batch["context_mask"])
        negatives = batch["negatives"]  # [B, C, K]
        if model.context_embeddings.num_embeddings <= self.score_all_max_vocab:
            negative_scores = model.score_all(batch["target"]).gather(1, negatives.flatten(1))  # [B, C*K]
        else:
            negative_scores = model.score(batch["target"], negatives.flatten(1))  # [B, C*K]
        negative_scores = negative_scores.view(negatives.shape)
        return out, negative_scores

    def loss(self, model, batch):
        out, negative_scores = self._scores(model, batch)
        return negative_sampling_loss(out["scores"].float(), negative_scores.float(), out["weights"].float()), {}

    def predict(self, model, batch):
        out, negative_scores = self._scores(model, batch)
        weights = out["weights"].float()
        per_target = negative_sampling_loss(out["scores"].float(), negative_scores.float(), weights, reduce=False)
        return {"loss_sum": per_target, "weight": weights.sum(dim=1)}

    def metrics(self, p):
        return {"loss": float(p["loss_sum"].sum() / max(p["weight"].sum(), 1e-12))}

    def config(self):
        return {}


class PromptBartTask:
    """Reconstruction of the patient sequence from its corrupted copy (see
    `patient_visits.Corruption`), for the shared training loop.

    Targets are the decoder labels; `score_type` selects which count: -2 (training and
    validation batches) every real target, t >= 0 only targets scored for code type t
    (evaluation views). Early stopping watches the validation loss.
    """

    name = "prompt_bart"
    monitor, mode = "loss", "min"

    def _nll(self, model, batch):
        logits = model(batch["input_ids"], batch["attention_mask"], batch["decoder_input_ids"],
                       batch["decoder_attention_mask"], batch["x_num"], batch["x_cat"])["logits"]
        scored = batch["score_type"] != -1  # [B, T]
        nll = F.cross_entropy(logits[scored].float(), batch["labels"][scored], reduction="none")  # [N]
        return nll, scored

    def loss(self, model, batch):
        nll, _ = self._nll(model, batch)
        return nll.mean(), {}

    def __init__(self, n_types: int = 4):
        self.n_types = n_types

    def predict(self, model, batch):
        nll, scored = self._nll(model, batch)
        row = scored.nonzero()[:, 0]  # [N] the example each target belongs to
        per_row = torch.zeros(scored.shape[0], device=nll.device)
        # per code type (evaluation views): flat index row * n_types + type; training's -2 goes nowhere
        code_type = batch["score_type"][scored]  # [N]
        typed = code_type >= 0
        flat = row[typed] * self.n_types + code_type[typed]
        per_type = torch.zeros(scored.shape[0] * self.n_types, device=nll.device)
        return {"subject_id": batch["subject_id"], "nll_sum": per_row.index_add(0, row, nll),
                "n_tokens": scored.sum(dim=1),
                "nll_by_type": per_type.index_add(0, flat, nll[typed]).view(-1, self.n_types),  # [B, K]
                "n_by_type": per_type.index_add(0, flat, torch.ones_like(nll[typed])).view(-1, self.n_types)}

    def metrics(self, p):
        return {"loss": float(p["nll_sum"].sum() / p["n_tokens"].sum()),
                "perplexity": metrics.perplexity(p["nll_sum"], p["n_tokens"])}

    def config(self):
        return {"n_types": self.n_types}
