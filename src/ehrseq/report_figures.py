"""The report's figures, drawn to PNG from the plot tables the stages write.

PNG because the usual viewer of credentialed MIMIC results is an offline server, where
`dvc plots show`'s HTML (Vega from a CDN) renders blank. Each function takes the tables
it needs (missing ones already filtered out by the caller) and returns nothing but a
file: a figure with no input is not drawn, and the summary says so.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

import matplotlib

matplotlib.use("Agg")  # no display on servers and in CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from ehrseq.io import atomic_path  # noqa: E402


def _save(fig, path: str | Path) -> None:
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def roc_overlay(curves: Mapping[str, pd.DataFrame], aurocs: Mapping[str, float | None], path: str | Path) -> None:
    """Every model's ROC curve (columns fpr, tpr) on one axis; the oracle dashed."""
    fig, ax = plt.subplots(figsize=(6, 5.5))
    for name, curve in curves.items():
        auc = aurocs.get(name)
        label = f"{name} (AUROC {auc:.3f})" if auc is not None else name
        style = {"linestyle": "--", "color": "black"} if name.startswith("oracle") else {}
        ax.plot(curve["fpr"], curve["tpr"], label=label, linewidth=1.4, **style)
    ax.plot([0, 1], [0, 1], color="grey", linewidth=0.8, linestyle=":", label="chance")
    ax.set(xlabel="false positive rate (1 - specificity)", ylabel="true positive rate (sensitivity)",
           title="In-hospital mortality, test split: ROC", xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(loc="lower right", fontsize=8)
    _save(fig, path)


def calibration_overlay(tables: Mapping[str, pd.DataFrame], path: str | Path) -> None:
    """Observed death rate against mean predicted risk per bin (columns mean_predicted, observed_rate)."""
    fig, ax = plt.subplots(figsize=(6, 5.5))
    top = 0.0
    for name, table in tables.items():
        table = table.dropna(subset=["mean_predicted", "observed_rate"])
        ax.plot(table["mean_predicted"], table["observed_rate"], marker="o", markersize=3, linewidth=1.2, label=name)
        top = max(top, float(table[["mean_predicted", "observed_rate"]].to_numpy().max(initial=0)))
    top = min(1.0, max(0.1, top * 1.05))
    ax.plot([0, top], [0, top], color="grey", linewidth=0.8, linestyle=":", label="perfect calibration")
    ax.set(xlabel="mean predicted risk in bin", ylabel="observed death rate in bin",
           title="Calibration, test split", xlim=(0, top), ylim=(0, top))
    ax.legend(loc="upper left", fontsize=8)
    _save(fig, path)


def deletion_curves(curves: Mapping[str, pd.DataFrame], path: str | Path) -> None:
    """One panel per model: mean predicted risk as the top-k events of each method are removed.

    Each table is explain's deletion.csv: method, k, risk (mean predicted risk after
    removing the top k events), `random` among the methods.
    """
    n = len(curves)
    fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 4), squeeze=False, sharey=True)
    for ax, (name, table) in zip(axes[0], curves.items()):
        for method, curve in table.groupby("method", sort=False):
            style = {"color": "black", "linestyle": "--"} if method == "random" else {}
            ax.plot(curve["k"], curve["risk"], label=method, linewidth=1.2, **style)
        ax.set(title=name, xlabel="events removed (top k by attribution)")
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("mean predicted risk (training scale)")
    fig.suptitle("Deletion curves: a faithful ranking drops the risk fastest", fontsize=10)
    _save(fig, path)


def survival_by_group(table: pd.DataFrame, path: str | Path) -> None:
    """Predicted and Kaplan-Meier survival per risk group.

    `table`: evaluate's tertile table, columns `hours` (after the cutoff) and, per group,
    `GROUP_predicted` and `GROUP_kaplan_meier`.
    """
    fig, ax = plt.subplots(figsize=(6.5, 5))
    groups = [c[: -len("_predicted")] for c in table.columns if c.endswith("_predicted")]
    for i, group in enumerate(groups):
        color = f"C{i}"
        days = table["hours"] / 24
        ax.step(days, table[f"{group}_kaplan_meier"], where="post", color=color, label=f"{group} risk: Kaplan-Meier")
        ax.plot(days, table[f"{group}_predicted"], color=color, linestyle="--", label=f"{group} risk: predicted")
    ax.set(xlabel="days after the prediction cutoff", ylabel="probability of no in-hospital death",
           title="Survival by tertile of predicted risk, test split")
    ax.legend(fontsize=8)
    _save(fig, path)


def prevalence_scatter(table: pd.DataFrame, path: str | Path) -> None:
    """Per-code visit prevalence, synthetic against real test visits (columns real, synthetic), log-log."""
    fig, ax = plt.subplots(figsize=(5.5, 5.5))
    floor = 0.5 / max(1, len(table))
    real, synthetic = np.maximum(table["real"], floor), np.maximum(table["synthetic"], floor)
    ax.scatter(real, synthetic, s=6, alpha=0.5)
    lo = float(min(real.min(), synthetic.min()))
    ax.plot([lo, 1], [lo, 1], color="grey", linewidth=0.8, linestyle=":")
    ax.set(xscale="log", yscale="log", xlabel="share of real test visits holding the code",
           ylabel="share of synthetic visits holding the code", title="Code prevalence: synthetic vs real")
    _save(fig, path)
