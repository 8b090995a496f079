"""Patient-level train/val/test split, stratified by outcome.

Splitting by subject keeps every stay of a patient in one split (no patient leaks from
train into test). Stratifying by "ever died" and guaranteeing at least one subject of
each outcome per split whenever a stratum has three or more subjects avoids the test
split with no deaths that turns AUROC into an unreported NaN on small data such as the
MIMIC-III demo.
"""
from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd

from ehrseq.schema import SPLITS


def _stable_rank(subject_ids: pd.Series, seed: int) -> np.ndarray:
    """A permutation that depends only on (seed, subject_id): adding or removing other
    patients never moves a patient to another split."""
    keys = [hashlib.sha256(f"{seed}:{s}".encode()).hexdigest() for s in subject_ids]
    return np.argsort(np.array(keys), kind="stable")


def _allocate(n: int, fractions: tuple[float, float, float]) -> list[int]:
    """Split n items by fractions (largest remainder), each split getting at least one
    item when n >= number of splits."""
    raw = np.array(fractions) * n
    counts = np.floor(raw).astype(int)
    for i in np.argsort(-(raw - counts), kind="stable")[: n - counts.sum()]:
        counts[i] += 1
    if n >= len(fractions):
        for i in range(len(counts)):
            while counts[i] == 0:
                donor = int(np.argmax(counts))
                counts[donor] -= 1
                counts[i] += 1
    return counts.tolist()


def assign_splits(
    stays: pd.DataFrame, fractions: dict[str, float], seed: int, label: str = "mortality"
) -> pd.Series:
    """Return the split of each row of `stays` (needs `subject_id` and `label`)."""
    total = sum(fractions[s] for s in SPLITS)
    fr = tuple(fractions[s] / total for s in SPLITS)
    subjects = stays.groupby("subject_id")[label].max().reset_index()
    split_of: dict[int, str] = {}
    for _, group in subjects.groupby(label):
        ordered = group["subject_id"].to_numpy()[_stable_rank(group["subject_id"], seed)]
        start = 0
        for name, count in zip(SPLITS, _allocate(len(ordered), fr)):
            for subject in ordered[start : start + count]:
                split_of[int(subject)] = name
            start += count
    return stays["subject_id"].map(split_of).astype("string")
