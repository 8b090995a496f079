"""prompt_bart: patient visit data, vocabulary, corruption, the model with prompts, and
that reconstruction from a fully masked input is not a copy.

Toy patients with a planted structure (`toy_patients`) live in conftest.py.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import CODES_PER_VISIT, corruption, tiny_model, toy_patients
from ehrseq.data import token_loader
from ehrseq.patient_visits import (
    BOS_ID,
    END_ID,
    FIRST_CODE_ID,
    FIRST_TYPE_ID,
    MASK_ID,
    PAD_ID,
    VISIT_END_ID,
    VISIT_ID,
    Corruption,
    DemographicEncoder,
    PatientDataset,
    PatientVocab,
    _scored_visit,
    build_patients,
    collate_patients,
    cross_type_examples,
    gender_group,
    independent_nll_by_type,
    longitudinal_examples,
    patient_examples,
    race_group,
    sequence,
)
from ehrseq.tasks import PromptBartTask
from ehrseq.training import FitConfig, fit, predict

torch.set_num_threads(1)
CPU = torch.device("cpu")

# ------------------------------------------------------------------ demographics and visits


def test_race_and_gender_groups_are_an_explicit_table_with_counted_fallbacks():
    race = pd.Series(["WHITE - RUSSIAN", "BLACK/CAPE VERDEAN", "HISPANIC/LATINO - PUERTO RICAN", "ASIAN - KOREAN",
                      "UNABLE TO OBTAIN", None, "martian", " white "])
    groups, unmapped = race_group(race)
    assert groups.tolist() == ["white", "black", "hispanic", "asian", "unknown", "unknown", "other", "white"]
    assert unmapped == 1
    genders, other = gender_group(pd.Series(["F", "m", None, "X"]))
    assert genders.tolist() == ["F", "M", "other", "other"] and other == 2


def _interim():
    """Three cohort patients: 1 has two admissions (the second outside the cohort, diagnoses
    only), 2 has no codes at all, 3 has no age."""
    t = pd.Timestamp
    cohort = pd.DataFrame({
        "subject_id": [1, 2, 3], "hadm_id": [11, 21, 31], "stay_id": [111, 211, 311],
        "intime": [t("2150-01-02"), t("2150-01-01"), t("2150-01-01")], "age": [95.0, 40.0, np.nan],
        "gender": ["F", "M", "F"], "race": ["WHITE", "ASIAN", "OTHER"], "split": ["train", "train", "test"],
    })
    diagnoses = pd.DataFrame({
        "subject_id": [1, 1, 1, 3], "hadm_id": [11, 12, 11, 31],
        "admittime": [t("2150-01-01"), t("2149-06-01"), t("2150-01-01"), t("2150-01-01")],
        "age": [95.0, 94.0, 95.0, np.nan], "code": ["ICD9//1", "ICD9//2", "ICD9//3", "ICD9//1"],
    })
    events = pd.DataFrame({
        "hadm_id": [11, 11, 11, 11, 11], "stay_id": [111] * 5,
        "event_type": ["lab", "lab", "prescription", "procedure", "microbiology"],
        "code": ["LAB//1", "LAB//2", "NDC//9", "ITEM//5", "MICRO//1"],
        "flag": ["abnormal", None, None, None, "positive"],
    })
    return cohort, diagnoses, events


def test_build_patients_orders_visits_types_labs_and_counts_drops():
    patients, stats = build_patients(*_interim())
    assert stats["dropped_no_visits"] == 1 and stats["dropped_no_demographics"] == 1
    assert patients.demographics["subject_id"].tolist() == [1]
    demo = patients.demographics.iloc[0]
    assert demo["age"] == 90.0 and demo["gender"] == "F" and demo["race"] == "white"  # 94 at first admission, capped
    codes = patients.codes
    # admission 12 (2149) comes first; it has diagnoses only
    assert codes[codes["visit"] == 0]["code"].tolist() == ["ICD9//2"]
    second = codes[codes["visit"] == 1]
    assert set(zip(second["code_type"], second["code"])) == {
        ("diagnosis", "ICD9//1"), ("diagnosis", "ICD9//3"), ("lab", "LAB//1"), ("medication", "NDC//9"),
        ("procedure", "ITEM//5")}  # the normal lab and the microbiology event are not codes


def test_vocabulary_from_train_only_and_sequence_layout():
    train, test = toy_patients(50, seed=0), toy_patients(5, seed=1, split="test", first_id=100)
    test.codes.loc[0, "code"] = "D99"  # a code train never saw
    vocab = PatientVocab.fit(train)
    assert "D99" not in vocab.codes and len(vocab) == FIRST_CODE_ID + len(vocab.codes)
    encoded, stats = vocab.encode(test)
    assert stats["codes_unknown_to_vocab"] == 1
    visits = encoded[100]
    seq = sequence(visits)
    names = vocab.token_names()
    assert seq[0] == BOS_ID and seq[-1] == END_ID and names[END_ID] == "<end>" and names[VISIT_END_ID] == "</v>"
    assert seq[1] == VISIT_ID and seq[2] == FIRST_TYPE_ID and seq[-2] == VISIT_END_ID
    codes = [t for t in seq if t >= FIRST_CODE_ID]
    diag = [t for t in codes if names[t].startswith("D")]
    assert diag == sorted(diag) and len(codes) == 3  # 2 known diagnoses (D99 dropped) + 1 medication
    model = tiny_model(vocab)
    assert model.bart.config.eos_token_id == END_ID and model.bart.config.pad_token_id == PAD_ID


# ------------------------------------------------------------------ corruption and views


def test_corruption_modes():
    vocab = PatientVocab.fit(toy_patients(50, seed=0))
    visits = next(iter(vocab.encode(toy_patients(1, seed=3))[0].values())) * 2  # the same visit twice
    rng = np.random.default_rng(0)
    none = dict.fromkeys(("mask_rate", "infill_rate", "infill_lambda", "shuffle_rate", "future_rate", "type_rate",
                          "full_mask_rate"), 0)
    assert corruption(**none)(visits, rng) == sequence(visits)  # no corruption is a copy
    # every code masked: no code survives
    assert not [t for t in corruption(**{**none, "mask_rate": 1.0})(visits, rng) if t >= FIRST_CODE_ID]
    assert corruption(full_mask_rate=1.0, future_rate=0, type_rate=0)(visits, rng) == [BOS_ID, MASK_ID, END_ID]
    future = corruption(**{**none, "future_rate": 1.0})
    assert future(visits, rng) == sequence(visits[:1])[:-1] + [MASK_ID, END_ID]  # k >= 1: visit 0 shown
    assert future(visits[:1], rng) == sequence(visits[:1])  # one visit: no future to mask, (no) token noise
    typed = corruption(**{**none, "type_rate": 1.0})(visits, rng)
    assert typed.count(MASK_ID) == 1 and typed != sequence(visits)  # one block is `<type> <mask>`
    with pytest.raises(ValueError, match="future_rate"):
        corruption(future_rate=0.5, type_rate=0.5, full_mask_rate=0.2)


def test_evaluation_views_score_the_right_targets():
    vocab = PatientVocab.fit(toy_patients(50, seed=0))
    visits = next(iter(vocab.encode(toy_patients(1, seed=3))[0].values())) * 2
    [(enc, seq, types)] = longitudinal_examples(visits)
    assert enc == sequence(visits[:1])[:-1] + [MASK_ID, END_ID]
    assert len(types) == len(seq) - 1
    scored = [seq[j + 1] for j, t in enumerate(types) if t == 0]
    # diagnosis targets of visit 1: its 3 codes and the <med> token that closes the block
    assert scored[:3] == list(visits[1][0][1]) and scored[3] == FIRST_TYPE_ID + 1
    assert [seq[j + 1] for j, t in enumerate(types) if t == 1] == [*visits[1][1][1], VISIT_END_ID]
    cross = cross_type_examples(visits)
    assert len(cross) == 4  # 2 visits x 2 blocks
    enc, seq, types = cross[1]  # the medication block of visit 0 masked
    assert seq == sequence(visits) and enc.count(MASK_ID) == 1
    assert [seq[j + 1] for j, t in enumerate(types) if t >= 0] == [*visits[0][1][1], VISIT_END_ID]


def test_independent_baseline_nll_is_the_set_probability():
    train = toy_patients(200, seed=0)
    vocab = PatientVocab.fit(train)
    p = np.array(vocab.visit_counts) / vocab.n_visits
    diag = np.flatnonzero(np.array(vocab.code_types) == 0)
    present = diag[[1, 4]]  # a block holding the 2nd and 5th most frequent diagnoses
    by_hand = np.log(p[present]).sum() + np.log1p(-np.delete(p[diag], [1, 4])).sum()
    by_hand -= np.log(1 - np.prod(1 - p[diag]))
    labels = np.array([[FIRST_CODE_ID + present[0], FIRST_CODE_ID + present[1], FIRST_TYPE_ID + 1, PAD_ID]])
    nll = independent_nll_by_type(vocab, labels, np.array([[0, 0, 0, -1]]))
    assert nll.shape == (1, 4) and math.isclose(nll[0, 0], -by_hand, rel_tol=1e-9) and nll[0, 1] == 0
    # over every subset of a 3-code type the probabilities sum to one
    small = PatientVocab(["a", "b", "c"], [0, 0, 0], [5, 3, 1], [8, 0, 0, 0], 10)
    total = 0.0
    for mask in range(1, 8):
        ids = [FIRST_CODE_ID + i for i in range(3) if mask >> i & 1]
        row = np.array([[*ids, VISIT_END_ID]])
        total += np.exp(-independent_nll_by_type(small, row, np.zeros_like(row))[0, 0])
    assert math.isclose(total, 1.0, rel_tol=1e-9)


# ------------------------------------------------------------------ model


def _toy_batch():
    """The vocabulary of 40 toy patients and a batch of 4 of them (fixed corruption)."""
    train = toy_patients(40, seed=0)
    vocab, demo = PatientVocab.fit(train), DemographicEncoder.fit(train.demographics)
    encoded, _ = vocab.encode(train)
    examples, _ = patient_examples(encoded, train.demographics, demo, 64, "fixed", corruption(), seed=0)
    return vocab, collate_patients(examples[:4])


def test_attention_dropout_is_its_own_parameter():
    """With `dropout` 0, training forwards repeat only when `attention_dropout` is 0 too."""
    vocab, batch = _toy_batch()
    args = [batch[k] for k in ("input_ids", "attention_mask", "decoder_input_ids", "decoder_attention_mask",
                               "x_num", "x_cat")]
    for attention_dropout, repeats in ((0.0, True), (0.5, False)):
        torch.manual_seed(0)
        model = tiny_model(vocab, attention_dropout=attention_dropout).train()
        first, second = (model(*args)["logits"] for _ in range(2))
        assert torch.equal(first, second) == repeats, attention_dropout


def test_prompts_reach_encoder_and_decoder():
    vocab, batch = _toy_batch()
    torch.manual_seed(0)
    model = tiny_model(vocab, prompt_length=3).eval()
    args = [batch[k] for k in ("input_ids", "attention_mask", "decoder_input_ids", "decoder_attention_mask")]
    base = model(*args, batch["x_num"], batch["x_cat"])["logits"]
    assert base.shape == (*batch["decoder_input_ids"].shape, len(vocab))
    older = model(*args, batch["x_num"] + 1.0, batch["x_cat"])["logits"]
    assert not torch.allclose(base, older)
    # the decoder prompt alone changes the output: swap only the decoder's demographics
    hidden, mask = model.encode(batch["input_ids"], batch["attention_mask"], batch["x_num"], batch["x_cat"])
    swapped, _ = model.decode(batch["decoder_input_ids"], hidden, mask, batch["x_num"], 1 - batch["x_cat"].clamp(max=1),
                              batch["decoder_attention_mask"])
    assert not torch.allclose(base, swapped)


def _train(vocab, demo, train, val, noise: Corruption, tmp_path, epochs: int):
    def dataset(part, view):
        encoded, _ = vocab.encode(part)
        examples, _ = patient_examples(encoded, part.demographics, demo, 64, view, noise, seed=1)
        return PatientDataset(examples, noise if view == "train" else None)

    torch.manual_seed(0)
    model = tiny_model(vocab)
    loaders = [token_loader(dataset(train, "train"), 32, device=CPU, seed=0, collate_fn=collate_patients),
               token_loader(dataset(val, "fixed"), 64, device=CPU, shuffle=False, collate_fn=collate_patients)]
    config = FitConfig(epochs=epochs, lr=3e-3, weight_decay=0.0, warmup_steps=5, schedule="cosine", min_lr_ratio=0.1,
                       grad_clip=1.0, patience=None, seed=0)
    fit(model, PromptBartTask(), *loaders, config, checkpoint_dir=tmp_path / "ckpt", live_dir=tmp_path / "live",
        device=CPU)
    return model


def _code_perplexity(model, vocab, demo, part, encoder_ids) -> float:
    """Perplexity of the diagnosis-block targets (3 codes + closing token), given `encoder_ids(seq)`."""
    encoded, _ = vocab.encode(part)
    examples, _ = patient_examples(encoded, part.demographics, demo, 64, "train")
    items = []
    for e in examples:
        _, types = _scored_visit(e["visits"][0], lambda block: block == 0)  # the diagnosis block
        items.append({**e, "encoder": encoder_ids(e["sequence"]), "types": types + [-1]})  # END's target: not scored
    loader = token_loader(PatientDataset(items), 64, device=CPU, shuffle=False, collate_fn=collate_patients)
    p = predict(model, PromptBartTask(), loader, CPU)
    assert (p["n_tokens"] == CODES_PER_VISIT + 1).all()
    return float(np.exp(p["nll_sum"].sum() / p["n_tokens"].sum()))


def test_reconstruction_from_a_fully_masked_input_is_not_a_copy(tmp_path):
    """The seed fed the labels to the encoder, so its model copied and its perplexity was ~1.

    Trained on corrupted copies, the model rebuilds an intact input better than a masked
    one (it reads the encoder), but from the fully masked input it can do no better than
    the planted data's entropy: 3 codes out of 12 with no information, oracle perplexity
    220 ** (1/4) ~ 3.85 on held-out patients. Beating it would mean the labels leak
    (into the encoder, or through the decoder's causal mask).
    """
    train, val = toy_patients(400, seed=0), toy_patients(100, seed=1, split="val", first_id=1000)
    held_out = toy_patients(200, seed=2, split="test", first_id=2000)
    vocab, demo = PatientVocab.fit(train), DemographicEncoder.fit(train.demographics)
    noise = corruption(mask_rate=0.3, infill_lambda=2.0, future_rate=0.2, type_rate=0.3)
    batch = collate_patients([PatientDataset(patient_examples(vocab.encode(train)[0], train.demographics, demo, 64,
                                                              "train")[0], noise)[i] for i in range(32)])
    encoder_rows = [r[r != PAD_ID].tolist() for r in batch["input_ids"]]
    sequences = [[BOS_ID, *r[r != PAD_ID].tolist()] for r in batch["labels"]]
    assert sum(e != s for e, s in zip(encoder_rows, sequences)) >= 24  # the encoder rarely sees the labels

    model = _train(vocab, demo, train, val, noise, tmp_path, epochs=12)
    oracle = 220 ** 0.25
    masked = _code_perplexity(model, vocab, demo, held_out, lambda seq: [BOS_ID, MASK_ID, END_ID])
    intact = _code_perplexity(model, vocab, demo, held_out, lambda seq: list(seq))
    assert masked > 0.95 * oracle, f"fully masked perplexity {masked:.2f} beats the oracle {oracle:.2f}"
    # uniform over 12 codes and the closing token would be ~13
    assert masked < 6, f"fully masked perplexity {masked:.2f}: the model learned nothing"
    assert intact < 0.9 * masked, f"intact {intact:.2f} vs masked {masked:.2f}: the encoder is not used"
