"""The whole explanation of one split, so the `explain` stage is a thin call.

For every batch: IG (step + static features), LayerIG on the input projection, event
ablation, feature-group ablation, attention captured on the real forward pass (pooling
and rollout scores), deletion curves of every ranking against random removal, and
precision@k against the planted events when the source planted any. Writes to `out_dir`:

    event_scores.parquet       stay_id, event_row, position, event_type, hours_before_cutoff,
                               code, text, method, score  (one row per event and method)
    static_attributions.parquet  stay_id, feature, score   (IG on the static features)
    group_ablation.parquet     stay_id, group, score       (kind / text / time / each static)
    predictions.parquet        stay_id, label, risk
    deletion.{png,csv}  precision_at_k.csv  head_kinds.csv
    importance_{event_type,code}.csv + importance_*_ig.{png,csv}
    stays/timeline_<stay>.{png,csv}, stays/heads_<stay>.{png,csv}  (highest-risk stays)
    attention/batch_<i>.npz    captured weights of the first `attention_batches` batches

and returns the metrics for explain.json.
"""
from __future__ import annotations

import logging
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset, Subset

from ehrseq.explain.attention import attention_rollout, pooling_event_scores
from ehrseq.explain.attributions import (
    event_ablation, group_ablation, importance_by, integrated_gradients, layer_integrated_gradients,
    mean_baselines, scores_frame, step_scores,
)
from ehrseq.explain.faithfulness import deletion_curves, deletion_table, head_specialisation, precision_at_k
from ehrseq.explain.plots import deletion_plot, head_heatmap, importance_bars, stay_timeline, write_csv
from ehrseq.features import FeatureEncoder, collate
from ehrseq.io import write_parquet
from ehrseq.models.attention import forward_with_attention, save_attention

log = logging.getLogger(__name__)


@dataclass
class ExplainConfig:
    """The `explain` section of params.yaml, which holds the defaults (this class has none)."""

    batch_size: int
    ig_steps: int
    internal_batch_size: int | None  # bounds IG memory: examples x steps per forward
    k_max: int  # deletion curves remove up to this many events
    precision_k: tuple[int, ...]
    n_random: int  # random rankings averaged for the deletion baseline
    n_permutations: int  # head-specialisation null
    plot_stays: int
    attention_batches: int
    max_stays: int | None  # explain a seeded sample: event ablation costs T forwards per batch
    seed: int


def _delta_summary(delta: torch.Tensor, change: torch.Tensor, n_steps: int) -> dict[str, float]:
    """Convergence of an IG run: |sum of attributions - output change|, absolute (logits)
    and relative to the output change it should account for."""
    rel = delta.abs() / change.abs().clamp_min(1e-6)
    return {"n_steps": n_steps, "abs_delta_median": float(delta.abs().median()), "abs_delta_max": float(delta.abs().max()),
            "relative_delta_median": float(rel.median()), "relative_delta_p95": float(torch.quantile(rel, 0.95))}


def _pad_cat(parts: list[torch.Tensor], value) -> torch.Tensor:
    """Concatenate batches along dim 0, right-padding the last dim to the longest."""
    T = max(p.shape[-1] for p in parts)
    return torch.cat([F.pad(p, (0, T - p.shape[-1]), value=value) for p in parts])


def explain_split(
    model: nn.Module, encoder: FeatureEncoder, dataset: Dataset, events: pd.DataFrame, out_dir: str | Path,
    config: ExplainConfig, planted_rows: np.ndarray | None = None,
) -> dict:
    start = time.time()
    out_dir = Path(out_dir)
    model.eval()
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(config.seed)
    if config.max_stays is not None and config.max_stays < len(dataset):
        rng = np.random.default_rng(config.seed)
        dataset = Subset(dataset, np.sort(rng.choice(len(dataset), config.max_stays, replace=False)).tolist())
    loader = DataLoader(dataset, batch_size=config.batch_size, collate_fn=collate)

    frames: dict[str, list[pd.DataFrame]] = defaultdict(list)
    curves: dict[str, list[torch.Tensor]] = defaultdict(list)
    collected: dict[str, list[torch.Tensor]] = defaultdict(list)
    for i, batch in enumerate(loader):
        batch = {k: v.to(device) for k, v in batch.items()}
        padding, stay_ids = batch["padding_mask"], batch["stay_id"].cpu().numpy()
        steps_base, static_base = mean_baselines(batch, encoder)
        ig = integrated_gradients(model, batch, (steps_base, static_base), config.ig_steps, config.internal_batch_size)
        lig, lig_delta = layer_integrated_gradients(model, batch, steps_base, config.ig_steps, config.internal_batch_size)
        outputs, attention = forward_with_attention(model, batch)
        if i < config.attention_batches:
            save_attention(out_dir / "attention" / f"batch_{i:03d}.npz", attention, batch)
        with torch.no_grad():
            base_logits = model(steps_base, static_base, padding)["logits"]
            steps_base_logits = model(steps_base, batch["static"], padding)["logits"]
        rollout = attention_rollout(attention.layers, padding)
        scores = {
            "integrated_gradients": step_scores(ig.steps, padding),
            "layer_integrated_gradients": step_scores(lig, padding),
            "event_ablation": event_ablation(model, batch),
            "attention": pooling_event_scores(attention.pooling, padding),
            "attention_rollout": pooling_event_scores(attention.pooling, padding, rollout),
        }
        frames["events"].append(scores_frame(scores, batch))
        frames["static"].append(pd.DataFrame(ig.static.cpu().numpy(), columns=encoder.static_names)
                                .assign(stay_id=stay_ids).melt("stay_id", var_name="feature", value_name="score"))
        groups = group_ablation(model, batch, (steps_base, static_base), encoder)
        frames["groups"].append(pd.DataFrame({g: v.cpu().numpy() for g, v in groups.items()})
                                .assign(stay_id=stay_ids).melt("stay_id", var_name="group", value_name="score"))
        frames["predictions"].append(pd.DataFrame({"stay_id": stay_ids, "label": batch["label"].cpu().numpy(),
                                                   "risk": torch.sigmoid(outputs["logits"]).cpu().numpy()}))
        for name, c in deletion_curves(model, batch, scores, config.k_max, config.n_random, generator).items():
            curves[name].append(c.cpu())
        if planted_rows is not None:
            for name, s in scores.items():
                for k in config.precision_k:
                    frames["precision"].append(precision_at_k(s, batch, planted_rows, k).assign(method=name, k_requested=k))
        collected["ig_delta"].append(ig.delta.cpu())
        collected["ig_change"].append((outputs["logits"] - base_logits).cpu())
        collected["lig_delta"].append(lig_delta.cpu())
        collected["lig_change"].append((outputs["logits"] - steps_base_logits).cpu())
        collected["pooling"].append(attention.pooling.cpu())
        collected["padding_mask"].append(padding.cpu())
        collected["kind"].append(batch["kind"].cpu())
    if not frames["events"]:
        raise ValueError("nothing to explain: the split has no stays")

    text = events[["code", "text"]].reset_index(drop=True)
    event_scores = pd.concat(frames["events"], ignore_index=True).join(text, on="event_row")
    predictions = pd.concat(frames["predictions"], ignore_index=True)
    write_parquet(out_dir / "event_scores.parquet", event_scores)
    write_parquet(out_dir / "static_attributions.parquet", pd.concat(frames["static"], ignore_index=True))
    write_parquet(out_dir / "group_ablation.parquet", pd.concat(frames["groups"], ignore_index=True))
    write_parquet(out_dir / "predictions.parquet", predictions)

    deletion = deletion_table({name: torch.cat(c) for name, c in curves.items()})
    deletion_plot(deletion, out_dir / "deletion.png", "Removing the events each method ranks highest")
    pooling = _pad_cat([p.squeeze(2) for p in collected["pooling"]], 0.0)[:, :, None, :]  # [N, H, 1, T]
    all_padding = _pad_cat(collected["padding_mask"], True)
    heads, head_kinds = head_specialisation(
        pooling, {"padding_mask": all_padding, "kind": _pad_cat(collected["kind"], -1)},
        config.n_permutations, config.seed)
    write_csv(out_dir / "head_kinds.csv", head_kinds)

    for level in ("event_type", "code"):
        table = importance_by(event_scores, level)
        write_csv(out_dir / f"importance_{level}.csv", table)
        ig_table = table[table["method"] == "integrated_gradients"]
        if level == "code":  # a code alone (ITEM//225792) means nothing to a clinician
            ig_table = ig_table.assign(code=ig_table["code"] + "  " + ig_table["description"])
        importance_bars(ig_table, level, "mean_abs_score",
                        out_dir / f"importance_{level}_ig.png", f"Mean |IG attribution| per {level.replace('_', ' ')}")

    stay_index = {int(s): n for n, s in enumerate(predictions["stay_id"])}
    for stay_id in predictions.nlargest(config.plot_stays, "risk")["stay_id"]:
        mine = event_scores[event_scores["stay_id"] == stay_id].sort_values("position")
        if mine.empty:
            continue
        risk = float(predictions.loc[stay_index[int(stay_id)], "risk"])
        ig_events = mine[mine["method"] == "integrated_gradients"]
        stay_timeline(ig_events, out_dir / "stays" / f"timeline_{stay_id}.png",
                      f"Stay {stay_id}: predicted risk {risk:.2f}; integrated gradients per event")
        n = len(ig_events)
        head_heatmap(pooling[stay_index[int(stay_id)], :, 0, :n].numpy(), ig_events["text"].tolist(),
                     out_dir / "stays" / f"heads_{stay_id}.png", f"Stay {stay_id}: attention pooling per head")

    metrics = {
        "stays": len(predictions),
        "events": int((~all_padding).sum()),
        "integrated_gradients": _delta_summary(torch.cat(collected["ig_delta"]), torch.cat(collected["ig_change"]), config.ig_steps),
        "layer_integrated_gradients": _delta_summary(torch.cat(collected["lig_delta"]), torch.cat(collected["lig_change"]), config.ig_steps),
        "aopc": deletion.groupby("method", sort=False)["aopc"].first().to_dict(),
        "head_specialisation": {k: v for k, v in heads.items() if k != "pairwise_jsd"},
    }
    if planted_rows is not None and frames["precision"]:
        precision = pd.concat(frames["precision"], ignore_index=True)
        summary = precision.groupby(["k_requested", "method"]).agg(
            precision=("precision", "mean"), random_precision=("random_precision", "mean"),
            recall_precision=("recall_precision", "mean"), random_recall_precision=("random_recall_precision", "mean"),
            stays=("stay_id", "size"),
        ).reset_index()
        write_csv(out_dir / "precision_at_k.csv", summary)
        metrics["precision_at_k"] = {
            f"k={k}": {**dict(zip(part["method"], part["precision"])), "random": float(part["random_precision"].iloc[0]),
                       "stays": int(part["stays"].iloc[0])}
            for k, part in summary.groupby("k_requested")
        }
        metrics["recall_precision_at_k"] = {
            f"k={k}": {**dict(zip(part["method"], part["recall_precision"])),
                       "random": float(part["random_recall_precision"].iloc[0]), "stays": int(part["stays"].iloc[0])}
            for k, part in summary.groupby("k_requested")
        }
    metrics["seconds"] = round(time.time() - start, 2)
    log.info("explained %d stays in %.1fs: AOPC %s", metrics["stays"], metrics["seconds"],
             {k: round(v, 4) for k, v in metrics["aopc"].items()})
    return metrics
