"""The classical mortality baseline: L2 logistic regression on bags of pre-cutoff codes.

Reads the same token sequences as the token models (`sequences/{split}.parquet`: the
events before the cutoff and the demographic tokens, never a discharge diagnosis), counts
each token per stay, scales counts by log1p (a stay with 40 potassium draws is not 40
times as potassium-ish), and fits scikit-learn's `LogisticRegression` on train for each
inverse regularisation strength `C` of a grid, keeping the `C` with the best validation
AUROC. Nothing about the test split is seen before the final prediction.

A model in the report that beats this line is learning something a bag of codes cannot:
order, timing, interactions.
"""
from __future__ import annotations

import logging

import numpy as np
import pandas as pd
from scipy import sparse
from sklearn.linear_model import LogisticRegression

from ehrseq import metrics

log = logging.getLogger(__name__)


def bag_of_codes(input_ids: pd.Series, vocab_size: int) -> sparse.csr_matrix:
    """[stays, vocab] log1p token counts; column 0 (<pad>) stays empty."""
    lengths = input_ids.map(len).to_numpy()
    rows = np.repeat(np.arange(len(input_ids)), lengths)
    cols = np.concatenate(input_ids.to_list()).astype(np.int64) if len(input_ids) else np.array([], np.int64)
    counts = sparse.csr_matrix((np.ones(len(cols)), (rows, cols)), shape=(len(input_ids), vocab_size))
    counts.sum_duplicates()
    counts.data = np.log1p(counts.data)
    return counts


def fit_logreg(x_train, y_train, x_val, y_val, c_grid: list[float], seed: int) -> tuple[LogisticRegression, dict]:
    """The L2 logistic regression with the best validation AUROC over `c_grid`.

    Returns the model refitted on train at that C (the one already fitted) and the
    validation AUROC of every C, so the choice is visible in the metrics file.
    """
    if not c_grid:
        raise ValueError("c_grid is empty: give at least one inverse regularisation strength C")
    best, best_auroc, scores = None, -np.inf, {}
    for c in c_grid:
        model = LogisticRegression(C=c, max_iter=2000, random_state=seed)
        model.fit(x_train, y_train)
        score = metrics.auroc(y_val, model.predict_proba(x_val)[:, 1])
        scores[str(c)] = score
        log.info("logreg C=%g: val AUROC %.4f", c, score)
        if score > best_auroc:
            best, best_auroc = model, score
    return best, {"val_auroc_by_C": scores, "chosen_C": float(best.C)}
