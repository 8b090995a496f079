"""Evaluation metrics with bootstrap intervals, shared by every evaluated model.

Plain numpy on per-stay arrays: the curves are sklearn's points, bit for bit (tested),
without importing sklearn (about a second of start-up in every stage that imports this
module). A metric that is undefined on its input (AUROC with one class, AUPRC without
positives) raises `UndefinedMetricError`; `bootstrap` turns that into
`{"value": None, "reason": ...}` so a metrics file never holds a silent NaN.

Intervals resample patients, not stays (a cluster bootstrap): the stays of one patient
share their outcome risk, so resampling stays as if they were independent draws makes
intervals too narrow (the default test split has 783 stays of 554 patients). Every row of
a resampled patient comes along, in every array at once (paired).
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pandas as pd


class UndefinedMetricError(ValueError):
    """The metric has no value on this input; the message says why."""


def _check_binary(y_true: np.ndarray, y_prob: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y_true, y_prob = np.asarray(y_true), np.asarray(y_prob, dtype=float)
    if y_true.shape != y_prob.shape or y_true.ndim != 1:
        raise ValueError(f"labels and probabilities must be 1-D of equal length, got {y_true.shape} and {y_prob.shape}")
    if len(y_true) == 0:
        raise UndefinedMetricError("no examples")
    bad = ~np.isin(y_true, (0, 1))
    if bad.any():
        raise ValueError(f"labels must be 0/1; index {np.flatnonzero(bad)[0]} is {y_true[bad][0]!r}")
    bad = ~((y_prob >= 0) & (y_prob <= 1))  # also catches NaN
    if bad.any():
        raise ValueError(f"probabilities must be in [0, 1]; index {np.flatnonzero(bad)[0]} is {y_prob[bad][0]!r}")
    return y_true.astype(int), y_prob


def _require_both_classes(y_true: np.ndarray, metric: str) -> None:
    n_pos = int(y_true.sum())
    if n_pos == 0 or n_pos == len(y_true):
        raise UndefinedMetricError(f"{metric} needs both classes; all {len(y_true)} labels are {y_true[0]}")


def _counts_at_thresholds(y_true: np.ndarray, y_prob: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """True and false positives when predicting positive at or above each distinct score,
    from the highest score down, and those scores: the points of the ROC and
    precision-recall curves.

    The same points as sklearn's `roc_curve` / `precision_recall_curve` (tied scores form
    one point), without their input validation, which cost 1-2 ms a call (10x these; see
    benchmarks/stage_overhead.py): the bootstrap calls these metrics thousands of times per stage."""
    order = np.argsort(-y_prob, kind="stable")
    p_sorted = y_prob[order]
    last_of_tie = np.r_[p_sorted[1:] != p_sorted[:-1], True]
    tps = np.cumsum(y_true[order])[last_of_tie]
    fps = np.flatnonzero(last_of_tie) + 1 - tps
    return tps, fps, p_sorted[last_of_tie]


def auroc(y_true, y_prob) -> float:
    """Area under the ROC curve by the trapezoid rule (ties count half), as `roc_auc_score`."""
    y_true, y_prob = _check_binary(y_true, y_prob)
    _require_both_classes(y_true, "AUROC")
    tps, fps, _ = _counts_at_thresholds(y_true, y_prob)
    tps, fps = np.r_[0, tps], np.r_[0, fps]
    return float(np.sum(np.diff(fps) * (tps[1:] + tps[:-1])) / (2.0 * tps[-1] * fps[-1]))


def auprc(y_true, y_prob) -> float:
    """Average precision (the step-wise area under the precision-recall curve), as
    `average_precision_score`: sum over thresholds of recall gained x precision there."""
    y_true, y_prob = _check_binary(y_true, y_prob)
    if y_true.sum() == 0:
        raise UndefinedMetricError(f"AUPRC needs at least one positive; all {len(y_true)} labels are 0")
    tps, fps, _ = _counts_at_thresholds(y_true, y_prob)
    return float(np.sum(np.diff(np.r_[0, tps]) * (tps / (tps + fps))) / tps[-1])


def brier(y_true, y_prob) -> float:
    y_true, y_prob = _check_binary(y_true, y_prob)
    return float(np.mean((y_prob - y_true) ** 2))


def _calibration_bins(y_true: np.ndarray, y_prob: np.ndarray, n_bins: int) -> pd.DataFrame:
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    # Equal-width bins over [0, 1]; a probability of exactly 1 belongs to the last bin.
    bins = np.minimum((y_prob * n_bins).astype(int), n_bins - 1)
    count = np.bincount(bins, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_predicted = np.bincount(bins, weights=y_prob, minlength=n_bins) / count
        observed_rate = np.bincount(bins, weights=y_true, minlength=n_bins) / count
    return pd.DataFrame({
        "bin_low": np.arange(n_bins) / n_bins,
        "bin_high": np.arange(1, n_bins + 1) / n_bins,
        "count": count,
        "mean_predicted": mean_predicted,
        "observed_rate": observed_rate,
    })


def expected_calibration_error(y_true, y_prob, n_bins: int = 10) -> float:
    """Count-weighted mean |observed rate - mean predicted probability| over equal-width bins."""
    y_true, y_prob = _check_binary(y_true, y_prob)
    table = _calibration_bins(y_true, y_prob, n_bins)
    filled = table[table["count"] > 0]
    gaps = (filled["observed_rate"] - filled["mean_predicted"]).abs()
    return float((gaps * filled["count"]).sum() / len(y_true))


def perplexity(nll_sum, n_tokens) -> float:
    """exp(total negative log-likelihood / total tokens), from per-sequence sums."""
    total = float(np.sum(n_tokens))
    if total == 0:
        raise UndefinedMetricError("perplexity needs at least one predicted token")
    return float(np.exp(np.sum(nll_sum) / total))


def token_accuracy(n_correct, n_tokens) -> float:
    total = float(np.sum(n_tokens))
    if total == 0:
        raise UndefinedMetricError("next-token accuracy needs at least one predicted token")
    return float(np.sum(n_correct) / total)


def patient_ids(stay_ids, cohort_path: str | Path) -> np.ndarray:
    """The `subject_id` of each stay in `stay_ids`, from the cohort table (`cohort.parquet`):
    the clusters of `bootstrap`. A stay the cohort lacks is an error naming the file."""
    cohort = pd.read_parquet(cohort_path, columns=["stay_id", "subject_id"]).drop_duplicates()
    if cohort["stay_id"].duplicated().any():
        stay = cohort.loc[cohort["stay_id"].duplicated(), "stay_id"].iloc[0]
        raise ValueError(f"{cohort_path}: column 'stay_id' maps stay {stay} to several subject_id values")
    subject = cohort.set_index("stay_id")["subject_id"]
    missing = pd.Index(stay_ids).difference(subject.index)
    if len(missing):
        raise ValueError(f"{cohort_path}: column 'stay_id' lacks {len(missing)} of the stays, e.g. {missing[0]}")
    return subject.loc[stay_ids].to_numpy()


def cluster_resamples(clusters, *, n_resamples: int, seed: int) -> Iterator[np.ndarray]:
    """Row indices of `n_resamples` cluster-bootstrap resamples: each draws as many
    clusters as there are, with replacement, and takes every row of each drawn cluster
    (twice if drawn twice). `clusters[i]` is row i's cluster (its patient). Clusters are
    numbered by sorted id, so the rows drawn do not depend on the row order. For a
    metric of several outputs computed on the same rows (e.g. survival curves), loop over
    this; for one scalar metric of arrays use `bootstrap`."""
    codes = np.unique(np.asarray(clusters), return_inverse=True)[1].ravel()
    # Rows grouped by cluster: cluster c owns rows[starts[c] : starts[c] + sizes[c]].
    rows = np.argsort(codes, kind="stable")
    sizes = np.bincount(codes)
    starts = np.cumsum(sizes) - sizes
    rng = np.random.default_rng(seed)
    for _ in range(n_resamples):
        drawn = rng.integers(0, len(sizes), size=len(sizes))
        counts = sizes[drawn]
        # Position of each output row within its drawn cluster: 0..size-1, cluster after cluster.
        within = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
        yield rows[np.repeat(starts[drawn], counts) + within]


def bootstrap(
    metric: Callable[..., float],
    arrays: tuple[np.ndarray, ...],
    *,
    clusters,
    n_resamples: int,
    seed: int,
    confidence: float = 0.95,
) -> dict:
    """Point estimate and percentile interval of `metric(*arrays)` by a cluster bootstrap.

    `clusters[i]` names the independent unit row i belongs to (the patient of a stay); the
    resamples are `cluster_resamples`. `clusters=None` treats every row as its own cluster
    -- right only when rows are independent (one row per patient); callers must say so.
    All arrays are resampled with the same rows (paired), so a metric of several
    predictions on the same stays -- e.g. a model/oracle AUROC ratio -- gets one interval.
    Resamples on which the metric is undefined are skipped and counted.
    """
    arrays = tuple(np.asarray(a) for a in arrays)
    n = len(arrays[0])
    if any(len(a) != n for a in arrays):
        raise ValueError(f"arrays must have equal length, got {[len(a) for a in arrays]}")
    clusters = np.arange(n) if clusters is None else np.asarray(clusters)
    if len(clusters) != n:
        raise ValueError(f"clusters must name one cluster per row: {len(clusters)} for {n} rows")
    try:
        value = metric(*arrays)
    except UndefinedMetricError as err:
        return {"value": None, "reason": str(err)}
    values = []
    for idx in cluster_resamples(clusters, n_resamples=n_resamples, seed=seed):
        try:
            values.append(metric(*(a[idx] for a in arrays)))
        except UndefinedMetricError:
            continue
    result = {"value": value, "n_resamples": len(values)}
    if not values:
        return {**result, "ci_low": None, "ci_high": None, "reason": f"undefined on all {n_resamples} resamples"}
    alpha = (1 - confidence) / 2
    low, high = np.quantile(values, [alpha, 1 - alpha])
    return {**result, "ci_low": float(low), "ci_high": float(high)}


def binary_classification_metrics(y_true, y_prob, *, clusters, n_bins: int, n_resamples: int, seed: int) -> dict:
    """AUROC, AUPRC, Brier score and ECE, each with a cluster-bootstrap interval (see `bootstrap`)."""
    y_true, y_prob = _check_binary(y_true, y_prob)

    def ece(y, p):
        return expected_calibration_error(y, p, n_bins)

    metrics = {"auroc": auroc, "auprc": auprc, "brier": brier, "ece": ece}
    kw = {"clusters": clusters, "n_resamples": n_resamples, "seed": seed}
    return {name: bootstrap(fn, (y_true, y_prob), **kw) for name, fn in metrics.items()}


def classification_curves(y_true, y_prob, n_bins: int) -> dict[str, pd.DataFrame]:
    """ROC, precision-recall and calibration tables for `dvc plots`.

    ROC and PR are empty (header only) when the labels have one class, where they are
    undefined; the calibration table always exists.
    """
    y_true, y_prob = _check_binary(y_true, y_prob)
    both_classes = 0 < y_true.sum() < len(y_true)
    if both_classes:
        points = _counts_at_thresholds(y_true, y_prob)
        fpr, tpr, roc_thresholds = _roc_points(*points)
        precision, recall, pr_thresholds = _pr_points(*points)
    else:
        fpr = tpr = roc_thresholds = precision = recall = pr_thresholds = np.array([])
    return {
        "roc": pd.DataFrame({"fpr": fpr, "tpr": tpr, "threshold": roc_thresholds}),
        "pr": pd.DataFrame({"recall": recall, "precision": precision, "threshold": pr_thresholds}),
        "calibration": _calibration_bins(y_true, y_prob, n_bins),
    }


def _roc_points(tps: np.ndarray, fps: np.ndarray, thresholds: np.ndarray) -> tuple[np.ndarray, ...]:
    """False and true positive rates and thresholds from `_counts_at_thresholds`, as
    sklearn's `roc_curve` with its defaults: a first point (0, 0) at threshold inf, then
    the points from the highest score down, less those collinear with both neighbours
    (`drop_intermediate`: neither count changes its step there)."""
    keep = np.ones(len(tps), dtype=bool)  # the first and last point always stay
    keep[1:-1] = (np.diff(fps, 2) != 0) | (np.diff(tps, 2) != 0)
    tps, fps = np.r_[0, tps[keep]], np.r_[0, fps[keep]]
    return fps / fps[-1], tps / tps[-1], np.r_[np.inf, thresholds[keep]]


def _pr_points(tps: np.ndarray, fps: np.ndarray, thresholds: np.ndarray) -> tuple[np.ndarray, ...]:
    """Precision, recall and thresholds from `_counts_at_thresholds`, as sklearn's
    `precision_recall_curve`: the points from the lowest score up, then (recall 0,
    precision 1), which has no threshold (NaN here, so the three columns have one length)."""
    precision, recall = tps / (tps + fps), tps / tps[-1]
    return np.r_[precision[::-1], 1.0], np.r_[recall[::-1], 0.0], np.r_[thresholds[::-1], np.nan]
