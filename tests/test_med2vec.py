"""TemporalMed2Vec: model, loss, vocabulary, pairs, gensim baseline, evaluation, transfer.

Oracles: hand-computed dot products and weights; brute-force context windows; a toy
population with planted problems (each admission emits the codes of one problem plus
frequent noise codes), whose structure a code model must recover and a shuffled control
must not.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import nn

from conftest import DEMO, run_python
from ehrseq.code_embeddings.evaluation import (
    CodeVectors,
    admission_pairs,
    neighbour_precision,
    neighbours_table,
    next_visit_metrics,
    ontology_metrics,
    planted_metrics,
)
from ehrseq.code_embeddings.pairs import SkipGramBatches, noise_distribution
from ehrseq.code_embeddings.sequences import (
    UNK,
    CodeVocab,
    code_table,
    fit_code_vocab,
    patient_sentences,
    sequence_arrays,
)
from ehrseq.code_embeddings.transfer import code_of_token, init_embedding_from_codes
from ehrseq.code_embeddings.word2vec import train_word2vec
from ehrseq.icd import icd_category, icd_chapter
from ehrseq.io import read_json
from ehrseq.metrics import auroc
from ehrseq.models.med2vec import (
    TemporalMed2Vec,
    embedding_dim_for,
    negative_sampling_loss,
)
from ehrseq.sources.extract import extract
from ehrseq.tasks import SkipGramTask
from ehrseq.training import FitConfig, fit
from ehrseq.vocab import group_icd

torch.set_num_threads(1)
CPU = torch.device("cpu")

# ---------------------------------------------------------------- toy population

PROBLEMS = {f"P{p}": [f"TOY//P{p}C{c}" for c in range(5)] for p in range(6)}
NOISE = [f"NOISE//{n}" for n in range(8)]


def toy_population(n_patients: int, seed: int) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """events, diagnoses, cohort in the interim contract (only the columns code_table reads).

    Each patient has 1-3 admissions 60-400 days apart; each admission has one stay, one
    planted problem, 3-5 of its codes and 4 noise codes spread over its first 3 days,
    and one diagnosis `ICD10//Z00<p>` naming the problem, coded at discharge.
    """
    rng = np.random.default_rng(seed)
    events, diagnoses, cohort = [], [], []
    t0 = pd.Timestamp("2150-01-01")
    for s in range(n_patients):
        subject = 1000 + s
        split = ("train", "val", "test")[s % 3] if s % 3 else "train"
        when = t0
        for a in range(int(rng.integers(1, 4))):
            hadm = subject * 10 + a
            problem = f"P{rng.integers(len(PROBLEMS))}"
            codes = list(rng.choice(PROBLEMS[problem], int(rng.integers(3, 6)), replace=False))
            codes += list(rng.choice(NOISE, 4, replace=False))
            for code in codes:
                events.append({"subject_id": subject, "hadm_id": hadm, "stay_id": hadm, "code": code,
                               "time": when + pd.Timedelta(hours=float(rng.uniform(0, 72)))})
            diagnoses.append({"subject_id": subject, "hadm_id": hadm, "dischtime": when + pd.Timedelta(days=4),
                              "code": f"ICD10//Z00{problem[1]}"})
            cohort.append({"subject_id": subject, "stay_id": hadm, "split": split})
            when += pd.Timedelta(days=float(rng.uniform(60, 400)))
    return pd.DataFrame(events), pd.DataFrame(diagnoses), pd.DataFrame(cohort)


def problem_codes() -> pd.DataFrame:
    return pd.DataFrame([{"problem": p, "kind": "event", "code": c} for p, cs in PROBLEMS.items() for c in cs])


@pytest.fixture(scope="module")
def toy():
    events, diagnoses, cohort = toy_population(300, seed=0)
    train, _ = code_table(events, diagnoses, cohort, ("train",))
    val, _ = code_table(events, diagnoses, cohort, ("val",))
    vocab, _ = fit_code_vocab(train["code"], min_frequency=3)
    noise = noise_distribution(vocab.counts)

    def batches(table, shuffle, **kw):
        kw = {"n_contexts": 6, "horizon_days": 30.0, "n_negatives": 5, "batch_size": 64, **kw}
        return SkipGramBatches(sequence_arrays(table, vocab), noise, shuffle=shuffle, seed=0, **kw)

    return {"events": events, "diagnoses": diagnoses, "cohort": cohort, "train": train, "val": val,
            "vocab": vocab, "batches": batches}


FIT = {"lr": 0.02, "weight_decay": 0.0, "warmup_steps": 0, "schedule": "linear", "min_lr_ratio": 0.1, "grad_clip": None,
           "patience": None, "seed": 0}


def train_toy(toy, tmp_path, time_decay=0.1, epochs=4) -> TemporalMed2Vec:
    torch.manual_seed(0)
    model = TemporalMed2Vec(len(toy["vocab"]), 16, time_decay)
    fit(model, SkipGramTask(), toy["batches"](toy["train"], True), toy["batches"](toy["val"], False),
        FitConfig(epochs=epochs, **FIT), checkpoint_dir=tmp_path / "ckpt", live_dir=tmp_path / "live", device=CPU)
    return model


def vectors_of(model: TemporalMed2Vec, vocab: CodeVocab) -> pd.DataFrame:
    return pd.DataFrame({"code": vocab.codes, "vector": list(model.code_vectors().detach().numpy())})


# ---------------------------------------------------------------- model and loss


def test_forward_is_the_einsum_with_time_decay_and_masked_padding():
    torch.manual_seed(0)
    model = TemporalMed2Vec(vocab_size=12, embedding_dim=4, time_decay=0.5)
    nn.init.normal_(model.context_embeddings.weight)
    target = torch.tensor([1, 2])
    context = torch.tensor([[3, 4, 0], [5, 6, 7]])
    dt = torch.tensor([[0.0, -2.0, 9.0], [1.0, 3.0, 0.5]])
    mask = torch.tensor([[True, True, False], [True, True, True]])
    out = model(target, context, dt, mask)
    u, v = model.code_embeddings.weight, model.context_embeddings.weight
    for b in range(2):
        for c in range(3):
            assert float(out["scores"][b, c]) == pytest.approx(float(u[target[b]] @ v[context[b, c]]), abs=1e-6)
            expected = math.exp(-0.5 * abs(dt[b, c].item())) if mask[b, c] else 0.0
            assert out["weights"][b, c].item() == pytest.approx(expected, abs=1e-6)

    # a padded slot changes nothing: any code there, no gradient reaches it
    negatives = torch.tensor([[[8, 9]] * 3, [[10, 11]] * 3])
    losses = []
    for pad_code in (0, 11):
        model.zero_grad()
        padded = context.clone()
        padded[0, 2] = pad_code
        out = model(target, padded, dt, mask)
        neg = model.score(target, negatives.flatten(1)).view(negatives.shape)
        loss = negative_sampling_loss(out["scores"], neg, out["weights"])
        loss.backward()
        losses.append(loss.item())
        if pad_code == 0:
            assert model.context_embeddings.weight.grad[0].abs().sum() == 0
    assert losses[0] == pytest.approx(losses[1], abs=1e-7)
    with pytest.raises(ValueError, match="time_decay"):
        TemporalMed2Vec(5, 4, -0.1)


def test_score_all_gathered_equals_score_values_and_gradients():
    """The task reads negatives from the [B, V] matrix; it must be the per-row `score` exactly."""
    torch.manual_seed(0)
    codes = torch.randint(0, 9, (6, 7))  # [B, N], repeated codes included
    target = torch.tensor([0, 1, 2, 2, 8, 5])
    grads, values = [], []
    for way in ("rows", "matrix"):
        model = TemporalMed2Vec(vocab_size=9, embedding_dim=4, time_decay=0.1)
        torch.manual_seed(1)
        nn.init.normal_(model.code_embeddings.weight)
        nn.init.normal_(model.context_embeddings.weight)
        scores = model.score(target, codes) if way == "rows" else model.score_all(target).gather(1, codes)
        F.logsigmoid(-scores).sum().backward()
        values.append(scores.detach())
        grads.append([p.grad.clone() for p in model.parameters()])
    assert values[1].shape == (6, 7)
    torch.testing.assert_close(values[0], values[1])
    for rows, matrix in zip(*grads):
        torch.testing.assert_close(rows, matrix)
    # the task takes either way by vocabulary size, with the same loss
    batch = {"target": target, "context": codes[:, :3], "dt": torch.rand(6, 3),
             "context_mask": torch.ones(6, 3, dtype=torch.bool),
             "negatives": codes[:, 3:].reshape(6, 1, 4).expand(6, 3, 4)}  # [B, C, K]
    by_rows = SkipGramTask()
    by_rows.score_all_max_vocab = 0
    assert SkipGramTask().loss(model, batch)[0].item() == pytest.approx(by_rows.loss(model, batch)[0].item(), rel=1e-6)


def test_negative_sampling_loss_by_hand():
    scores = torch.tensor([[2.0, -1.0]])
    negative = torch.tensor([[[0.5, -0.5], [1.0, 0.0]]])
    weights = torch.tensor([[1.0, 0.25]])
    def log_sigmoid(x):
        return -math.log(1 + math.exp(-x))

    per_pair = [-log_sigmoid(2.0) - log_sigmoid(-0.5) - log_sigmoid(0.5),
                -log_sigmoid(-1.0) - log_sigmoid(-1.0) - log_sigmoid(0.0)]
    expected = (per_pair[0] * 1.0 + per_pair[1] * 0.25) / 1.25
    assert negative_sampling_loss(scores, negative, weights).item() == pytest.approx(expected, rel=1e-6)


def test_embedding_dim_rule_of_the_seed():
    assert [embedding_dim_for(n) for n in (10, 999, 1000, 9999, 10000, 70000)] == [64, 64, 128, 128, 256, 256]


def seed_context_softmax_loss(scores, weights):
    """The seed's loss: a softmax over the target's own context slots, no negatives."""
    log_probs = torch.log_softmax(scores.masked_fill(weights == 0, -1e9), dim=-1)
    return -(log_probs * weights).sum() / weights.sum()


def true_vs_shuffled_auroc(model, batch, informative: torch.Tensor) -> float:
    """AUROC of scores of true (target, context) pairs against the same targets with contexts
    of other targets (shuffled rows), over pairs of two `informative` codes (problem codes:
    noise codes sit beside every problem, so their pairs carry no signal either way)."""
    with torch.no_grad():
        perm = torch.randperm(len(batch["target"]), generator=torch.Generator().manual_seed(1))
        scored = []
        for context, mask in ((batch["context"], batch["context_mask"]),
                              (batch["context"][perm], batch["context_mask"][perm])):
            keep = mask & informative[batch["target"]][:, None] & informative[context]
            scored.append(model.score(batch["target"], context)[keep])
        true, shuffled = scored
    y = np.r_[np.ones(len(true)), np.zeros(len(shuffled))]
    s = torch.cat([true, shuffled]).numpy()
    return auroc(y, 1 / (1 + np.exp(-s)))


@pytest.mark.parametrize("loss_name", ["negative_sampling", "seed_softmax"])
def test_loss_learns_co_occurrence_and_the_seeds_does_not(toy, loss_name):
    torch.manual_seed(0)
    model = TemporalMed2Vec(len(toy["vocab"]), 16, time_decay=0.0)
    for table in (model.code_embeddings, model.context_embeddings):  # same random start for both losses
        nn.init.normal_(table.weight, std=0.3)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.02)
    train = toy["batches"](toy["train"], True)
    for _ in range(4):
        for batch in train:
            out = model(batch["target"], batch["context"], batch["dt"], batch["context_mask"])
            if loss_name == "negative_sampling":
                neg = model.score(batch["target"], batch["negatives"].flatten(1)).view(batch["negatives"].shape)
                loss = negative_sampling_loss(out["scores"], neg, out["weights"])
            else:
                loss = seed_context_softmax_loss(out["scores"], out["weights"])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    held_out = next(iter(toy["batches"](toy["val"], False, batch_size=4096)))
    informative = torch.tensor([c.startswith("TOY//") for c in toy["vocab"].codes])
    separation = true_vs_shuffled_auroc(model, held_out, informative)
    if loss_name == "negative_sampling":
        assert separation > 0.75
    else:
        assert abs(separation - 0.5) < 0.1


# ---------------------------------------------------------------- vocabulary, ICD


def test_vocab_unk_once_min_frequency_deterministic_train_only(toy):
    vocab = toy["vocab"]
    assert vocab.codes[0] == UNK and vocab.codes.count(UNK) == 1
    counts = toy["train"]["code"].value_counts()
    assert set(vocab.codes[1:]) == set(counts[counts >= 3].index)
    assert vocab.counts[0] == counts[counts < 3].sum()
    assert all((-a, x) <= (-b, y) for x, a, y, b in zip(vocab.codes[1:], vocab.counts[1:], vocab.codes[2:],
                                                        vocab.counts[2:]))
    shuffled, _ = fit_code_vocab(toy["train"]["code"].sample(frac=1.0, random_state=3), min_frequency=3)
    assert shuffled.codes == vocab.codes
    # a code only val patients have never enters; it maps to <unk>
    events = toy["events"].copy()
    val_subject = toy["cohort"].loc[toy["cohort"]["split"] == "val", "subject_id"].iloc[0]
    extra = events[events["subject_id"] == val_subject].iloc[[0] * 5].assign(code="VALONLY//1")
    train, _ = code_table(pd.concat([events, extra]), toy["diagnoses"], toy["cohort"], ("train",))
    refit, _ = fit_code_vocab(train["code"], min_frequency=1)
    assert "VALONLY//1" not in refit.codes
    assert refit.ids(pd.Series(["VALONLY//1"]))[0] == 0
    with pytest.raises(ValueError, match="once"):
        CodeVocab([UNK, "A//1", UNK], [0, 1, 0])


def test_codes_without_a_system_prefix_are_refused(toy):
    events = toy["events"].copy()
    events.loc[5, "code"] = "50912"
    with pytest.raises(ValueError, match=r"events.parquet: column 'code' .* e.g. '50912'"):
        code_table(events, toy["diagnoses"], toy["cohort"], ("train",))


def test_icd_categories_with_or_without_dots_and_chapters():
    pairs = {"ICD10//E11.65": "ICD10//E11", "ICD10//E1165": "ICD10//E11", "ICD9//250.00": "ICD9//250",
             "ICD9//25000": "ICD9//250", "ICD9//E888.9": "ICD9//E888", "ICD9//E8889": "ICD9//E888",
             "ICD10//E119": "ICD10//E11", "ICD9//V4511": "ICD9//V45", "LAB//50912": "LAB//50912"}
    assert {c: icd_category(c) for c in pairs} == pairs
    assert group_icd(pd.Series(list(pairs))).tolist() == list(pairs.values())
    assert icd_chapter("ICD9//4019") == "ICD9//390-459"
    assert icd_chapter("ICD9//0389") == "ICD9//001-139"
    assert icd_chapter("ICD9//E8889") == "ICD9//E" and icd_chapter("ICD9//V4511") == "ICD9//V"
    assert icd_chapter("ICD10//E119") == "ICD10//E00-E99"  # a diabetes code, not an ICD-9 external cause
    assert icd_chapter("ICD10//D649") == "ICD10//D50-D99" and icd_chapter("ICD10//D487") == "ICD10//C00-D49"
    assert icd_chapter("ICD10//O9A1") == "ICD10//O00-O9Z" and icd_chapter("ICD10//T17") == "ICD10//S00-T99"
    assert icd_chapter("LAB//50912") is None


# ---------------------------------------------------------------- sequences and pairs


def test_code_table_first_occurrence_per_stay_and_diagnoses_at_discharge():
    t = pd.Timestamp("2150-01-01")
    events = pd.DataFrame({"subject_id": [1, 1, 1, 2], "hadm_id": [10, 10, 10, 20], "stay_id": [100, 100, 100, 200],
                           "time": [t + pd.Timedelta(hours=h) for h in (5, 1, 3, 0)],
                           "code": ["LAB//1", "LAB//1", "NDC//2", "LAB//1"]})
    diagnoses = pd.DataFrame({"subject_id": [1, 1], "hadm_id": [10, 10], "dischtime": [t + pd.Timedelta(days=2)] * 2,
                              "code": ["ICD9//4019", "ICD9//4019"]})
    cohort = pd.DataFrame({"subject_id": [1, 2], "split": ["train", "test"]})
    table, stats = code_table(events, diagnoses, cohort, ("train",))
    assert table["code"].tolist() == ["LAB//1", "NDC//2", "ICD9//4019"]
    assert table["time"].tolist() == [t + pd.Timedelta(hours=1), t + pd.Timedelta(hours=3), t + pd.Timedelta(days=2)]
    assert stats["event_repeats_within_stay"] == 1 and stats["diagnosis_repeats_within_admission"] == 1
    vocab, _ = fit_code_vocab(table["code"], 1)
    arrays = sequence_arrays(table, vocab)
    assert arrays.days.tolist() == pytest.approx([0.0, 2 / 24, 2 - 1 / 24])  # days, from the first code
    assert patient_sentences(table, vocab) == [["LAB//1", "NDC//2", "ICD9//4019"]]
    # grouping: two ICD-9 codes of category 401, one with a dot, are one occurrence of ICD9//401
    grouped_dx = diagnoses.assign(code=["ICD9//401.9", "ICD9//4011"])
    grouped, _ = code_table(events, grouped_dx, cohort, ("train",), icd_grouping=True)
    assert grouped["code"].tolist() == ["LAB//1", "NDC//2", "ICD9//401"]
    # codes at one time come in a deterministic order that is not the alphabet (a position
    # window would learn the alphabet), whatever the input row order
    many = pd.DataFrame({"subject_id": 1, "hadm_id": 10, "dischtime": t,
                         "code": [f"ICD9//{400 + i}" for i in range(20)]})
    orders = [code_table(events.iloc[:0], many.sample(frac=1.0, random_state=r), cohort, ("train",))[0]["code"].tolist()
              for r in (0, 1)]
    assert orders[0] == orders[1] and orders[0] != sorted(orders[0]) and sorted(orders[0]) == sorted(many["code"])
    bad = cohort.assign(split=["train", "train"])
    with pytest.raises(ValueError, match="several splits"):
        code_table(events, diagnoses, pd.concat([bad, cohort.iloc[[0]].assign(split="test")]), ("train",))


def test_contexts_are_same_patient_within_horizon_never_the_target(toy):
    arrays = sequence_arrays(toy["train"], toy["vocab"])
    h, C = 30.0, 6
    batches = toy["batches"](toy["train"], False, horizon_days=h, n_contexts=C)
    position = batches.targets[:400]
    batch = batches.batch(position, torch.Generator().manual_seed(0))
    for row, i in enumerate(position.tolist()):
        window = [j for j in range(len(arrays.days)) if j != i and arrays.patient[j] == arrays.patient[i]
                  and abs(arrays.days[j] - arrays.days[i]) <= h]  # brute force
        mask = batch["context_mask"][row]
        assert int(mask.sum()) == min(C, len(window))
        allowed = {(int(arrays.tokens[j]), round(abs(arrays.days[j] - arrays.days[i]), 4)) for j in window}
        got = {(int(c), round(float(d), 4)) for c, d, m in zip(batch["context"][row], batch["dt"][row], mask) if m}
        assert got <= allowed
        if len(window) <= C:
            assert got == allowed
    assert batch["negatives"].shape == (400, C, 5)
    # validation batches are the same every pass; training batches differ
    first, second = next(iter(batches)), next(iter(batches))
    assert all(torch.equal(first[k], second[k]) for k in first)
    train = toy["batches"](toy["train"], True)
    torch.manual_seed(0)
    a = next(iter(train))
    assert not torch.equal(a["target"], next(iter(train))["target"])
    assert len(train) == math.ceil(len(train.targets) / 64)


def test_noise_distribution_is_unigram_to_the_three_quarters():
    p = noise_distribution([0, 1, 16])
    assert p.tolist() == pytest.approx([0.0, 1 / 9, 8 / 9])


# ---------------------------------------------------------------- end to end on planted problems


def test_temporal_med2vec_recovers_planted_problems_and_beats_chance(toy, tmp_path):
    model = train_toy(toy, tmp_path)
    cv = CodeVectors(vectors_of(model, toy["vocab"]))
    planted = planted_metrics(cv, problem_codes(), "", icd_grouping=False, k=4, seed=0)
    p = planted["precision_at_k"]
    assert p["codes"] == 30 and p["max_achievable"] == 1.0
    assert p["value"] > 0.6 > 5 * p["random"]  # misses: each problem's diagnosis code sits among its codes
    nmi = planted["kmeans_nmi"]
    assert nmi["value"] > 0.9 and nmi["shuffled_problems"] < 0.45  # chance NMI of 30 codes in 6 clusters is ~0.3
    # a model never trained has no such structure
    untrained = CodeVectors(vectors_of(TemporalMed2Vec(len(toy["vocab"]), 16, 0.1), toy["vocab"]))
    assert planted_metrics(untrained, problem_codes(), "", icd_grouping=False, k=4, seed=0)[
        "precision_at_k"]["value"] < 0.5
    undefined = planted_metrics(cv, None, "no truth here", icd_grouping=False, k=4, seed=0)
    assert undefined["precision_at_k"] == {"value": None, "reason": "no truth here"}


def paired_population(n_patients: int, seed: int) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """One stay per patient with a pair of problems (P0, P1), (P2, P3) or (P4, P5): 4-5 codes
    of one of them within 3 hours, then, 2 days later, 4-5 codes of its partner within 3
    hours (which comes first at random). A problem's codes meet their partner's exactly as
    often as their own: only the time between codes tells the two problems apart."""
    rng = np.random.default_rng(seed)
    events, cohort = [], []
    t0 = pd.Timestamp("2150-01-01")
    for s in range(n_patients):
        subject = 1000 + s
        pair = 2 * int(rng.integers(len(PROBLEMS) // 2)) + np.array([0, 1])
        for block, problem in enumerate(rng.permutation(pair)):
            for code in rng.choice(PROBLEMS[f"P{problem}"], int(rng.integers(4, 6)), replace=False):
                events.append({"subject_id": subject, "hadm_id": subject, "stay_id": subject, "code": code,
                               "time": t0 + pd.Timedelta(hours=48 * block + float(rng.uniform(0, 3)))})
        cohort.append({"subject_id": subject, "stay_id": subject, "split": ("train", "val")[s % 5 == 0]})
    diagnoses = pd.DataFrame(columns=["subject_id", "hadm_id", "dischtime", "code"])
    return pd.DataFrame(events), diagnoses.astype({"dischtime": "datetime64[ns]"}), pd.DataFrame(cohort)


def test_time_decay_separates_problems_that_only_time_tells_apart(tmp_path):
    """The oracle for lambda: on `paired_population`, with a 3-day horizon, lambda = 0 sees
    a problem's codes beside its partner's as often as beside its own (4 own among 9
    equally close codes: precision@4 about 4/9); lambda = 4 per day (a context 2 days away
    weighs e^-8) sees only its own problem."""
    events, diagnoses, cohort = paired_population(400, seed=0)
    tables = {split: code_table(events, diagnoses, cohort, (split,))[0] for split in ("train", "val")}
    vocab, _ = fit_code_vocab(tables["train"]["code"], min_frequency=3)
    noise = noise_distribution(vocab.counts)
    precision = {}
    for decay in (4.0, 0.0):
        batches = {split: SkipGramBatches(sequence_arrays(table, vocab), noise, n_contexts=6, horizon_days=3.0,
                                          n_negatives=5, batch_size=64, shuffle=split == "train", seed=0)
                   for split, table in tables.items()}
        torch.manual_seed(0)
        model = TemporalMed2Vec(len(vocab), 16, decay)
        fit(model, SkipGramTask(), batches["train"], batches["val"], FitConfig(epochs=4, **FIT),
            checkpoint_dir=tmp_path / f"ckpt{decay}", live_dir=tmp_path / f"live{decay}", device=CPU)
        cv = CodeVectors(vectors_of(model, vocab))
        p = planted_metrics(cv, problem_codes(), "", icd_grouping=False, k=4, seed=0)["precision_at_k"]
        assert p["codes"] == 30 and p["max_achievable"] == 1.0
        precision[decay] = p["value"]
    assert precision[4.0] > 0.9  # measured 1.0
    assert precision[0.0] < 0.6  # measured 0.44, the 4/9 of a ranking blind to time


def test_gensim_baseline_is_reproducible_and_learns_the_same_problems(toy):
    sentences = patient_sentences(toy["train"], toy["vocab"])
    kw = {"vector_size": 16, "window": 3, "negative": 5, "epochs": 5, "seed": 0}
    a, b = train_word2vec(sentences, **kw), train_word2vec(sentences, **kw)
    assert set(a["code"]) == set(toy["vocab"].codes) - ({UNK} if toy["vocab"].counts[0] == 0 else set())
    assert all(np.array_equal(x, y) for x, y in zip(a["vector"], b["vector"]))
    p = planted_metrics(CodeVectors(a), problem_codes(), "", icd_grouping=False, k=4, seed=0)["precision_at_k"]
    assert p["value"] > 2 * p["random"]


# ---------------------------------------------------------------- evaluation oracles


def axis_vectors(assign: dict[str, int], dim: int = 4, jitter: float = 0.0, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for code, axis in assign.items():
        v = np.eye(dim)[axis] + jitter * rng.standard_normal(dim)
        rows.append({"code": code, "vector": v.astype(np.float32)})
    return pd.DataFrame(rows)


def test_neighbour_precision_random_and_cap_by_hand():
    # groups {a1,a2,a3} on axis 0, {b1,b2} on axis 1, x alone on axis 2 (unlabelled)
    frame = axis_vectors({"a1": 0, "a2": 0, "a3": 0, "b1": 1, "b2": 1, "x": 2}, jitter=0.01)
    labels = {c: frozenset([c[0]]) for c in ("a1", "a2", "a3", "b1", "b2")}
    cv = CodeVectors(frame)
    out = neighbour_precision(cv, labels, cv.codes, k=2)
    # a*: both neighbours are a's (1.0); b*: one b then a non-b (0.5)
    assert out["value"] == pytest.approx((3 * 1.0 + 2 * 0.5) / 5)
    assert out["random"] == pytest.approx((3 * 2 / 5 + 2 * 1 / 5) / 5)
    assert out["max_achievable"] == pytest.approx((3 * 1.0 + 2 * 0.5) / 5)
    assert neighbour_precision(cv, labels, cv.codes, k=6)["value"] is None  # pool not larger than k


def test_ontology_metrics_chapter_and_category():
    frame = axis_vectors({"ICD9//4019": 0, "ICD9//4011": 0, "ICD9//41401": 0, "ICD9//25000": 1, "ICD9//25001": 1,
                          "LAB//1": 0}, jitter=0.01)
    out = ontology_metrics(CodeVectors(frame), icd_grouping=False, k=1)
    assert out["chapter_precision_at_k"]["per_system"]["ICD9"]["pool"] == 5  # the lab code is no diagnosis
    assert out["chapter_precision_at_k"]["value"] == 1.0
    assert out["chapter_precision_at_k"]["per_system"]["ICD10"]["value"] is None  # no ICD-10 codes here
    # 4019 and 4011 share category 401, 41401 is alone in 414 (unlabelled peers count as misses)
    assert out["category_precision_at_k"]["value"] == pytest.approx(
        np.mean([ok for ok in _nearest_same_category(frame)]))
    assert ontology_metrics(CodeVectors(frame), icd_grouping=True, k=1)["category_precision_at_k"]["value"] is None


def _nearest_same_category(frame):
    cv = CodeVectors(frame)
    pool = cv.rows([c for c in cv.codes if c.startswith("ICD")])
    for q in pool:
        sims = {p: float(cv.vectors[q] @ cv.vectors[p]) for p in pool if p != q}
        best = max(sims, key=sims.get)
        yield float(icd_category(cv.codes[q]) == icd_category(cv.codes[best]))


def test_next_visit_recall_by_hand():
    frame = axis_vectors({"LAB//1": 0, "ICD9//4019": 0, "ICD9//25000": 1, "ICD9//486": 2, "ICD9//5849": 3})
    t = pd.Timestamp("2150-01-01")
    table = pd.DataFrame({
        "subject_id": [1, 1, 1, 1], "hadm_id": [10, 10, 11, 11],
        "time": [t, t + pd.Timedelta(days=2), t + pd.Timedelta(days=100), t + pd.Timedelta(days=102)],
        "code": ["LAB//1", "ICD9//4019", "ICD9//4019", "ICD9//486"],
        "source": ["event", "diagnosis", "diagnosis", "diagnosis"],
    })
    pairs = admission_pairs(table)
    assert pairs == [(["LAB//1", "ICD9//4019"], ["ICD9//4019", "ICD9//486"])]
    counts = {"ICD9//25000": 9, "ICD9//486": 5, "ICD9//4019": 1}
    out = next_visit_metrics(CodeVectors(frame), pairs, counts, ks=[1, 2])
    # similarity ranks 4019 first (same axis): 1 of 2 found at k = 1; then ties in pool order
    assert out["similarity"]["recall_at_1"] == 0.5
    assert out["train_frequency"]["recall_at_1"] == 0.0 and out["train_frequency"]["recall_at_2"] == 0.5


def test_neighbours_table_lists_the_most_frequent_codes(toy, tmp_path):
    frame = axis_vectors({"A//1": 0, "A//2": 0, "B//1": 1, "B//2": 1, UNK: 0}, jitter=0.01)
    table = neighbours_table(CodeVectors(frame), {"B//1": 5, "A//1": 9, "A//2": 1}, n_codes=2, k=2)
    assert table["code"].unique().tolist() == ["A//1", "B//1"]
    assert table[table["code"] == "A//1"]["neighbour"].iloc[0] == "A//2"
    assert UNK not in set(table["neighbour"])


# ---------------------------------------------------------------- transfer to the LSTM


def test_init_embedding_maps_shared_codes_and_value_bins_only():
    torch.manual_seed(0)
    tokens = ["<pad>", "<unk>", "<bos>", "LAB//1", "LAB//1//Q3", "NDC//9", "AGE//60-69"]
    embedding = nn.Embedding(len(tokens), 4, padding_idx=0)
    before = embedding.weight.detach().clone()
    codes = pd.DataFrame({"code": ["<unk>", "LAB//1", "NDC//9", "ITEM//5"],
                          "vector": [np.full(4, 9.0, np.float32), np.array([1, 2, 3, 4], np.float32),
                                     np.array([-1, 0, 1, 0], np.float32), np.ones(4, np.float32)]})
    stats = init_embedding_from_codes(embedding, tokens, codes)
    assert stats["initialised"] == 3 and stats["from_value_bins"] == 1 and stats["distinct_codes_used"] == 2
    w = embedding.weight.detach()
    for row in (0, 1, 2, 6):
        assert torch.equal(w[row], before[row])
    assert torch.equal(w[3], w[4])
    # one scale for all rows: directions (cosines) of the code vectors are kept
    assert F.cosine_similarity(w[3], torch.tensor([1.0, 2, 3, 4]), dim=0) == pytest.approx(1.0)
    assert w[5] / w[5].abs().max() == pytest.approx(torch.tensor([-1.0, 0, 1, 0]))
    assert code_of_token("LAB//1//Q3", {"LAB//1"}) == "LAB//1" and code_of_token("<unk>", {"<unk>"}) is None
    with pytest.raises(ValueError, match="embedding_dim"):
        init_embedding_from_codes(nn.Embedding(len(tokens), 8), tokens, codes)


# ---------------------------------------------------------------- the stages on real data (MIMIC-III demo)


def test_stages_on_the_mimic3_demo_leave_planted_metrics_undefined(tmp_path):
    """extract -> train_med2vec -> evaluate_med2vec on the public MIMIC-III demo (no truth)."""
    if not DEMO.is_dir():
        pytest.skip(f"MIMIC-III demo not found at {DEMO}")
    interim = tmp_path / "data" / "interim"
    interim.mkdir(parents=True)
    extract("mimic3", DEMO, interim / "events.parquet", interim / "cohort.parquet", interim / "diagnoses.parquet",
            observation_hours=48.0, min_age=18, split_fractions={"train": 0.7, "val": 0.15, "test": 0.15}, seed=0)
    repo = Path(__file__).resolve().parents[1]
    params = yaml.safe_load((repo / "params.yaml").read_text())
    m2v = params["train"]["med2vec"]
    m2v["vocab"]["min_frequency"] = 2
    m2v["fit"].update(epochs=1, patience=None)
    m2v["pairs"]["batch_size"] = 256
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    for stage in ("train_med2vec", "evaluate_med2vec"):
        run_python(tmp_path, repo / "stages" / f"{stage}.py")
    vectors = pd.read_parquet(tmp_path / "models/med2vec/embeddings.parquet")
    assert vectors["code"].iloc[0] == UNK and len(vectors["vector"].iloc[0]) == 64
    report = read_json(tmp_path / "reports/metrics/med2vec.json")
    assert set(report["models"]) == {"med2vec", "med2vec_lambda0", "gensim"}
    for model in report["models"].values():
        assert model["planted"]["precision_at_k"]["value"] is None
        assert "problem_codes.parquet not found" in model["planted"]["precision_at_k"]["reason"]
        assert model["ontology"]["chapter_precision_at_k"]["per_system"]["ICD9"]["value"] is not None
    neighbours = pd.read_csv(tmp_path / "reports/med2vec/neighbours.csv")
    assert neighbours.groupby("code").size().eq(10).all()
