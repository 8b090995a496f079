"""survival_lstm's evaluation: the model's landmark curves beside the oracle, Kaplan-Meier
and Cox, every metric with a patient-level bootstrap interval, and the tertile plot.

All four methods are scored on the same test stays, the same grid and the same
resamples (paired), in one run. The oracle needs the synthetic truth
(`truth/stay_survival.parquet`: stay_id, true_risk, death_rate_per_hour); without it
its metrics are undefined with the reason.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from ehrseq import survival_metrics as sm

log = logging.getLogger(__name__)

METHODS = ("model", "oracle", "kaplan_meier", "cox")


def read_oracle(path: Path, stay_ids: np.ndarray) -> tuple[np.ndarray | None, np.ndarray | None, str | None]:
    """(true_risk, death_rate_per_hour) of `stay_ids`, or (None, None, reason) without the file."""
    if not path.exists():
        return None, None, f"{path} not found (only the synthetic source records true survival)"
    truth = pd.read_parquet(path, columns=["stay_id", "true_risk", "death_rate_per_hour"]).set_index("stay_id")
    missing = pd.Index(stay_ids).difference(truth.index)
    if len(missing):
        raise ValueError(f"{path}: column 'stay_id' lacks {len(missing)} test stays, e.g. {missing[0]}")
    rows = truth.loc[stay_ids]
    return rows["true_risk"].to_numpy(float), rows["death_rate_per_hour"].to_numpy(float), None


def evaluate_curves(
    *,
    model_curve: np.ndarray,  # [n, H] S(k w), k = 1..H, on the test stays
    test: pd.DataFrame,  # the test rows of the survival view, in the order of model_curve
    train: pd.DataFrame,
    val: pd.DataFrame,
    vocab_size: int,
    visit_hours: float,
    truth_path: Path,
    auc_hours: list[float],
    tau_hours: float,
    cox: dict,
    n_resamples: int,
    seed: int,
) -> tuple[dict, dict[str, np.ndarray]]:
    """The metrics report and every method's test curves on the grid ([n, H + 1], S(0) = 1)."""
    H = model_curve.shape[1]
    grid = visit_hours * np.arange(H + 1.0)  # 0, w, .., H w hours after the cutoff
    y_train, y_val = (sm.outcome(f["time_hours"], f["event"]) for f in (train, val))
    y_test = sm.outcome(test["time_hours"], test["event"])
    curves = {"model": np.hstack([np.ones((len(test), 1)), model_curve])}

    risk, rate, oracle_reason = read_oracle(truth_path, test["stay_id"].to_numpy())
    curves["oracle"] = None if risk is None else sm.oracle_curve(risk, rate, grid)
    curves["kaplan_meier"] = np.tile(sm.kaplan_meier_curve(y_train["time"], y_train["event"], grid), (len(test), 1))
    counts = {name: sm.bag_of_codes(f["visits"], f["pre_visits"].to_numpy(), vocab_size)
              for name, f in (("train", train), ("val", val), ("test", test))}
    baseline = sm.CoxBaseline(**cox).fit(counts["train"], y_train, counts["val"], y_val, grid)
    curves["cox"] = baseline.curve(counts["test"], grid)

    # IBS over the bin ends inside the follow-up, up to tau; one grid for every method.
    ibs_times = grid[(grid > 0) & (grid <= tau_hours)]
    # The IPCW metrics' censoring survival, of the train split: the same for every resample
    # and method, so fitted once here and indexed by each resample's rows.
    censoring_test = sm.censoring_survival(y_train, y_test["time"])
    censoring_ibs = sm.censoring_survival(y_train, ibs_times)

    def compute(rows: np.ndarray) -> dict:
        test_rows, censoring_rows = y_test[rows], censoring_test[rows]
        out = {}
        for method in METHODS:
            if curves[method] is None:
                values = {}
                for name in ("antolini_c", "uno_c", "integrated_brier_score", *(f"auroc_{t:g}h" for t in auc_hours)):
                    values[name], values[name + "/reason"] = None, oracle_reason
            else:
                values = sm.method_metrics(test_rows, censoring_rows, curves[method][rows], grid, auc_hours, ibs_times,
                                           censoring_ibs, tau_hours)
            out.update({f"{method}/{k}": v for k, v in values.items()})
        model_c, oracle_c = out["model/antolini_c"], out["oracle/antolini_c"]
        out["c_index_vs_oracle"] = None if model_c is None or oracle_c is None else model_c / oracle_c
        if out["c_index_vs_oracle"] is None:
            out["c_index_vs_oracle/reason"] = out.get("oracle/antolini_c/reason") or out.get("model/antolini_c/reason")
        return out

    flat = sm.patient_bootstrap(compute, test["subject_id"].to_numpy(), n_resamples=n_resamples, seed=seed)
    metrics = {method: {k.split("/", 1)[1]: v for k, v in flat.items() if k.startswith(method + "/")}
               for method in METHODS}
    value = {m: {k: v["value"] for k, v in metrics[m].items()} for m in METHODS}
    ratio = flat["c_index_vs_oracle"]["value"]
    targets = {
        "antolini_c_at_least_0.9_oracle": None if ratio is None else bool(ratio >= 0.9),
        "antolini_c_above_cox": _compare(value["model"]["antolini_c"], value["cox"]["antolini_c"], larger=True),
        "ibs_at_most_cox": _compare(value["model"]["integrated_brier_score"], value["cox"]["integrated_brier_score"],
                                    larger=False),
    }
    report = {
        "split": "test", "stays": len(test), "patients": int(test["subject_id"].nunique()),
        "deaths_within_horizon": int(test["event"].sum()), "resample_unit": "patient",
        "visit_hours": visit_hours, "horizon_hours": float(grid[-1]), "auc_hours": list(auc_hours),
        "tau_hours": tau_hours, "ibs_hours": [float(ibs_times[0]), float(ibs_times[-1])] if len(ibs_times) else None,
        "metrics": metrics, "c_index_vs_oracle": flat["c_index_vs_oracle"], "targets": targets,
        "cox_baseline": {"codes": len(baseline.columns), "alpha": float(baseline.alpha), **cox},
    }
    return report, curves


def _compare(model: float | None, other: float | None, larger: bool) -> bool | None:
    if model is None or other is None:
        return None
    return bool(model > other if larger else model <= other)


def tertile_table(model_curve: np.ndarray, time: np.ndarray, event: np.ndarray, grid: np.ndarray) -> pd.DataFrame:
    """Mean predicted survival and the Kaplan-Meier survival of the test stays in each
    tertile of predicted risk at the horizon, on `grid` (wide, one column per series)."""
    risk = 1.0 - model_curve[:, -1]
    order = np.argsort(risk, kind="stable")
    table = {"hours": grid}
    for name, rows in zip(("low", "middle", "high"), np.array_split(order, 3)):
        table[f"{name}_predicted"] = model_curve[rows].mean(axis=0)
        table[f"{name}_kaplan_meier"] = (sm.kaplan_meier_curve(time[rows], event[rows], grid) if len(rows)
                                         else np.full(len(grid), np.nan))
    return pd.DataFrame(table)


def plot_tertiles(table: pd.DataFrame, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, color in zip(("low", "middle", "high"), ("tab:green", "tab:orange", "tab:red")):
        ax.step(table["hours"], table[f"{name}_kaplan_meier"], where="post", color=color,
                label=f"{name} risk: Kaplan-Meier")
        ax.plot(table["hours"], table[f"{name}_predicted"], "--", color=color, label=f"{name} risk: predicted (mean)")
    ax.set_xlabel("hours after the cutoff")
    ax.set_ylabel("survival")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
