"""generate: the grammar the sampler obeys, top-k/top-p, decoding, the baseline, and the
fidelity / privacy / utility metrics against planted truths."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import sampling, tiny_model, toy_patients
from ehrseq.generate import (
    CodeIndex,
    StructureProcessor,
    decode_sequences,
    draw_demographics,
    fidelity,
    filter_logits,
    privacy,
    read_demographics_csv,
    sample_independent,
    sample_sequences,
    utility,
)
from ehrseq.patient_visits import (
    BOS_ID,
    CODE_TYPES,
    END_ID,
    FIRST_CODE_ID,
    FIRST_TYPE_ID,
    PAD_ID,
    VISIT_END_ID,
    VISIT_ID,
    DemographicEncoder,
    Patients,
    PatientVocab,
    sequence,
)

torch.set_num_threads(1)
CPU = torch.device("cpu")


def check_grammar(seq: list[int], token_types: np.ndarray, max_visits: int) -> None:
    """An independent parser of the visit grammar; raises AssertionError on any violation."""
    assert seq[0] == BOS_ID and seq[-1] == END_ID, seq
    i, n_visits = 1, 0
    while seq[i] != END_ID:
        assert seq[i] == VISIT_ID, (i, seq)
        n_visits += 1
        i += 1
        last_type = -1
        assert FIRST_TYPE_ID <= seq[i] < FIRST_CODE_ID, "a visit opens with a type token"
        while seq[i] != VISIT_END_ID:
            t = seq[i] - FIRST_TYPE_ID
            assert 0 <= t < len(CODE_TYPES) and t > last_type, "types in order, each once"
            last_type, i, codes = t, i + 1, []
            while seq[i] >= FIRST_CODE_ID:
                assert token_types[seq[i]] == t, "a code of another type inside a block"
                assert not codes or seq[i] > codes[-1], "codes increase (no repeats)"
                codes.append(seq[i])
                i += 1
            assert codes, "an empty block"
        i += 1
    assert 1 <= n_visits <= max_visits and i == len(seq) - 1


def test_untrained_model_samples_only_valid_structure():
    train = toy_patients(30, seed=0)
    vocab, demo = PatientVocab.fit(train), DemographicEncoder.fit(train.demographics)
    torch.manual_seed(0)
    model = tiny_model(vocab, max_length=128)  # random weights: the grammar alone keeps samples valid
    demographics = draw_demographics(train.demographics, 40, np.random.default_rng(0))
    config = sampling(temperature=1.5, max_visits=3, batch_size=16)
    seqs = sample_sequences(model, demo.numeric(demographics), demo.categorical(demographics), vocab.token_types(),
                            config, 128, CPU, seed=1)
    assert len(seqs) == 40
    finished = [s for s in seqs if s[-1] == END_ID]
    assert len(finished) >= 30  # a random model may hit the length limit now and then
    for s in finished:
        check_grammar(s, vocab.token_types(), max_visits=3)
    again = sample_sequences(model, demo.numeric(demographics), demo.categorical(demographics), vocab.token_types(),
                             config, 128, CPU, seed=1)
    assert again == seqs  # seeded


def test_grammar_masks_by_hand():
    # tokens: 6 specials, 4 type tokens, codes 10, 11 (type 0) and 12 (type 1)
    types = np.array([-1] * 10 + [0, 0, 1])
    g = StructureProcessor(types, batch_size=1, max_visits=1, device=CPU)

    def allowed():
        return set(np.flatnonzero(g.allowed()[0].numpy()).tolist())

    assert allowed() == {VISIT_ID}  # END needs a visit first
    for token, expected in [(VISIT_ID, {FIRST_TYPE_ID, FIRST_TYPE_ID + 1}),  # types with codes only
                            (FIRST_TYPE_ID, {10, 11}),  # a block needs a code
                            (11, {FIRST_TYPE_ID + 1, VISIT_END_ID}),  # 10 < 11: no going back
                            (VISIT_END_ID, {END_ID}),  # max_visits reached
                            (END_ID, {PAD_ID})]:
        g.update(torch.tensor([token]))
        assert allowed() == expected, token


def test_top_k_and_top_p_keep_the_right_tokens():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    everything = torch.ones_like(logits, dtype=torch.bool)

    def kept(**kw):
        return torch.isfinite(filter_logits(logits, everything, sampling(**kw)))[0].tolist()

    assert kept(top_k=2) == [True, True, False, False]
    assert kept(top_p=0.7) == [True, True, False, False]  # 0.5 < 0.7, 0.8 >= 0.7: stop after the second
    assert kept(top_p=0.5) == [True, False, False, False]
    assert kept(top_p=1.0) == [True] * 4
    grammar = torch.tensor([[False, True, True, True]])
    kept = torch.isfinite(filter_logits(logits, grammar, sampling(top_k=1)))[0].tolist()
    assert kept == [False, True, False, False]  # top-k among the admissible tokens only
    with pytest.raises(ValueError, match="temperature"):
        sampling(temperature=0)


def test_decode_round_trips_sequences():
    train = toy_patients(20, seed=0)
    vocab = PatientVocab.fit(train)
    encoded, _ = vocab.encode(train)
    seqs = [sequence(encoded[s]) for s in train.demographics["subject_id"]]
    seqs[0] = seqs[0][:-1] + [VISIT_ID]  # unfinished: an open visit after the closed one
    decoded, stats = decode_sequences(seqs, vocab, train.demographics)
    assert stats == {"unfinished_sequences": 1, "dropped_without_visits": 0}
    key = ["subject_id", "visit", "code_type", "code"]
    assert decoded.codes.sort_values(key).reset_index(drop=True).equals(
        train.codes[key].sort_values(key).reset_index(drop=True))


def test_independent_baseline_matches_prevalence_and_breaks_dependence():
    train = toy_patients(2000, seed=0)
    demographics = draw_demographics(train.demographics, 2000, np.random.default_rng(0))
    base = sample_independent(train, demographics, np.random.default_rng(1))
    real_prev = train.codes.groupby("code").size() / 2000
    base_prev = base.codes.groupby("code").size() / base.codes[["subject_id", "visit"]].drop_duplicates().shape[0]
    assert np.abs(base_prev.reindex(real_prev.index).fillna(0) - real_prev).max() < 0.03
    # in the real data the medication is M + the smallest diagnosis; independent sampling loses it
    index = CodeIndex(sorted(set(zip(train.codes["code_type"], train.codes["code"]))))
    fid = fidelity(train, base, index, age_bounds=[50], age_codes=[0], n_resamples=20, seed=0)
    assert fid["prevalence_spearman"]["value"] > 0.9
    assert abs(fid["cooccurrence_dependence_pearson"]["value"]) < 0.3
    same = fidelity(train, train, index, age_bounds=[50], age_codes=[0], n_resamples=20, seed=0)
    assert same["cooccurrence_dependence_pearson"]["value"] == pytest.approx(1.0)
    assert same["prevalence_spearman"]["value"] == pytest.approx(1.0)
    assert same["codes_per_visit"]["wasserstein"] == 0 and same["visits_per_patient"]["ks"] == 0


def _relabel(patients: Patients, offset: int) -> Patients:
    return Patients(patients.demographics.assign(subject_id=patients.demographics["subject_id"] + offset),
                    patients.codes.assign(subject_id=patients.codes["subject_id"] + offset))


def diverse_patients(n: int, seed: int, first_id: int = 1) -> Patients:
    """1-2 visits of 6 diagnoses out of 40: practically no two patients coincide."""
    rng = np.random.default_rng(seed)
    rows = [(first_id + i, v, "diagnosis", f"D{c:02d}") for i in range(n) for v in range(rng.integers(1, 3))
            for c in rng.choice(40, 6, replace=False)]
    demo = pd.DataFrame({"subject_id": first_id + np.arange(n), "split": "train", "age": 60.0, "gender": "F",
                         "race": "white"})
    return Patients(demo, pd.DataFrame(rows, columns=["subject_id", "visit", "code_type", "code"]))


def test_privacy_flags_copies_and_not_fresh_samples():
    train, test = diverse_patients(300, seed=0), diverse_patients(150, seed=1, first_id=1000)
    index = CodeIndex([("diagnosis", f"D{c:02d}") for c in range(40)])
    copies = privacy(train, test, _relabel(train, 5000), index, n_resamples=20, seed=0)
    assert copies["exact_patient_copies"] == 1.0 and copies["exact_visit_copies"] == 1.0
    assert copies["exact_patient_copies_test_reference"] == 0
    assert copies["dcr"]["synthetic_to_train_median"] == 0 and copies["dcr"]["ratio"] == 0
    # members sit at distance 0 from their synthetic copy, non-members never do
    assert copies["membership_inference_auc"]["value"] == 1.0
    fresh = privacy(train, test, diverse_patients(300, seed=7, first_id=9000), index, n_resamples=20, seed=0)
    assert fresh["exact_patient_copies"] == 0
    assert abs(fresh["membership_inference_auc"]["value"] - 0.5) < 0.1
    assert 0.9 < fresh["dcr"]["ratio"] < 1.1  # as close to train as unseen real patients are


def test_utility_ratio_is_about_one_for_real_data_and_lower_for_noise():
    train = toy_patients(600, seed=0)
    test = toy_patients(300, seed=1, split="test", first_id=1000)
    index = CodeIndex(sorted(set(zip(train.codes["code_type"], train.codes["code"]))))
    target = index.codes.index(("diagnosis", "D00"))  # D00 present <=> medication M00
    demographics = draw_demographics(train.demographics, 600, np.random.default_rng(0))
    out = utility(train, test, {"same": _relabel(toy_patients(600, seed=5), 7000),
                                "independent": sample_independent(train, demographics, np.random.default_rng(2))},
                  index, target, n_resamples=50, seed=0)
    assert out["trtr_auroc"]["value"] > 0.95
    assert out["same"]["tstr_over_trtr"]["value"] > 0.95
    assert out["independent"]["tstr_over_trtr"]["value"] < 0.8


def test_demographics_csv_is_mapped_and_checked(tmp_path):
    path = tmp_path / "prompts.csv"
    pd.DataFrame({"age": [30, 300, 55], "gender": ["F", "M", "?"], "race": ["ASIAN - KOREAN", "WHITE", "martian"]}
                 ).to_csv(path, index=False)
    demo, stats = read_demographics_csv(str(path), n=10)
    assert demo["age"].tolist() == [30, 90, 55] and demo["race"].tolist() == ["asian", "white", "other"]
    assert demo["subject_id"].tolist() == [1, 2, 3] and stats == {"gender_other": 1, "race_unmapped_to_other": 1}
    pd.DataFrame({"age": ["old"], "gender": ["F"], "race": ["WHITE"]}).to_csv(path, index=False)
    with pytest.raises(ValueError, match="prompts.csv: column 'age' must be numeric; row 0 has 'old'"):
        read_demographics_csv(str(path), n=10)


def test_prevalence_correlation_interval_contains_its_point_value():
    # Resampling patients adds noise to both prevalence vectors, which pulls their
    # correlation down: a percentile interval would lie wholly below the point value.
    from scipy.stats import spearmanr

    from ehrseq.generate import _two_sample_bootstrap

    rng = np.random.default_rng(0)
    prevalence = rng.uniform(0.01, 0.3, 200)
    real, synthetic = rng.random((500, 200)) < prevalence, rng.random((500, 200)) < prevalence

    def stat(ir, is_):
        return spearmanr(real[ir].mean(0), synthetic[is_].mean(0)).statistic

    percentile_high = np.quantile([stat(rng.integers(0, 500, 500), rng.integers(0, 500, 500)) for _ in range(200)],
                                  0.975)
    result = _two_sample_bootstrap(stat, 500, 500, n_resamples=200, seed=0)
    assert percentile_high < result["value"]  # the bias the basic interval corrects
    assert result["ci_low"] <= result["value"] <= result["ci_high"]
