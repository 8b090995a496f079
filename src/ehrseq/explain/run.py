"""The whole explanation of one model on one split, so the `explain` stage is a thin call.

`explain_split` runs every method of the model's explainer (explainers.py) over a seeded
sample of stays, then: deletion curves of every ranking against random removal (AOPC),
precision@k against the planted events (strict, and companion-aware when the truth
records companions), plots, and the attention of the first batches. `sanity_checks`
adds the model-parameter randomisation cascade and the shuffled-label model's verdict
(sanity.py) on a smaller set of stays. Writes to `out_dir`:

    event_scores.parquet       stay_id, event_row, position (event index in the stay),
                               method, score, event_type, code, text, hours_before_cutoff
    predictions.parquet        stay_id, label, logit, risk (prior-corrected)
    deletion.{png,csv}  precision_at_k.csv (+ precision_at_k_companion_aware.csv)
    attention_heads.csv        recall-precision@k of every attention head on its own
    importance_{event_type,code}.csv + importance_code_<method>.{png,csv} (top codes)
    stays/timeline_<stay>.{png,csv}   highest-risk stays, coloured by the headline method
    attention/batch_<i>.npz    attention of the first `attention_batches` batches
    clinical_lf also: static_attributions.parquet, group_ablation.parquet, head_kinds.csv,
    stays/heads_<stay>.{png,csv}
"""
from __future__ import annotations

import dataclasses
import logging
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.nn import functional as F
from torch.utils.data import Dataset
from tqdm import tqdm

from ehrseq.explain.attributions import importance_by
from ehrseq.explain.events import EventIndex, to_events
from ehrseq.explain.explainers import Explainer
from ehrseq.explain.faithfulness import (
    aopc_against_random,
    curves_to_risk,
    deletion_curves,
    deletion_table,
    head_specialisation,
    precision_at_k,
    random_scores,
)
from ehrseq.explain.inputs import Truth
from ehrseq.explain.plots import (
    deletion_plot,
    head_heatmap,
    importance_bars,
    stay_timeline,
    write_csv,
)
from ehrseq.explain.sanity import SanityBatch, parameter_randomisation, trained_scores
from ehrseq.io import atomic_path, write_parquet

log = logging.getLogger(__name__)

MIN_CODE_EVENTS = 20  # a code's mean |score| over fewer explained events is too noisy to rank


@dataclass
class ExplainConfig:
    """The `explain` section of params.yaml, which holds the defaults (this class has none)."""

    batch_size: int  # rows of an explained batch at most (and the shuffled-label models' training batch)
    batch_tokens: int  # rows x longest row of an explained batch at most (`length_batches`)
    ig_steps: int
    internal_batch_size: int | None  # bounds IG memory: examples x steps per forward
    k_max: int  # deletion curves remove up to this many events
    precision_k: tuple[int, ...]
    n_random: int  # random rankings averaged for the deletion baseline
    n_permutations: int  # head-specialisation null (clinical_lf)
    plot_stays: int
    attention_batches: int
    max_stays: int | None  # explain a seeded sample: event ablation costs E forwards per batch
    perturbations_per_eval: int  # batch copies (event ablations, deletion steps) stacked into one forward
    sanity_stays: int  # stays for the randomisation checks (with planted events first)
    sanity_ig_steps: int  # IG steps on the randomised and shuffled-label models (rank checks)
    label_shuffle: dict  # shuffled-label models: stays, epochs, seeds, tolerance, n_bootstrap, untrained_models
    seed: int


def length_batches(lengths: np.ndarray, max_rows: int, max_tokens: int) -> list[np.ndarray]:
    """Positions of `lengths` in batches of similar length: sorted by length (stable), a
    batch closed when one more stay would take it past `max_rows` rows or past `max_tokens`
    for rows x its longest row (a stay longer than `max_tokens` goes alone).

    Why a token budget and not a row count: event ablation runs one forward per event of a
    batch's longest stay over every row, padded to that stay's length (rows x E x T), so in
    batches of a fixed row count the batch of the longest stays costs most of the stage
    and shorter stays pay for its padding."""
    order = np.argsort(np.asarray(lengths), kind="stable")
    out, start = [], 0
    for end in range(1, len(order) + 1):
        rows = end + 1 - start  # were the next stay added
        if end == len(order) or rows > max_rows or rows * lengths[order[end]] > max_tokens:
            out.append(order[start:end])
            start = end
    return out


def _batches(dataset: Dataset, indices: np.ndarray, collate_fn, max_rows: int, max_tokens: int,
             device) -> list[tuple[np.ndarray, dict]]:
    """Stays `indices` of `dataset` in `length_batches`, collated on `device`."""
    out = []
    for chunk in length_batches(np.asarray(dataset.lengths)[indices], max_rows, max_tokens):
        chunk = indices[chunk]
        batch = collate_fn([dataset[int(i)] for i in chunk])
        out.append((chunk, {k: v.to(device) for k, v in batch.items()}))
    return out


def sample_indices(n: int, max_stays: int | None, seed: int) -> np.ndarray:
    if max_stays is None or max_stays >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, max_stays, replace=False))


def truth_masks(events: EventIndex, truth: Truth) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Per event [B, E]: planted, planted-or-companion (None without companions); [B]
    stays with a planted event (the stays precision@k is computed on)."""
    rows = events.rows.cpu().numpy()
    device = events.rows.device
    planted = torch.from_numpy(np.isin(rows, truth.planted_rows) & (rows >= 0)).to(device)
    aware = None
    if truth.companion_rows is not None:
        aware = planted | torch.from_numpy(np.isin(rows, truth.companion_rows) & (rows >= 0)).to(device)
    return planted, aware, planted.any(dim=1)


def head_scores(attention: dict[str, torch.Tensor], events: EventIndex) -> dict[str, torch.Tensor]:
    """Per-event scores [B, E] of every attention head on its own: for self-attention
    head h of layer l, the mortality read-out's weights w (pooling, averaged over the
    pooling heads) times that head's attention, w^T A[l, h] -- where the positions the
    head reads from get their weight; for each clinical_lf pooling head, its weights."""
    pooling = attention["pooling"]
    w = pooling.mean(dim=1).squeeze(1) if pooling.dim() == 4 else pooling  # [B, T]
    out = {}
    for key in sorted(k for k in attention if k.startswith("layer_")):
        per_head = torch.einsum("bt,bhts->bhs", w, attention[key])  # [B, H, T]
        out.update({f"{key}/head_{h}": to_events(per_head[:, h], events) for h in range(per_head.shape[1])})
    if pooling.dim() == 4:
        out.update({f"pooling/head_{h}": to_events(pooling[:, h, 0], events) for h in range(pooling.shape[1])})
    return out


def _delta_summary(delta: torch.Tensor, change: torch.Tensor, n_steps: int) -> dict[str, float]:
    """Convergence of an IG run: |sum of attributions - output change|, absolute (logits)
    and relative to the output change it should account for."""
    rel = delta.abs() / change.abs().clamp_min(1e-6)
    return {"n_steps": n_steps, "abs_delta_median": float(delta.abs().median()),
            "abs_delta_max": float(delta.abs().max()),
            "relative_delta_median": float(rel.median()), "relative_delta_p95": float(torch.quantile(rel, 0.95))}


def scores_frame(scores: dict[str, torch.Tensor], events: EventIndex, stay_ids: torch.Tensor) -> pd.DataFrame:
    """Long table of per-event scores: stay_id, event_row, position, method, score."""
    b, e = np.nonzero((~events.padding).cpu().numpy())
    base = pd.DataFrame({"stay_id": stay_ids.cpu().numpy()[b], "event_row": events.rows.cpu().numpy()[b, e],
                         "position": e})
    return pd.concat([base.assign(method=name, score=s.detach().cpu().numpy()[b, e]) for name, s in scores.items()],
                     ignore_index=True)


def summarise_precision(frames: list[pd.DataFrame]) -> dict:
    """{precision_at_k: {k=K: {method: mean, random: mean, stays}}, recall_precision_at_k: ...}."""
    precision = pd.concat(frames, ignore_index=True)
    if precision.empty:
        return {"value": None, "reason": "no explained stay has a planted event"}
    summary = precision.groupby(["k_requested", "method"]).agg(
        precision=("precision", "mean"), random_precision=("random_precision", "mean"),
        recall_precision=("recall_precision", "mean"), random_recall_precision=("random_recall_precision", "mean"),
        stays=("stay_id", "size")).reset_index()
    out = {}
    for column in ("precision", "recall_precision"):
        out[f"{column}_at_k"] = {
            f"k={k}": {**dict(zip(part["method"], part[column])), "random": float(part[f"random_{column}"].iloc[0]),
                       "stays": int(part["stays"].iloc[0])}
            for k, part in summary.groupby("k_requested")}
    out["table"] = summary
    return out


def _precision_frames(scores: dict[str, torch.Tensor], events: EventIndex, stay_ids: torch.Tensor, truth: Truth,
                      ks: tuple[int, ...]) -> dict[str, list[pd.DataFrame]]:
    planted, aware, counted = truth_masks(events, truth)
    out: dict[str, list[pd.DataFrame]] = defaultdict(list)
    for kind, mask in (("strict", planted), ("companion_aware", aware)):
        if mask is None:
            continue
        for name, s in scores.items():
            for k in ks:
                out[kind].append(precision_at_k(s, events.padding, mask, counted, stay_ids, k)
                                 .assign(method=name, k_requested=k))
    return out


def explain_split(
    explainer: Explainer, dataset: Dataset, collate_fn, descriptions: pd.DataFrame, out_dir: str | Path,
    config: ExplainConfig, truth: Truth | None = None, logit_shift: float = 0.0,
) -> tuple[dict, list[tuple[dict, EventIndex]]]:
    """Explain a seeded sample of `dataset`; write `out_dir`; return (metrics, the
    prepared batches of the `sanity_stays` for `sanity_checks`).

    `descriptions`: indexed by event_row, with event_type, code, text, hours_before_cutoff
    (`inputs.event_descriptions`). `logit_shift`: the checkpoint's prior correction, for
    the calibrated risk beside the training-scale one.
    """
    start = time.time()
    out_dir = Path(out_dir)
    device = next(explainer.model.parameters()).device
    indices = sample_indices(len(dataset), config.max_stays, config.seed)
    batches = _batches(dataset, indices, collate_fn, config.batch_size, config.batch_tokens, device)
    frames: dict[str, list[pd.DataFrame]] = defaultdict(list)
    precision: dict[str, list[pd.DataFrame]] = defaultdict(list)
    curves: dict[str, list[torch.Tensor]] = defaultdict(list)
    convergence: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = defaultdict(list)
    pooling, kinds, paddings, with_planted = [], [], [], []
    per_stay: dict[int, dict[str, torch.Tensor]] = {}  # stay_id -> method -> [n events], for the sanity stays
    for i, (_, batch) in enumerate(tqdm(batches, desc=f"explain {explainer.name}", disable=None)):
        events = explainer.events(batch)
        result = explainer.explain(batch, events, config)
        per_stay.update(_split_by_stay(result.scores, events, batch["stay_id"]))
        frames["events"].append(scores_frame(result.scores, events, batch["stay_id"]))
        for name, frame in result.frames.items():
            frames[name].append(frame)
        frames["predictions"].append(pd.DataFrame({
            "stay_id": batch["stay_id"].cpu().numpy(), "label": batch["label"].cpu().numpy(),
            "logit": result.logits.detach().cpu().numpy(),
            "risk": torch.sigmoid(result.logits.detach() - logit_shift).cpu().numpy()}))
        randoms = random_scores(batch["stay_id"], events.padding, config.n_random, config.seed)  # [R, B, E]
        batch_curves = deletion_curves(explainer.logits_without(batch, events), result.scores, events.padding,
                                       config.k_max, randoms, config.perturbations_per_eval)
        for name, c in batch_curves.items():
            curves[name].append(c.cpu())
        for name, pair in result.convergence.items():
            convergence[name].append(tuple(t.detach().cpu() for t in pair))
        if truth is not None:
            for kind, parts in _precision_frames(result.scores, events, batch["stay_id"], truth,
                                                 config.precision_k).items():
                precision[kind] += parts
            if any(key.startswith("layer_") for key in result.attention):
                precision["heads"] += _precision_frames(head_scores(result.attention, events), events,
                                                        batch["stay_id"], truth, (max(config.precision_k),))["strict"]
            with_planted.append(truth_masks(events, truth)[2].cpu())
        if i < config.attention_batches and result.attention:
            _save_npz(out_dir / "attention" / f"batch_{i:03d}.npz", result.attention, batch)
        if "pooling" in result.attention and result.attention["pooling"].dim() == 4:  # clinical_lf's heads
            pooling.append(result.attention["pooling"].cpu())
            kinds.append(batch["kind"].cpu())
            paddings.append(batch["padding_mask"].cpu())
    if not frames["events"]:
        raise ValueError("nothing to explain: the split has no stays")

    event_scores = pd.concat(frames["events"], ignore_index=True).join(descriptions, on="event_row")
    if truth is not None:
        event_scores["planted"] = event_scores["event_row"].isin(truth.planted_rows)
        if truth.companion_rows is not None:
            event_scores["companion"] = event_scores["event_row"].isin(truth.companion_rows)
    predictions = pd.concat(frames["predictions"], ignore_index=True)
    write_parquet(out_dir / "event_scores.parquet", event_scores)
    write_parquet(out_dir / "predictions.parquet", predictions)
    for name in ("static_attributions", "group_ablation"):
        if frames[name]:
            write_parquet(out_dir / f"{name}.parquet", pd.concat(frames[name], ignore_index=True))

    logit_curves = {name: (torch.cat(c, dim=1) if name == "random" else torch.cat(c)) for name, c in curves.items()}
    risk = curves_to_risk(logit_curves)
    calibrated = curves_to_risk(logit_curves, logit_shift)
    deletion = deletion_table(risk)
    deletion_plot(deletion, out_dir / "deletion.png",
                  f"{explainer.name}: removing the events each method ranks highest",
                  "mean predicted risk, training scale (sigmoid of the logit)")

    headline = explainer.gradient_methods[-1]  # LayerIG: the one method every model has
    _importance_plots(event_scores, out_dir, explainer.name, headline)
    _timelines(event_scores, predictions, out_dir, explainer.name, headline, config.plot_stays)

    metrics = {
        "model": explainer.name,
        "stays": len(predictions),
        "events": int(event_scores["method"].eq(headline).sum()),
        "methods": list(explainer.methods),
        "baseline": explainer.baseline,
        "convergence": {name: _delta_summary(torch.cat([d for d, _ in pairs]), torch.cat([c for _, c in pairs]),
                                             config.ig_steps) for name, pairs in convergence.items()},
        "aopc": deletion.groupby("method", sort=False)["aopc"].first().to_dict(),
        "aopc_calibrated": {name: float((c[:, :1] - c[:, 1:]).mean()) for name, c in calibrated.items()},
        "aopc_vs_random": aopc_against_random(risk),
        "k_max": config.k_max,
    }
    if pooling:
        all_padding = _pad_cat(paddings, True)
        heads, head_kinds = head_specialisation(
            _pad_cat([p.squeeze(2) for p in pooling], 0.0)[:, :, None, :],
            {"padding_mask": all_padding, "kind": _pad_cat(kinds, -1)}, config.n_permutations, config.seed)
        write_csv(out_dir / "head_kinds.csv", head_kinds)
        metrics["head_specialisation"] = {k: v for k, v in heads.items() if k != "pairwise_jsd"}
        _head_heatmaps(event_scores, predictions, pooling, out_dir, config.plot_stays)
    if truth is None:
        metrics["precision"] = {"value": None, "reason": "no planted truth (real data): precision@k is undefined"}
    else:
        strict = summarise_precision(precision["strict"])
        if "table" in strict:
            write_csv(out_dir / "precision_at_k.csv", strict.pop("table").assign(truth="strict"))
        if precision["heads"]:
            heads = summarise_precision(precision["heads"]).pop("table")
            write_csv(out_dir / "attention_heads.csv", heads)
            best = heads.loc[heads["recall_precision"].idxmax()]
            metrics["attention_heads"] = {
                "k": int(best["k_requested"]), "best": best["method"],
                "best_recall_precision": float(best["recall_precision"]),
                "random_recall_precision": float(best["random_recall_precision"]), "heads": len(heads)}
        metrics["precision_at_k"] = strict.get("precision_at_k", strict)
        metrics["recall_precision_at_k"] = strict.get("recall_precision_at_k", strict)
        if truth.companion_rows is None:
            metrics["companion_aware"] = {"value": None, "reason": truth.companion_reason}
        else:
            aware = summarise_precision(precision["companion_aware"])
            if "table" in aware:
                write_csv(out_dir / "precision_at_k_companion_aware.csv",
                          aware.pop("table").assign(truth="companion_aware"))
            metrics["companion_aware"] = aware
    metrics["seconds"] = {"explain": round(time.time() - start, 2)}
    log.info("%s: explained %d stays in %.1fs: AOPC %s", explainer.name, metrics["stays"],
             metrics["seconds"]["explain"], {k: round(v, 4) for k, v in metrics["aopc"].items()})
    return metrics, _sanity_batches(dataset, collate_fn, batches, with_planted, explainer, config, device, per_stay)


def _split_by_stay(scores: dict[str, torch.Tensor], events: EventIndex,
                   stay_ids: torch.Tensor) -> dict[int, dict[str, torch.Tensor]]:
    """stay_id -> method -> its events' scores [n events] (a stay's events keep their
    order in any batch: `index_events` numbers them by first appearance in the stay)."""
    n = events.n_events.tolist()
    return {int(s): {m: v[b, : n[b]].detach().clone() for m, v in scores.items()}
            for b, s in enumerate(stay_ids.tolist())}


def _sanity_batches(dataset, collate_fn, batches, with_planted, explainer: Explainer, config: ExplainConfig, device,
                    per_stay: dict[int, dict[str, torch.Tensor]]) -> list[SanityBatch]:
    """Up to `sanity_stays` of the explained stays, those with a planted event first,
    collated afresh, with their event index and the scores `explain_split` gave them
    (the randomisation checks compare against these instead of explaining them again)."""
    indices = np.concatenate([chunk for chunk, _ in batches])
    if with_planted:
        indices = indices[np.argsort(~torch.cat(with_planted).numpy(), kind="stable")]
    chosen = _batches(dataset, indices[: config.sanity_stays], collate_fn, config.batch_size, config.batch_tokens,
                      device)
    out = []
    for _, batch in chosen:
        events = explainer.events(batch)
        scores = {m: torch.zeros(events.rows.shape, dtype=v.dtype, device=v.device)
                  for m, v in per_stay[int(batch["stay_id"][0])].items()}  # [B, E] each
        for b, stay in enumerate(batch["stay_id"].tolist()):
            for m, v in per_stay[int(stay)].items():
                scores[m][b, : len(v)] = v
        out.append(SanityBatch(batch, events, scores))
    return out


def sanity_checks(explainer: Explainer, sanity: list[SanityBatch], config: ExplainConfig,
                  truth: Truth | None, shuffled: Explainer | None, label_summary: dict | None) -> dict:
    """Parameter randomisation on `sanity` stays; with a shuffled-label model, its
    methods' strict precision@k on the same stays next to the trained model's and the
    random ranking's, added to `label_summary` (the test AUROC verdict over seeds,
    `sanity.label_randomisation_verdict`)."""
    start = time.time()
    # the trained model's scores come from explain_split (ig_steps); the randomised and
    # shuffled-label models' only enter rank correlations and top-k sets (sanity_ig_steps)
    rank_config = dataclasses.replace(config, ig_steps=config.sanity_ig_steps)
    report = {"stays": int(sum(len(b.events.padding) for b in sanity)), "ig_steps": config.sanity_ig_steps,
              "parameter_randomisation": parameter_randomisation(explainer, sanity, rank_config, config.seed)}
    report["seconds_parameter_randomisation"] = round(time.time() - start, 2)
    if shuffled is not None:
        label = dict(label_summary or {})
        if truth is not None:
            frames: dict[str, list[pd.DataFrame]] = defaultdict(list)
            scores = {"shuffled": [shuffled.explain(b.batch, b.events, rank_config).scores for b in sanity],
                      "trained": trained_scores(explainer, sanity, config)}
            for model_name, per_batch in scores.items():
                for (batch, events, _), s in zip(sanity, per_batch):
                    frames[model_name] += _precision_frames(s, events, batch["stay_id"], truth,
                                                            config.precision_k)["strict"]
            label["recall_precision_at_k"] = _label_verdict(frames)
        report["label_randomisation"] = label
    report["seconds"] = round(time.time() - start, 2)
    return report


def _label_verdict(frames: dict[str, list[pd.DataFrame]]) -> dict:
    """Per k and method: the shuffled-label model's recall-precision, the trained model's,
    the random level, and whether the shuffled one is at the random level (its paired
    per-stay excess over random has a 95% interval reaching 0)."""
    out = {}
    shuffled = pd.concat(frames["shuffled"], ignore_index=True)
    trained = pd.concat(frames["trained"], ignore_index=True)
    for (k, method), part in shuffled.groupby(["k_requested", "method"]):
        excess = part["recall_precision"] - part["random_recall_precision"]
        half = 1.96 * excess.std() / np.sqrt(len(excess)) if len(excess) > 1 else float("nan")
        mine = trained[(trained["k_requested"] == k) & (trained["method"] == method)]
        out.setdefault(f"k={k}", {})[method] = {
            "shuffled": float(part["recall_precision"].mean()), "trained": float(mine["recall_precision"].mean()),
            "random": float(part["random_recall_precision"].mean()), "stays": len(part),
            "excess_ci": [float(excess.mean() - half), float(excess.mean() + half)],
            "at_random_level": bool(excess.mean() - half <= 0),
        }
    return out


def _save_npz(path: Path, attention: dict[str, torch.Tensor], batch: dict) -> None:
    arrays = {k: v.detach().float().cpu().numpy() for k, v in attention.items()}
    for key in ("padding_mask", "attention_mask", "stay_id", "event_row", "input_ids"):
        if key in batch:
            arrays[key] = batch[key].cpu().numpy()
    # a file object: np.savez would otherwise append ".npz" to the name
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez_compressed(f, **arrays)


def _pad_cat(parts: list[torch.Tensor], value) -> torch.Tensor:
    """Concatenate batches along dim 0, right-padding the last dim to the longest."""
    T = max(p.shape[-1] for p in parts)
    return torch.cat([F.pad(p, (0, T - p.shape[-1]), value=value) for p in parts])


def _importance_plots(event_scores: pd.DataFrame, out_dir: Path, model: str, headline: str) -> None:
    for level in ("event_type", "code"):
        table = importance_by(event_scores, level)
        write_csv(out_dir / f"importance_{level}.csv", table)
    table = importance_by(event_scores, "code")
    for method in event_scores["method"].unique():
        part = table[table["method"] == method]
        # a code alone (ITEM//225792) means nothing to a clinician: name it
        part = part.assign(code=part["code"] + "  " + part["description"])
        importance_bars(part, "code", "mean_abs_score", out_dir / f"importance_code_{method}.png",
                        f"{model}: top codes by mean |{method.replace('_', ' ')}| (codes with >= "
                        f"{MIN_CODE_EVENTS} explained events)", min_events=MIN_CODE_EVENTS)


def _timelines(event_scores, predictions, out_dir: Path, model: str, method: str, n: int) -> None:
    for stay_id in predictions.nlargest(n, "risk")["stay_id"]:
        mine = event_scores[(event_scores["stay_id"] == stay_id) & (event_scores["method"] == method)]
        if mine.empty:
            continue
        risk = float(predictions.loc[predictions["stay_id"] == stay_id, "risk"].iloc[0])
        stay_timeline(mine.sort_values("position"), out_dir / "stays" / f"timeline_{stay_id}.png",
                      f"{model}, stay {stay_id}: predicted risk {risk:.2f}; {method.replace('_', ' ')} per event")


def _head_heatmaps(event_scores, predictions, pooling, out_dir: Path, n: int) -> None:
    flat = _pad_cat([p.squeeze(2) for p in pooling], 0.0)  # [N, H, T] in batch order
    stay_order = {int(s): i for i, s in enumerate(predictions["stay_id"])}
    for stay_id in predictions.nlargest(n, "risk")["stay_id"]:
        mine = event_scores[(event_scores["stay_id"] == stay_id) & (event_scores["method"] == "attention_pooling")]
        mine = mine.sort_values("position")
        head_heatmap(flat[stay_order[int(stay_id)], :, : len(mine)].numpy(), mine["text"].tolist(),
                     out_dir / "stays" / f"heads_{stay_id}.png", f"Stay {stay_id}: attention pooling per head")
