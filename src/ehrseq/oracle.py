"""The mortality oracle: the generator's true risk of each test stay, scored like a model.

Every mortality model (`evaluate@MODEL`) and the logistic-regression baseline (`logreg`)
report the oracle's AUROC on the same test stays and their own share of it, from one
paired bootstrap (the same resampled patients for model and oracle), so the ratio's
interval is not the ratio of two independent intervals. Real data has no truth: both
values are then undefined, with the reason.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ehrseq import metrics


def true_risk(truth_path: Path, stay_ids) -> np.ndarray:
    """The planted risk of each stay, in the order of `stay_ids`; every stay must be there."""
    truth = pd.read_parquet(truth_path, columns=["stay_id", "true_risk"]).set_index("stay_id")["true_risk"]
    missing = pd.Index(stay_ids).difference(truth.index)
    if len(missing):
        raise ValueError(f"{truth_path}: column 'stay_id' lacks {len(missing)} test stays, e.g. {missing[0]}")
    return truth.loc[stay_ids].to_numpy()


def oracle_metrics(truth_path: Path, stay_ids, y, prob, clusters, n_resamples: int, seed: int) -> dict:
    """`oracle_auroc` and `auroc_vs_oracle` (model AUROC / oracle AUROC), paired bootstrap."""
    if not truth_path.exists():
        reason = f"{truth_path} not found (only the synthetic source records true risks)"
        return {"oracle_auroc": {"value": None, "reason": reason}, "auroc_vs_oracle": {"value": None, "reason": reason}}
    risk = true_risk(truth_path, stay_ids)

    def ratio(y_, model, oracle):
        return metrics.auroc(y_, model) / metrics.auroc(y_, oracle)

    kw = {"clusters": clusters, "n_resamples": n_resamples, "seed": seed}
    return {"oracle_auroc": metrics.bootstrap(metrics.auroc, (y, risk), **kw),
            "auroc_vs_oracle": metrics.bootstrap(ratio, (y, prob, risk), **kw)}
