"""Evaluation metrics against sklearn, undefined cases, bootstrap intervals and calibration."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import (
    average_precision_score,
    brier_score_loss,
    precision_recall_curve,
    roc_auc_score,
    roc_curve,
)

from ehrseq import metrics


@pytest.fixture
def scores():
    rng = np.random.default_rng(0)
    y = (rng.random(400) < 0.15).astype(int)
    p = np.clip(0.1 + 0.5 * y + rng.normal(0, 0.25, 400), 0, 1)
    return y, p


def test_point_metrics_match_sklearn(scores):
    y, p = scores
    assert metrics.auroc(y, p) == pytest.approx(roc_auc_score(y, p))
    assert metrics.auprc(y, p) == pytest.approx(average_precision_score(y, p))
    assert metrics.brier(y, p) == pytest.approx(brier_score_loss(y, p))


@pytest.mark.parametrize("decimals", [None, 2, 1, 0])
def test_auroc_auprc_and_curves_match_sklearn_on_tied_and_tiny_samples(decimals):
    """The hand-rolled curve points (tied scores are one threshold) against sklearn's; the
    curve tables bit for bit (roc.csv and pr.csv are the same bytes as from sklearn)."""
    rng = np.random.default_rng(decimals or 5)
    checked = 0
    for _ in range(300):
        n = int(rng.integers(2, 60))
        y, p = rng.integers(0, 2, n), rng.random(n)
        p = p if decimals is None else np.round(p, decimals)
        if 0 < y.sum() < n:
            assert metrics.auroc(y, p) == pytest.approx(roc_auc_score(y, p), abs=1e-12)
            assert metrics.auprc(y, p) == pytest.approx(average_precision_score(y, p), abs=1e-12)
            curves = metrics.classification_curves(y, p, n_bins=10)
            np.testing.assert_array_equal(curves["roc"].to_numpy(), np.c_[roc_curve(y, p)])
            precision, recall, thresholds = precision_recall_curve(y, p)
            np.testing.assert_array_equal(curves["pr"].to_numpy(), np.c_[recall, precision, np.r_[thresholds, np.nan]])
            checked += 1
    assert checked > 250


def test_undefined_auroc_is_null_with_a_reason():
    y, p = np.zeros(50, dtype=int), np.linspace(0, 1, 50)
    with pytest.raises(metrics.UndefinedMetricError, match="AUROC needs both classes; all 50 labels are 0"):
        metrics.auroc(y, p)
    report = metrics.binary_classification_metrics(y, p, clusters=None, n_bins=10, n_resamples=50, seed=0)
    assert report["auroc"] == {"value": None, "reason": "AUROC needs both classes; all 50 labels are 0"}
    assert report["auprc"]["value"] is None and "at least one positive" in report["auprc"]["reason"]
    assert report["brier"]["value"] == pytest.approx(np.mean(p**2))  # still defined
    curves = metrics.classification_curves(y, p, n_bins=10)
    assert curves["roc"].empty and list(curves["roc"].columns) == ["fpr", "tpr", "threshold"]
    assert curves["calibration"]["count"].sum() == 50


def test_bootstrap_interval_contains_the_estimate_and_is_reproducible(scores):
    y, p = scores
    a = metrics.bootstrap(metrics.auroc, (y, p), clusters=None, n_resamples=300, seed=1)
    assert a["ci_low"] < a["value"] < a["ci_high"] and a["n_resamples"] == 300
    assert a == metrics.bootstrap(metrics.auroc, (y, p), clusters=None, n_resamples=300, seed=1)
    narrow = metrics.bootstrap(metrics.auroc, (np.tile(y, 16), np.tile(p, 16)), clusters=None, n_resamples=300, seed=1)
    assert narrow["ci_high"] - narrow["ci_low"] < 0.5 * (a["ci_high"] - a["ci_low"])  # more stays, tighter


def test_paired_bootstrap_of_a_ratio(scores):
    y, p = scores
    oracle = np.clip(p + 0.05 * y, 0, 1)
    ratio = metrics.bootstrap(lambda y_, a, b: metrics.auroc(y_, a) / metrics.auroc(y_, b), (y, p, oracle),
                              clusters=None, n_resamples=200, seed=0)
    assert ratio["value"] == pytest.approx(roc_auc_score(y, p) / roc_auc_score(y, oracle))
    assert ratio["ci_low"] <= ratio["value"] <= ratio["ci_high"] <= 1.0


def width(interval: dict) -> float:
    return interval["ci_high"] - interval["ci_low"]


def test_copies_of_a_patients_stays_narrow_stay_intervals_but_not_patient_intervals(scores):
    """The oracle: 400 patients with one stay each, then every stay copied 4 times. The
    copies add no information, so resampling patients gives exactly the intervals of the
    originals (the same draws pick the same patients, each metric is invariant to copying
    rows), while resampling stays halves them (1/sqrt(4)): the too-narrow interval."""
    y, p = scores
    patients = np.arange(len(y)) * 7 + 3  # any ids
    copies = 4
    y4, p4, patients4 = np.repeat(y, copies), np.repeat(p, copies), np.repeat(patients, copies)
    kw = {"n_bins": 10, "n_resamples": 200, "seed": 3}
    base = metrics.binary_classification_metrics(y, p, clusters=patients, **kw)
    by_patient = metrics.binary_classification_metrics(y4, p4, clusters=patients4, **kw)
    by_stay = metrics.binary_classification_metrics(y4, p4, clusters=None, **kw)
    for name in ("auroc", "auprc", "brier", "ece"):
        assert by_patient[name]["value"] == pytest.approx(base[name]["value"], rel=1e-9), name
        assert by_patient[name]["ci_low"] == pytest.approx(base[name]["ci_low"], rel=1e-9), name
        assert by_patient[name]["ci_high"] == pytest.approx(base[name]["ci_high"], rel=1e-9), name
        assert 0.35 < width(by_stay[name]) / width(by_patient[name]) < 0.65, name


def test_a_patient_comes_with_all_stays_in_every_array_at_once():
    """Shuffled rows, string ids, patients of 1 to 5 stays: every resample holds each drawn
    patient's stays complete (as many times as the patient was drawn), and the arrays stay
    paired row by row."""
    rng = np.random.default_rng(1)
    sizes = rng.integers(1, 6, size=60)
    patients = np.repeat([f"p{i}" for i in range(60)], sizes)
    order = rng.permutation(len(patients))
    patients = patients[order]
    row = np.arange(len(patients))
    seen = []

    def record(rows_a, rows_b):
        assert np.array_equal(rows_a, rows_b)  # paired
        drawn = pd.Series(patients[rows_a]).value_counts()
        stays = pd.Series(patients).value_counts()
        copies = drawn / stays.loc[drawn.index]
        assert np.allclose(copies, np.round(copies)) and (copies >= 1).all()  # whole patients only
        assert copies.sum() == 60  # as many patients as there are, drawn with replacement
        seen.append(len(drawn))
        return 0.0

    result = metrics.bootstrap(record, (row, row.copy()), clusters=patients, n_resamples=50, seed=0)
    assert result["n_resamples"] == 50
    assert 30 < np.mean(seen) < 46  # distinct patients per draw: 60 * (1 - (59/60)**60) ~ 38


def test_cluster_resamples_drive_the_bootstrap(scores):
    """A caller with several metrics per resample (survival) loops over cluster_resamples
    and gets the intervals `bootstrap` gives."""
    y, p = scores
    patients = np.arange(len(y)) // 3
    values = [metrics.auroc(y[idx], p[idx]) for idx in metrics.cluster_resamples(patients, n_resamples=100, seed=4)]
    result = metrics.bootstrap(metrics.auroc, (y, p), clusters=patients, n_resamples=100, seed=4)
    assert [result["ci_low"], result["ci_high"]] == pytest.approx(np.quantile(values, [0.025, 0.975]), rel=1e-12)


def test_patient_ids_come_from_the_cohort_and_missing_stays_are_named(tmp_path):
    path = tmp_path / "cohort.parquet"
    pd.DataFrame({"stay_id": [10, 11, 12], "subject_id": [1, 1, 2], "split": "test"}).to_parquet(path)
    assert metrics.patient_ids(np.array([12, 10, 11]), path).tolist() == [2, 1, 1]
    with pytest.raises(ValueError, match=r"cohort.parquet: column 'stay_id' lacks 1 of the stays, e.g. 99"):
        metrics.patient_ids([10, 99], path)
    with pytest.raises(ValueError, match="one cluster per row"):
        metrics.bootstrap(metrics.brier, (np.r_[0, 1], np.r_[0.2, 0.7]), clusters=[1], n_resamples=5, seed=0)


def test_resamples_without_both_classes_are_skipped():
    y, p = np.r_[1, np.zeros(9, dtype=int)], np.linspace(0, 1, 10)
    result = metrics.bootstrap(metrics.auroc, (y, p), clusters=None, n_resamples=200, seed=0)
    # a resample misses the single positive with probability 0.9**10 ~ 35 %
    assert 90 < result["n_resamples"] < 170 and result["ci_low"] <= result["value"] <= result["ci_high"]


def test_ece_is_zero_for_a_calibrated_predictor_and_the_gap_for_a_constant_one():
    rng = np.random.default_rng(0)
    p = rng.random(200_000)
    y = (rng.random(200_000) < p).astype(int)
    assert metrics.expected_calibration_error(y, p, n_bins=10) < 0.01
    constant = np.full_like(p, 0.3)
    assert metrics.expected_calibration_error(y, constant, n_bins=10) == pytest.approx(abs(y.mean() - 0.3))
    table = metrics.classification_curves(y, p, n_bins=10)["calibration"]
    assert np.allclose(table["observed_rate"], table["mean_predicted"], atol=0.01)


def test_probability_one_falls_in_the_last_bin():
    table = metrics.classification_curves(np.array([0, 1, 1]), np.array([0.0, 0.95, 1.0]), n_bins=10)["calibration"]
    assert table["count"].tolist() == [1] + [0] * 8 + [2]


def test_perplexity_and_accuracy_from_per_sequence_sums():
    vocab = 37
    nll = np.full(4, np.log(vocab)) * [3, 5, 1, 2]  # uniform guessing over 11 tokens in 4 sequences
    assert metrics.perplexity(nll, [3, 5, 1, 2]) == pytest.approx(vocab)
    assert metrics.token_accuracy([1, 2, 0, 1], [3, 5, 1, 2]) == pytest.approx(4 / 11)
    with pytest.raises(metrics.UndefinedMetricError):
        metrics.perplexity([0.0], [0])


@pytest.mark.parametrize("y, p, message", [
    ([0, 2], [0.1, 0.2], "labels must be 0/1; index 1 is"),
    ([0, 1], [0.1, 1.2], r"probabilities must be in \[0, 1\]; index 1 is"),
    ([0, 1], [0.1, np.nan], r"probabilities must be in \[0, 1\]; index 1 is"),
    ([0, 1], [0.1], "1-D of equal length"),
])
def test_bad_input_is_an_error_not_a_number(y, p, message):
    with pytest.raises(ValueError, match=message):
        metrics.brier(np.array(y), np.array(p))


def test_curves_span_the_unit_square(scores):
    y, p = scores
    curves = metrics.classification_curves(y, p, n_bins=10)
    roc, pr = curves["roc"], curves["pr"]
    assert (roc["fpr"].iloc[0], roc["tpr"].iloc[0], roc["fpr"].iloc[-1], roc["tpr"].iloc[-1]) == (0, 0, 1, 1)
    assert pr["recall"].max() == 1 and pr["precision"].between(0, 1).all()
    assert np.trapezoid(roc["tpr"], roc["fpr"]) == pytest.approx(roc_auc_score(y, p))


def test_oracle_scores_the_true_risk_of_the_same_stays_in_their_order(tmp_path, scores):
    from ehrseq.oracle import oracle_metrics

    y, p = scores
    stay_ids = np.arange(1000, 1000 + len(y))
    risk = np.clip(0.3 * y + np.random.default_rng(1).normal(0, 0.2, len(y)), 0, 1)
    truth = tmp_path / "stay_risk.parquet"
    # Stored in another order, with a stay the test split does not have: looked up by id.
    pd.DataFrame({"stay_id": np.r_[stay_ids[::-1], 5], "true_risk": np.r_[risk[::-1], 0.5]}).to_parquet(truth)
    out = oracle_metrics(truth, stay_ids, y, p, clusters=stay_ids, n_resamples=50, seed=0)
    assert out["oracle_auroc"]["value"] == pytest.approx(roc_auc_score(y, risk))
    assert out["auroc_vs_oracle"]["value"] == pytest.approx(roc_auc_score(y, p) / roc_auc_score(y, risk))
    assert out["auroc_vs_oracle"]["ci_low"] <= out["auroc_vs_oracle"]["value"] <= out["auroc_vs_oracle"]["ci_high"]

    with pytest.raises(ValueError, match=r"stay_risk.parquet: column 'stay_id' lacks 1 test stays, e.g. 7"):
        oracle_metrics(truth, np.r_[stay_ids, 7], np.r_[y, 0], np.r_[p, 0.1], clusters=np.r_[stay_ids, 7],
                       n_resamples=10, seed=0)
    real = oracle_metrics(tmp_path / "absent.parquet", stay_ids, y, p, clusters=stay_ids, n_resamples=10, seed=0)
    assert real["oracle_auroc"]["value"] is None and "only the synthetic source" in real["oracle_auroc"]["reason"]
