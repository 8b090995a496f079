"""Survival metrics, baselines and a patient-level bootstrap, for survival_lstm's evaluation.

One implementation per metric, all on one time grid (bin ends 0, w, .., Hw hours after
the cutoff). A curve is read the discrete-time way: bin k covers ((k-1)w, kw], so a time
t reads S at the end of its bin, S(t) = S(first grid point >= t) (pycox `steps="pre"`;
its default "post" would read S(0) = 1 for every death in the first bin, a tie for all).
- Antolini's time-dependent concordance: pycox `EvalSurv(...).concordance_td("antolini")`,
  counted here with whole-number pair counts (the same float; tests compare);
- Uno's C: scikit-survival `concordance_index_ipcw` at a stated `tau`, risk 1 - S(tau);
- integrated Brier score: scikit-survival `integrated_brier_score` (pycox's calls the
  `scipy.integrate.simps` removed from SciPy);
- time-dependent AUROC: scikit-survival `cumulative_dynamic_auc` at single times, which
  must lie below the last follow-up time (at the horizon every survivor is censored, the
  censoring survival is 0 and the estimator divides by it).
The censoring distribution of the IPCW metrics is estimated on the train split. The three
scikit-survival metrics refit it inside every call, the bulk of a bootstrap's time, so they
are computed here from its values fitted once (`censoring_survival`), with the same float
operations as scikit-survival (tests check equality on tied, censored data).
Baselines: Kaplan-Meier (no covariates), Cox on pre-cutoff bag-of-codes counts; the
oracle is the generator's true curve S(t) = 1 - r (1 - exp(-lambda t)).
A metric without a value raises `metrics.UndefinedMetricError` with the reason.
"""
from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
import pandas as pd
from scipy import sparse
from sksurv.linear_model import CoxnetSurvivalAnalysis

# scikit-survival's pair count of Uno's C, private: scikit-survival is pinned, and
# tests/test_survival.py compares with its public `concordance_index_ipcw`
from sksurv.metrics import _estimate_concordance_index
from sksurv.nonparametric import CensoringDistributionEstimator, kaplan_meier_estimator
from sksurv.util import Surv

from ehrseq.metrics import UndefinedMetricError

log = logging.getLogger(__name__)

__all__ = ["UndefinedMetricError"]


def outcome(time: np.ndarray, event: np.ndarray) -> np.ndarray:
    """scikit-survival's structured outcome array."""
    return Surv.from_arrays(event=np.asarray(event) > 0, time=np.asarray(time, dtype=float))


def step_survival(curve: np.ndarray, grid: np.ndarray, times) -> np.ndarray:
    """Curves [n, G] on `grid` read at `times`, each at the end of its bin. -> [n, len(times)]"""
    times = np.atleast_1d(times)
    if (times < grid[0]).any() or (times > grid[-1]).any():
        raise ValueError(f"times must lie in [{grid[0]}, {grid[-1]}]; got {times.min()}-{times.max()}")
    return curve[:, np.searchsorted(grid, times, side="left")]


def _require_events(event: np.ndarray, metric: str) -> None:
    if len(event) < 2 or not np.any(np.asarray(event) > 0):
        raise UndefinedMetricError(f"{metric} needs a death among >= 2 stays; {int(np.sum(event))} in {len(event)}")


def antolini_c(curve: np.ndarray, grid: np.ndarray, time: np.ndarray, event: np.ndarray) -> float:
    """Antolini's C: over the comparable pairs (i died first: t_i < t_j, or t_i = t_j with j
    censored), the share with S_i(t_i) < S_j(t_i); a tie in S counts as discordant.

    pycox's `concordance_td("antolini")` with `steps="pre"`, counted per death against all
    stays at once ([n, deaths] comparisons): both counts are whole numbers, so the same
    float, without pycox's per-call frame and seconds of JIT compiling.
    """
    _require_events(event, "Antolini's C")
    curve, time, died = np.asarray(curve, dtype=float), np.asarray(time, dtype=float), np.asarray(event) > 0
    deaths = np.flatnonzero(died)
    # each death's time read at the end of its bin; past the grid, at its end (pycox clips)
    at = np.searchsorted(grid, time[deaths]).clip(0, len(grid) - 1)
    s = curve[:, at]  # [n, deaths]: S_j(t_i)
    own = s[deaths, np.arange(len(deaths))]  # S_i(t_i)
    comparable = (time[:, None] > time[deaths]) | ((time[:, None] == time[deaths]) & ~died[:, None])
    n_pairs = comparable.sum()
    if n_pairs == 0:
        raise UndefinedMetricError("Antolini's C needs a death before another stay's time")
    return float((comparable & (own < s)).sum() / n_pairs)


def censoring_survival(train: np.ndarray, times) -> np.ndarray:
    """G(t), the Kaplan-Meier survival of the censoring times of `train`, at `times`.

    scikit-survival's `CensoringDistributionEstimator`, which its IPCW metrics fit on
    `survival_train` inside every call. It depends on the train split alone: fit it once and
    give the metrics below its values at the test times (elementwise, so a resample's rows
    index them). Raises ValueError (scikit-survival's) for a time past the last train time
    while G is still positive there.
    """
    times = np.atleast_1d(np.asarray(times, dtype=float))
    return CensoringDistributionEstimator().fit(train).predict_proba(times)


def _finite(estimate: np.ndarray) -> np.ndarray:
    # scikit-survival's check_array refuses NaN and infinity in a prediction; so do we
    if not np.isfinite(estimate).all():
        raise ValueError("predictions contain NaN or infinity")
    return estimate


def _ipcw(died: np.ndarray, censoring: np.ndarray) -> np.ndarray:
    """1 / G(t_i) at the stays in `died`, 0 elsewhere: scikit-survival's `predict_ipcw`."""
    if (censoring[died] == 0).any():
        raise ValueError("censoring survival function is zero at one or more time points")
    weights = np.zeros(len(died))
    weights[died] = 1.0 / censoring[died]
    return weights


def uno_c(test: np.ndarray, censoring: np.ndarray, curve: np.ndarray, grid: np.ndarray, tau: float) -> float:
    """Uno's C of risk 1 - S(tau) on pairs up to `tau`: scikit-survival's
    `concordance_index_ipcw(train, test, risk, tau)`, `censoring` = G at the test times."""
    _require_events(test["event"], "Uno's C")
    if not (test["event"] & (test["time"] < tau)).any():
        raise UndefinedMetricError(f"Uno's C needs a death before tau = {tau} h")
    risk = _finite(1.0 - step_survival(curve, grid, [tau])[:, 0])
    weights = _ipcw(test["event"] & (test["time"] < tau), censoring)  # deaths from tau on weigh 0
    return float(_estimate_concordance_index(test["event"], test["time"], risk, np.square(weights))[0])


def integrated_brier(test: np.ndarray, censoring: np.ndarray, curve: np.ndarray, grid: np.ndarray,
                     times: np.ndarray, censoring_at_times: np.ndarray) -> float:
    """The Brier score at increasing `times`, integrated by the trapezoid rule and divided by
    their span: scikit-survival's `integrated_brier_score`, `censoring` = G at the test
    times, `censoring_at_times` = G at `times`."""
    if not test["event"].any():  # scikit-survival refuses an all-censored test set
        raise UndefinedMetricError(f"IBS needs a death among the {len(test)} test stays (scikit-survival)")
    if times.max() >= test["time"].max() or times.min() < test["time"].min():
        raise UndefinedMetricError(f"IBS times {times.min()}-{times.max()} h must lie in the test follow-up "
                                   f"[{test['time'].min():.2f}, {test['time'].max():.2f}) h")
    if len(times) < 2 or (np.diff(times) <= 0).any():
        raise ValueError(f"IBS needs >= 2 increasing times; got {times}")
    # [T, n], a row per time, in row-major memory: a row's mean then sums in the order of
    # scikit-survival's 1-D mean (a column-major array sums in another, other last bits)
    est = np.ascontiguousarray(_finite(step_survival(curve, grid, times)).T)
    time, t = test["time"], times[:, None]
    # a zero G weighs nothing (scikit-survival divides by infinity there)
    g_time, g_t = (np.where(g == 0, np.inf, g) for g in (censoring, censoring_at_times[:, None]))
    # scikit-survival's terms, in its order
    brier = np.mean(np.square(est) * ((time <= t) & test["event"]).astype(int) / g_time
                    + np.square(1.0 - est) * (time > t).astype(int) / g_t, axis=1)
    return float(np.trapezoid(brier, times) / (times[-1] - times[0]))


def time_dependent_auc(test: np.ndarray, censoring: np.ndarray, curve: np.ndarray, grid: np.ndarray,
                       t: float) -> float:
    """Cumulative/dynamic AUROC at `t` of risk 1 - S(t) (deaths by `t`, weighted 1 / G(death),
    against stays beyond `t`): scikit-survival's `cumulative_dynamic_auc(train, test, risk, [t])`,
    `censoring` = G at the test times."""
    if not (test["event"] & (test["time"] <= t)).any():
        raise UndefinedMetricError(f"AUROC at {t} h needs a death by then")
    if not (test["time"] > t).any() or t >= test["time"].max():
        raise UndefinedMetricError(f"AUROC at {t} h needs follow-up beyond it (last {test['time'].max():.2f} h)")
    risk = _finite(1.0 - step_survival(curve, grid, [t])[:, 0])
    weights = _ipcw(test["event"], censoring)
    # scikit-survival's steps for one time: stays by decreasing risk, a threshold after each,
    # tied risks (within 1e-8) one threshold (the last of them kept), the curve from (0, 0)
    order = np.argsort(-risk)
    time, died, risk, weights = test["time"][order], test["event"][order], risk[order], weights[order]
    true_pos = np.cumsum(((time <= t) & died) * weights)
    false_pos = np.cumsum(time > t)
    tied = np.flatnonzero(np.absolute(np.diff(np.r_[np.inf, risk])) <= 1e-8) - 1
    true_pos = np.delete(true_pos / true_pos[-1], tied)
    false_pos = np.delete(false_pos / false_pos[-1], tied)
    return float(np.trapezoid(np.r_[0, true_pos], np.r_[0, false_pos]))


# ------------------------------------------------------------------ curves to compare


def kaplan_meier_curve(time: np.ndarray, event: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """The Kaplan-Meier survival of (time, event) read on `grid`. -> [G]"""
    x, y = kaplan_meier_estimator(np.asarray(event) > 0, np.asarray(time, dtype=float))
    idx = np.searchsorted(x, grid, side="right") - 1
    return np.where(idx >= 0, y[np.maximum(idx, 0)], 1.0)


def oracle_curve(true_risk: np.ndarray, death_rate_per_hour: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """The generator's survival after the cutoff, S(t) = 1 - r (1 - exp(-lambda t)). -> [n, G]"""
    r, lam = np.asarray(true_risk)[:, None], np.asarray(death_rate_per_hour)[:, None]
    return 1.0 - r * (1.0 - np.exp(-lam * np.asarray(grid)[None, :]))


def bag_of_codes(visits: pd.Series, pre_visits: np.ndarray, vocab_size: int) -> sparse.csr_matrix:
    """Per stay, in how many pre-cutoff visits each code occurs. -> [n, vocab_size] counts"""
    rows, cols = [], []
    for i, (stay_visits, n_pre) in enumerate(zip(visits, pre_visits)):
        codes = np.concatenate([np.asarray(v, dtype=np.int64) for v in stay_visits[:n_pre]] + [np.zeros(0, np.int64)])
        rows.append(np.full(len(codes), i))
        cols.append(codes)
    rows, cols = np.concatenate(rows), np.concatenate(cols)
    return sparse.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(len(visits), vocab_size))


class CoxBaseline:
    """Elastic-net Cox (scikit-survival `CoxnetSurvivalAnalysis`) on log(1 + counts) of the
    pre-cutoff codes seen in >= `min_stays` train stays, standardised with train statistics.
    The penalty is the one of a path of `n_alphas` with the best Antolini C on val."""

    def __init__(self, min_stays: int, l1_ratio: float, n_alphas: int):
        self.min_stays, self.l1_ratio, self.n_alphas = min_stays, l1_ratio, n_alphas

    def _features(self, counts: sparse.csr_matrix) -> np.ndarray:
        x = np.log1p(counts[:, self.columns].toarray())
        return (x - self.mean) / self.scale

    def fit(self, counts_train, y_train, counts_val, y_val, grid: np.ndarray) -> CoxBaseline:
        self.columns = np.flatnonzero(np.asarray((counts_train > 0).sum(axis=0)).ravel() >= self.min_stays)
        if len(self.columns) == 0:
            raise UndefinedMetricError(f"Cox baseline: no code occurs in >= {self.min_stays} train stays")
        x = np.log1p(counts_train[:, self.columns].toarray())
        self.mean, self.scale = x.mean(axis=0), np.where(x.std(axis=0) > 0, x.std(axis=0), 1.0)
        self.model = CoxnetSurvivalAnalysis(l1_ratio=self.l1_ratio, n_alphas=self.n_alphas, fit_baseline_model=True)
        self.model.fit(self._features(counts_train), y_train)
        x_val = self._features(counts_val)
        scores = {}
        for alpha in self.model.alphas_:
            try:
                scores[alpha] = antolini_c(self._curve(x_val, grid, alpha), grid, y_val["time"], y_val["event"])
            except UndefinedMetricError:
                continue
        self.alpha = max(scores, key=scores.get) if scores else self.model.alphas_[-1]
        log.info("Cox baseline: %d codes, alpha %.4g (val Antolini C %s)", len(self.columns), self.alpha,
                 scores.get(self.alpha))
        return self

    def _curve(self, x: np.ndarray, grid: np.ndarray, alpha: float) -> np.ndarray:
        functions = self.model.predict_survival_function(x, alpha=alpha)
        return np.stack([np.where(grid < fn.x[0], 1.0, fn(np.maximum(grid, fn.x[0]))) for fn in functions])

    def curve(self, counts: sparse.csr_matrix, grid: np.ndarray) -> np.ndarray:
        """Survival curves on `grid`. -> [n, G]"""
        return self._curve(self._features(counts), grid, self.alpha)


# ------------------------------------------------------------------------ bootstrap


def patient_bootstrap(
    compute: Callable[[np.ndarray], dict[str, float]],
    subject_ids: np.ndarray,
    *,
    n_resamples: int,
    seed: int,
    confidence: float = 0.95,
) -> dict[str, dict]:
    """Point value and percentile interval of every metric `compute(rows)` returns,
    resampling patients (clusters of their stays) with replacement.

    `compute` gets row indices and returns {name: value}, with None (and the reason under
    `name + "/reason"`) for an undefined metric. All metrics of a resample share its rows,
    so ratios between them are paired. (To be unified with the patient bootstrap of
    ehrseq.metrics once both are merged.)
    """
    subject_ids = np.asarray(subject_ids)
    subjects, inverse = np.unique(subject_ids, return_inverse=True)
    rows_of = [np.flatnonzero(inverse == s) for s in range(len(subjects))]
    point = compute(np.arange(len(subject_ids)))
    rng = np.random.default_rng(seed)
    samples: dict[str, list[float]] = {k: [] for k in point if not k.endswith("/reason")}
    for _ in range(n_resamples):
        drawn = rng.integers(0, len(subjects), size=len(subjects))
        values = compute(np.concatenate([rows_of[s] for s in drawn]))
        for key in samples:
            if values.get(key) is not None:
                samples[key].append(values[key])
    alpha = (1 - confidence) / 2
    out = {}
    for key, values in samples.items():
        if point[key] is None:
            out[key] = {"value": None, "reason": point.get(key + "/reason", "undefined")}
            continue
        entry = {"value": point[key], "n_resamples": len(values)}
        if values:
            low, high = np.quantile(values, [alpha, 1 - alpha])
            entry.update(ci_low=float(low), ci_high=float(high))
        else:
            entry.update(ci_low=None, ci_high=None, reason=f"undefined on all {n_resamples} resamples")
        out[key] = entry
    return out


def method_metrics(test: np.ndarray, censoring: np.ndarray, curve: np.ndarray, grid: np.ndarray,
                   auc_hours: list[float], ibs_times: np.ndarray, censoring_at_ibs: np.ndarray,
                   tau: float) -> dict[str, float | None | str]:
    """Every metric of one method's curves on the test stays given (None + reason when
    undefined). `censoring`: the train split's censoring survival G at the test times,
    `censoring_at_ibs` at `ibs_times` (see `censoring_survival`)."""
    metrics = {
        "antolini_c": lambda: antolini_c(curve, grid, test["time"], test["event"]),
        "uno_c": lambda: uno_c(test, censoring, curve, grid, tau),
        "integrated_brier_score": lambda: integrated_brier(test, censoring, curve, grid, ibs_times, censoring_at_ibs),
        **{f"auroc_{t:g}h": (lambda t=t: time_dependent_auc(test, censoring, curve, grid, t)) for t in auc_hours},
    }
    out: dict[str, float | None | str] = {}
    for name, fn in metrics.items():
        try:
            out[name] = fn()
        except UndefinedMetricError as err:
            out[name], out[name + "/reason"] = None, str(err)
    return out
