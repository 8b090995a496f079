"""Explaining survival_lstm at the cutoff: (visit, code) units named by event rows, the
attributed logit(1 - S(horizon)), event removal checked against the stay rebuilt by hand,
LayerIG's completeness against the all-empty stay, and the planted code found."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from ehrseq.data import token_loader
from ehrseq.explain.explainers import SurvivalExplainer, risk_logit
from ehrseq.explain.inputs import Truth
from ehrseq.explain.run import ExplainConfig, explain_split
from ehrseq.explain.sanity import RelabelledDataset, parameter_randomisation
from ehrseq.explain.visits import SurvivalEventDataset, collate_survival_events, unit_rows, unit_truth
from ehrseq.models import build_model
from ehrseq.survival import kaplan_meier_hazards, landmark_logits, survival_curve
from ehrseq.survival_data import SurvivalDataset, collate_visits
from ehrseq.tasks import SurvivalTask
from ehrseq.tokenize import survival_sequences
from ehrseq.training import FitConfig, fit
from ehrseq.vocab import fit_vocab

torch.set_num_threads(1)
CPU = torch.device("cpu")
H, N_PRE, VOCAB, PLANTED = 4, 3, 30, 5


def _config(**overrides) -> ExplainConfig:
    base = {"batch_size": 16, "batch_tokens": 100_000, "ig_steps": 32, "internal_batch_size": None,
            "k_max": 3, "precision_k": (1, 3),
            "n_random": 3, "n_permutations": 20, "plot_stays": 1, "attention_batches": 1, "max_stays": None,
            "perturbations_per_eval": 4, "sanity_stays": 8, "sanity_ig_steps": 16, "seed": 0, "label_shuffle": {}}
    return ExplainConfig(**{**base, **overrides})


def survival_toy(n: int, seed: int) -> tuple[pd.DataFrame, list[list[np.ndarray]], np.ndarray]:
    """Survival-view stays (3 pre-cutoff visits, horizon 4 bins): code 5 in a pre-cutoff
    visit gives hazard 0.5 per bin, else 0.03. Each pre-cutoff code gets its own event
    row; returns the frame, the rows per visit and the planted rows (the code-5 units)."""
    rng = np.random.default_rng(seed)
    rows, event_rows, planted, next_row = [], [], [], 100_000 * seed
    for i in range(n):
        risky = rng.random() < 0.4
        pre = [np.sort(rng.choice(np.arange(6, VOCAB), size=rng.integers(1, 5), replace=False)) for _ in range(N_PRE)]
        if risky:
            v = rng.integers(N_PRE)
            pre[v] = np.sort(np.append(pre[v], PLANTED))
        hazard = 0.5 if risky else 0.03
        death = next((k for k in range(1, H + 1) if rng.random() < hazard), None)
        event, k = (1, death) if death is not None else (0, H)
        post = [rng.choice(np.arange(6, VOCAB), size=2, replace=False) for _ in range(k - 1)]
        per_visit = []
        for codes in pre:
            r = np.arange(next_row, next_row + len(codes), dtype=np.int64)
            planted += list(r[codes == PLANTED])
            next_row += len(codes)
            per_visit.append(r)
        event_rows.append(per_visit)
        rows.append({"stay_id": 100_000 * seed + i, "subject_id": i, "pre_visits": N_PRE, "event_bin": k,
                     "event": event, "time_hours": 6.0 * k, "horizon_bins": H,
                     "visits": [v.astype(np.int32) for v in pre + post]})
    return pd.DataFrame(rows), event_rows, np.array(planted)


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    train, _, _ = survival_toy(300, seed=0)
    test_frame, test_rows, planted = survival_toy(48, seed=1)

    def loader(dataset, shuffle):
        return token_loader(dataset, 32, device=CPU, seed=0, shuffle=shuffle, collate_fn=collate_visits)

    torch.manual_seed(0)
    model = build_model("survival_lstm", vocab_size=VOCAB, horizon_bins=H, embedding_dim=16, hidden_size=16,
                        num_layers=1, dropout=0.0, packed="auto",
                        initial_hazard=kaplan_meier_hazards(train["event_bin"], train["event"], H))
    config = FitConfig(epochs=8, lr=2e-2, weight_decay=0.0, warmup_steps=2, schedule="cosine", min_lr_ratio=0.1,
                       grad_clip=1.0, patience=None, seed=0)
    tmp = tmp_path_factory.mktemp("survival")
    fit(model, SurvivalTask(), loader(SurvivalDataset(train), True), loader(SurvivalDataset(test_frame), False),
        config, checkpoint_dir=tmp / "ckpt", live_dir=tmp / "live", device=CPU)
    test = SurvivalEventDataset(test_frame, test_rows)
    batch = collate_survival_events([test[i] for i in range(16)])
    explainer = SurvivalExplainer(model.eval(), "survival_lstm")
    return dict(model=model, frame=test_frame, test=test, planted=planted, batch=batch, explainer=explainer,
                events=explainer.events(batch), train=SurvivalDataset(train))


def _risk(model, frame: pd.DataFrame) -> torch.Tensor:
    """The oracle: logit(1 - S(H)) at the landmark, from the model's curve in float64."""
    batch = collate_visits([SurvivalDataset(frame)[i] for i in range(len(frame))])
    with torch.no_grad():
        out = model(batch["visit_codes"], batch["visit_mask"], batch["sequence_mask"], batch["landmark"])["logits"]
        s = survival_curve(landmark_logits(out, batch["landmark"]).double())[:, -1]
    return torch.log((1 - s) / s)


def test_risk_logit_is_the_logit_of_death_within_the_horizon():
    h = torch.tensor([[-3.0, -2.0, -4.0], [-9.0, -9.0, -9.0], [2.0, 1.0, 0.0]])
    s = torch.prod(1 - torch.sigmoid(h.double()), dim=1)
    torch.testing.assert_close(risk_logit(h).double(), torch.log((1 - s) / s), rtol=1e-5, atol=1e-5)


def test_the_explained_risk_ignores_post_cutoff_visits_and_matches_the_curve(toy):
    # the explanation view holds pre-cutoff visits only; the landmark state never read the others
    explained = toy["explainer"].logits(toy["batch"]).double()
    full = _risk(toy["model"], toy["frame"].iloc[:16])
    torch.testing.assert_close(explained, full, rtol=1e-4, atol=1e-4)
    assert all(len(toy["test"].visits[i]) == N_PRE for i in range(len(toy["test"])))


def test_removing_a_unit_equals_the_stay_rebuilt_without_it(toy):
    explainer, batch, events = toy["explainer"], toy["batch"], toy["events"]
    scores = explainer.explain(batch, events, _config()).scores["event_ablation"]
    with torch.no_grad():
        full = explainer.logits(batch)
    for b in (0, 5):
        e = 1
        row = int(events.rows[b, e])
        frame = toy["frame"].iloc[[b]].copy()
        v = next(i for i, r in enumerate(toy["test"].event_rows[b]) if row in r.tolist())
        keep = toy["test"].event_rows[b][v].numpy() != row
        visits = list(frame["visits"].iloc[0])
        visits[v] = visits[v][keep]  # may leave an empty visit, as the view writes an empty bin
        frame["visits"] = [visits]
        without = _risk(toy["model"], frame)[0]
        assert float(scores[b, e]) == pytest.approx(float(full[b]) - float(without), abs=1e-4)


def test_layer_ig_sums_to_the_change_from_the_stay_without_events(toy):
    explainer, batch, events = toy["explainer"], toy["batch"], toy["events"]
    result = explainer.explain(batch, events, _config(ig_steps=128))
    lig = result.scores["layer_integrated_gradients"]
    empty = toy["frame"].iloc[:16].assign(visits=lambda f: [[np.zeros(0, np.int32)] * N_PRE + list(v[N_PRE:])
                                                            for v in f["visits"]])
    change = result.logits.double() - _risk(toy["model"], empty)
    torch.testing.assert_close(lig.sum(dim=1).double(), change, rtol=0.02, atol=0.02)
    assert (lig[events.padding] == 0).all()
    assert len(explainer.methods) == 2 and result.convergence["layer_integrated_gradients"][0].abs().max() < 0.05


def test_units_name_their_events_and_merge_repeats_of_a_code_in_one_bin():
    """Stay 1 (cutoff at 48 h, 6 h bins): A at 10 h and 11 h (same bin), B at 47 h, C after the cutoff."""
    rows = [(1, 10.0, "A"), (1, 11.0, "A"), (1, 47.0, "B"), (1, 50.0, "C"), (2, 1.0, "A"), (2, 20.0, "B")]
    events = pd.DataFrame([dict(stay_id=s, hours=h, event_type="procedure", code=f"ITEM//{c}", value=np.nan)
                           for s, h, c in rows])
    events["after_cutoff"] = events["hours"] >= 48
    intime = pd.Timestamp("2150-01-01")
    cohort = pd.DataFrame(dict(stay_id=[1, 2], subject_id=[10, 20], age=[70.0] * 2, gender=["F"] * 2,
                               race=["WHITE"] * 2, intime=[intime] * 2, cutoff=[intime + pd.Timedelta(hours=48)] * 2,
                               event_hours=[100.0, 100.0], event=[0, 0], mortality=[0, 0], split=["train"] * 2))
    vocab, _ = fit_vocab(events, cohort, pd.DataFrame(columns=["code"]), min_frequency=1, value_bins=0,
                         min_values_for_bins=10)
    view, _ = survival_sequences(events, cohort, vocab, visit_hours=6, horizon_hours=24)
    per_stay, representative = unit_rows(events, cohort, vocab, 6, view)
    s1 = per_stay[0]
    assert s1[1].tolist() == [0] and s1[7].tolist() == [2]  # A (rows 0, 1) is one unit, named by row 0
    assert [len(v) for v in s1] == [0, 1, 0, 0, 0, 0, 0, 1]  # C (after the cutoff) is no unit
    assert representative.to_dict() == {0: 0, 1: 0, 2: 2, 4: 4, 5: 5}
    truth = unit_truth(Truth(np.array([1, 5]), np.array([3]), None), representative)
    assert truth.planted_rows.tolist() == [0, 5] and truth.companion_rows.tolist() == []
    broken = view.assign(visits=[[np.array([3], np.int32)] + list(v[1:]) for v in view["visits"]])
    with pytest.raises(ValueError, match="stay_id 1, visit 0"):
        unit_rows(events, cohort, vocab, 6, broken, "survival/test.parquet")


def test_survival_explain_split_finds_the_planted_code(toy, tmp_path):
    rows = np.concatenate([np.concatenate([r.numpy() for r in per]) for per in toy["test"].event_rows])
    descriptions = pd.DataFrame({"event_type": "lab", "code": [f"TOK//{r % 7}" for r in rows],
                                 "text": [f"event {r}" for r in rows], "hours_before_cutoff": 1.0},
                                index=pd.Index(rows, name="event_row"))
    metrics, sanity = explain_split(toy["explainer"], toy["test"], collate_survival_events, descriptions, tmp_path,
                                    _config(), Truth(toy["planted"], None, "none"))
    for method in ("layer_integrated_gradients", "event_ablation"):
        assert metrics["recall_precision_at_k"]["k=1"][method] >= 0.75  # measured 0.86; random 0.12
        assert metrics["aopc_vs_random"][method]["ci_low"] > 0.0
    assert metrics["recall_precision_at_k"]["k=1"]["random"] < 0.2
    report = parameter_randomisation(toy["explainer"], sanity, _config())
    assert [s["randomised_down_to"] for s in report["methods"]["event_ablation"]["stages"]] == [
        "hazard_head", "lstm", "embeddings"]
    assert report["methods"]["layer_integrated_gradients"]["passes"]


def test_a_shuffled_survival_outcome_moves_as_one(toy):
    base = toy["train"]
    shuffled = RelabelledDataset(base, np.array([0, 1]), np.array([1, 0]), ("event_bin", "event", "time_hours"))
    for i, donor in ((0, 1), (1, 0)):
        item = shuffled[i]
        assert [item[k] for k in ("event_bin", "event", "time_hours")] == [
            base[donor][k] for k in ("event_bin", "event", "time_hours")]
        assert all(torch.equal(a, b) for a, b in zip(item["visits"], base[i]["visits"]))
    assert shuffled.labels.tolist() == [base.labels[1], base.labels[0]]
