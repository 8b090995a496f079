"""Sanity checks that an explanation method can fail (Adebayo et al., 2018).

- Model-parameter randomisation, cascading: re-initialise the parameters group by group
  from the output head down to the input embedding (`Explainer.cascade`), recompute every
  method after each step, and compare with the trained model's scores by Spearman rank
  correlation over each stay's events (mean over stays). A method whose scores survive
  the destruction of what the model learned (correlation > 0.5 with everything
  randomised) explains the input or the architecture, not the model: it FAILS. The
  verdict uses signed scores (the ranking every other metric uses); the correlation of
  absolute scores is reported beside it.
- Label randomisation: a model of the same architecture trained by the shared loop on
  the training stays with their labels shuffled. It can learn nothing true, so its test
  AUROC must be ~0.5 (above it, the labels leak into training), and a method's
  precision@k of planted events on it must fall to the random ranking's level (above it,
  the method finds the planted events without the model's help). The budget is small on
  purpose. "~0.5" is judged against never-trained models of the same architecture
  (`untrained_aurocs`): a random network's output already follows input size and make-up.
"""
from __future__ import annotations

import logging
import tempfile
from dataclasses import replace

import numpy as np
import torch
from scipy.stats import rankdata
from torch import nn
from torch.utils.data import Dataset

from ehrseq import metrics
from ehrseq.explain.events import EventIndex
from ehrseq.models import build_model
from ehrseq.tasks import mortality_task
from ehrseq.torch_utils import seed_everything
from ehrseq.training import FitConfig, fit, predict

log = logging.getLogger(__name__)

THRESHOLD = 0.5  # Spearman above this after full randomisation: the method fails


def spearman_per_stay(a: torch.Tensor, b: torch.Tensor, padding: torch.Tensor) -> np.ndarray:
    """[B] Spearman correlation of a stay's event scores a vs b ([B, E] each, average
    ranks for ties); NaN for a stay with fewer than 3 events or constant scores."""
    a, b, real = a.double().cpu().numpy(), b.double().cpu().numpy(), (~padding).cpu().numpy()
    out = np.full(len(a), np.nan)
    for i in range(len(a)):
        x, y = a[i, real[i]], b[i, real[i]]
        if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
            continue
        out[i] = np.corrcoef(rankdata(x), rankdata(y))[0, 1]
    return out


def _scores(explainer, batches: list[tuple[dict, EventIndex]], config) -> list[dict[str, torch.Tensor]]:
    return [explainer.explain(batch, events, config).scores for batch, events in batches]


def parameter_randomisation(explainer, batches: list[tuple[dict, EventIndex]], config, seed: int = 0) -> dict:
    """Cascading randomisation of `explainer`'s model on prepared (batch, events) pairs."""
    trained = _scores(explainer, batches, config)
    report = {m: {"stages": []} for m in explainer.methods}
    prefixes: tuple[str, ...] = ()
    for stage, group in explainer.cascade():
        prefixes += group
        randomised = _scores(explainer.randomised(prefixes, seed), batches, config)
        for m in explainer.methods:
            signed = np.concatenate([spearman_per_stay(t[m], r[m], ev.padding)
                                     for t, r, (_, ev) in zip(trained, randomised, batches)])
            absolute = np.concatenate([spearman_per_stay(t[m].abs(), r[m].abs(), ev.padding)
                                       for t, r, (_, ev) in zip(trained, randomised, batches)])
            report[m]["stages"].append({
                "randomised_down_to": stage, "spearman": _nanmean(signed), "spearman_abs": _nanmean(absolute),
                "stays": int(np.isfinite(signed).sum()), "stays_undefined": int((~np.isfinite(signed)).sum()),
            })
        log.info("randomised down to %s: %s", stage,
                 {m: round(report[m]["stages"][-1]["spearman"], 3) for m in explainer.methods})
    for m, r in report.items():
        final = r["stages"][-1]["spearman"]
        r["spearman_fully_randomised"] = final
        r["passes"] = bool(final <= THRESHOLD)
        below = [s["randomised_down_to"] for s in r["stages"] if s["spearman"] <= THRESHOLD]
        r["first_stage_at_or_below_threshold"] = below[0] if below else None
    return {"threshold": THRESHOLD, "verdict_on": "signed scores, every group randomised", "methods": report}


def _nanmean(x: np.ndarray) -> float | None:
    return float(np.nanmean(x)) if np.isfinite(x).any() else None


class RelabelledDataset(Dataset):
    """`indices` of `base` with `labels` in place of theirs (lengths kept for bucketing)."""

    def __init__(self, base: Dataset, indices: np.ndarray, labels: np.ndarray):
        self.base, self.indices = base, np.asarray(indices)
        self.labels = np.asarray(labels, dtype=np.float32)
        self.lengths = np.asarray(base.lengths)[self.indices]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {**self.base[int(self.indices[i])], "label": torch.tensor(self.labels[i])}


def shuffled_label_model(
    model_name: str, model_config: dict, train: Dataset, loader_fn, fit_config: FitConfig, task_class,
    max_stays: int, epochs: int, seed: int, device: torch.device,
) -> tuple[nn.Module, object, dict]:
    """Train a fresh `model_name` on (up to) `max_stays` train stays with shuffled labels.

    `loader_fn(dataset, shuffle)` makes the loader the stage uses for this model; the
    validation set is a held-back fifth of the same shuffled stays (early stopping has
    nothing true to find, so it only keeps the budget small). Returns the model, its
    task (with prior correction) and a summary of the run.
    """
    rng = np.random.default_rng(seed)
    n = min(max_stays, len(train))
    chosen = np.sort(rng.choice(len(train), n, replace=False))
    labels = np.asarray(train.labels, dtype=np.float32)[chosen]
    shuffled = rng.permutation(labels)
    n_val = max(2, n // 5)
    fit_part = RelabelledDataset(train, chosen[n_val:], shuffled[n_val:])
    val_part = RelabelledDataset(train, chosen[:n_val], shuffled[:n_val])
    task, _ = mortality_task(fit_part.labels, "pos_weight", task_class)  # pos_weight: no sampler weights
    seed_everything(seed)
    model = build_model(model_name, **model_config).to(device)
    config = replace(fit_config, epochs=epochs, patience=None, seed=seed)
    with tempfile.TemporaryDirectory(prefix="label_shuffle_") as tmp:
        result = fit(model, task, loader_fn(fit_part, True), loader_fn(val_part, False), config,
                     checkpoint_dir=f"{tmp}/checkpoints", live_dir=f"{tmp}/live", device=device)
    summary = {"train_stays": len(fit_part), "epochs": epochs, "best_val_auroc_on_shuffled": result.best_metric,
               "label_agreement_with_truth": float((shuffled == labels).mean())}
    return model.eval(), task, summary


def auroc_with_interval(y: np.ndarray, prob: np.ndarray, patients: np.ndarray, n_resamples: int, seed: int) -> dict:
    """AUROC with a 95% interval that resamples patients (`patients[i]`: stay i's subject_id)."""
    return metrics.bootstrap(metrics.auroc, (y, prob), clusters=patients, n_resamples=n_resamples, seed=seed)


@torch.no_grad()
def untrained_aurocs(model_name: str, model_config: dict, task, loader, device: torch.device, seeds) -> list[float]:
    """Test AUROC of freshly initialised, never trained models: the bar a shuffled-label
    model is compared with. A random network is still a function of its input, and an
    input's size and make-up (how many events, which kinds) go with the outcome, so its
    AUROC scatters around 0.5 by more than sampling error; only a shuffled-label AUROC
    well above these says the labels leaked into training."""
    out = []
    for seed in seeds:
        seed_everything(seed)
        model = build_model(model_name, **model_config).to(device).eval()
        p = predict(model, task, loader, device)
        out.append(metrics.auroc(p["label"].astype(int), p["prob"]))
    return out
