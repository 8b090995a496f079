import numpy as np
import pandas as pd

from ehrseq.cohort import _allocate, assign_splits

FRACTIONS = {"train": 0.7, "val": 0.15, "test": 0.15}


def stays(n_subjects=200, seed=0):
    rng = np.random.default_rng(seed)
    subjects = np.repeat(np.arange(n_subjects), rng.integers(1, 4, n_subjects))
    return pd.DataFrame({"subject_id": subjects, "mortality": (rng.random(len(subjects)) < 0.1).astype(int)})


def test_split_is_by_patient_and_deterministic():
    df = stays()
    split = assign_splits(df, FRACTIONS, seed=1)
    assert (df.assign(split=split).groupby("subject_id")["split"].nunique() == 1).all()
    pd.testing.assert_series_equal(split, assign_splits(df, FRACTIONS, seed=1))
    assert not split.equals(assign_splits(df, FRACTIONS, seed=2))


def test_a_patient_keeps_its_split_when_others_are_added():
    df = stays()
    before = assign_splits(df, FRACTIONS, seed=1)
    more = pd.concat([df, pd.DataFrame({"subject_id": [10_000, 10_001], "mortality": [0, 0]})], ignore_index=True)
    after = assign_splits(more, FRACTIONS, seed=1)
    # only the 'never died' stratum grew; ranks are per-subject hashes, so nearly all stay put
    assert (after.iloc[: len(df)] == before).mean() > 0.97


def test_every_split_gets_both_outcomes_when_possible():
    # 20 patients, 3 of whom die: a plain 70/15/15 shuffle often leaves a split without deaths
    df = pd.DataFrame({"subject_id": range(20), "mortality": [1, 1, 1] + [0] * 17})
    for seed in range(20):
        split = assign_splits(df, FRACTIONS, seed=seed)
        assert set(split[df["mortality"] == 1]) == {"train", "val", "test"}
        assert set(split[df["mortality"] == 0]) == {"train", "val", "test"}


def test_fractions_are_respected():
    df = pd.DataFrame({"subject_id": range(1000), "mortality": [0] * 900 + [1] * 100})
    counts = assign_splits(df, FRACTIONS, seed=0).value_counts()
    assert counts.to_dict() == {"train": 700, "val": 150, "test": 150}


def test_allocate():
    assert _allocate(10, (0.7, 0.15, 0.15)) == [7, 2, 1]
    assert _allocate(3, (0.98, 0.01, 0.01)) == [1, 1, 1]
    assert _allocate(2, (0.7, 0.15, 0.15)) == [2, 0, 0]
