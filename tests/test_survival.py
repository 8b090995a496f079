"""survival_lstm: the landmark view, the discrete-time loss (against the seed's worked
example by hand), masking, the model, training on a planted signal, and the metrics
against brute-force references."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from ehrseq import survival_metrics as sm
from ehrseq.data import token_loader
from ehrseq.models import build_model
from ehrseq.survival import (
    discrete_time_nll,
    kaplan_meier_hazards,
    landmark_logits,
    log_likelihood,
    loss_masks,
    survival_curve,
)
from ehrseq.survival_data import SurvivalDataset, collate_visits, load_survival
from ehrseq.survival_eval import evaluate_curves, tertile_table
from ehrseq.tasks import SurvivalTask
from ehrseq.tokenize import survival_sequences
from ehrseq.training import FitConfig, fit, predict
from ehrseq.vocab import fit_vocab

torch.set_num_threads(1)
CPU = torch.device("cpu")
NEG_INF = float("-inf")

# ------------------------------------------------------------------ the landmark view


def landmark_data():
    """Cutoff at 48 h after ICU admission; bins of 6 h; horizon 168 h (28 bins).

    stay 1: dies at 70 h (22 h after the cutoff: bin 4); events at 10 h, 47 h (pre),
            50 h (post bin 1), 60 h (post bin 3) and 69 h (bin 4: the death bin, never input)
    stay 2: discharged alive at 100 h (52 h after the cutoff: 8 whole bins survived)
    stay 3: dies at 248 h (200 h after the cutoff): censored at the horizon
    stay 4: no event before the cutoff -> dropped
    stay 5: outcome time before the cutoff (bad input) -> dropped
    """
    rows = [(1, 10.0, "A"), (1, 47.0, "B"), (1, 50.0, "C"), (1, 60.0, "D"), (1, 69.0, "E"),
            (2, 1.0, "A"), (2, 90.0, "C"), (3, 5.0, "B"), (4, 50.0, "A"), (5, 3.0, "A")]
    events = pd.DataFrame([dict(stay_id=s, hours=h, event_type="procedure", code=f"ITEM//{c}", value=np.nan)
                           for s, h, c in rows])
    events["after_cutoff"] = events["hours"] >= 48
    intime = pd.Timestamp("2150-01-01")
    cohort = pd.DataFrame(dict(
        stay_id=[1, 2, 3, 4, 5], subject_id=[10, 20, 30, 40, 50], age=[70.0] * 5, gender=["F"] * 5, race=["WHITE"] * 5,
        intime=[intime] * 5, cutoff=[intime + pd.Timedelta(hours=48)] * 5,
        event_hours=[70.0, 100.0, 248.0, 60.0, 30.0], event=[1, 0, 1, 0, 0], mortality=[1, 0, 1, 0, 0],
        split=["train"] * 5,
    ))
    vocab, _ = fit_vocab(events, cohort, pd.DataFrame(columns=["code"]), min_frequency=1, value_bins=0,
                         min_values_for_bins=10)
    return events, cohort, vocab


def test_landmark_view_starts_the_clock_at_the_cutoff():
    events, cohort, vocab = landmark_data()
    table, stats = survival_sequences(events, cohort, vocab, visit_hours=6, horizon_hours=168)
    ids = {c: vocab.tokens.index(f"ITEM//{c}") for c in "ABCDE"}
    s1, s2, s3 = (table.set_index("stay_id").loc[s] for s in (1, 2, 3))
    # death 22 h after the cutoff: bin 4 = (18, 24] h; 8 pre-cutoff visits + post bins 1..3
    assert (s1.event, s1.event_bin, s1.pre_visits) == (1, 4, 8)
    assert s1.time_hours == pytest.approx(22.0)
    assert len(s1.visits) == 11
    assert ids["A"] in s1.visits[1] and ids["B"] in s1.visits[7]  # 10 h -> bin [6, 12); 47 h -> last pre bin
    assert ids["C"] in s1.visits[8] and ids["D"] in s1.visits[10]  # 50 h -> post bin 1; 60 h -> post bin 3
    assert all(ids["E"] not in v for v in s1.visits)  # 69 h is in the death bin: no state sees it
    assert len(s1.visits[9]) == 0  # an empty bin stays a visit: position = time
    # discharged 52 h after the cutoff: 8 whole bins survived (censored: floor), post visits 1..7
    assert (s2.event, s2.event_bin, len(s2.visits)) == (0, 8, 15)
    assert all(ids["C"] not in v for v in s2.visits)  # 90 h = post bin 8, whose state is never needed
    # a death 200 h after the cutoff is censored at the 168 h horizon (28 whole bins)
    assert (s3.event, s3.event_bin, s3.time_hours) == (0, 28, 168.0)
    assert stats["dropped"] == {"no_pre_cutoff_visit": 1, "censored_before_cutoff": 1}
    assert stats["deaths_after_horizon_censored"] == 1 and stats["kept"] == 3
    assert (table["horizon_bins"] == 28).all()


def test_horizon_must_be_whole_bins():
    events, cohort, vocab = landmark_data()
    with pytest.raises(ValueError, match="multiple of tokenize.visit_hours"):
        survival_sequences(events, cohort, vocab, visit_hours=5, horizon_hours=168)


# ------------------------------------------------------------------------ the loss


def padded_logits(rows: list[list[float]], H: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Hazard probabilities per visit -> logits [B, V, H] with -inf on padding (the model's mask)."""
    V = max(len(r) for r in rows)
    logits = torch.full((len(rows), V, H), NEG_INF)
    for b, r in enumerate(rows):
        p = torch.tensor(r, dtype=torch.float64).reshape(len(r), H)
        logits[b, : len(r)] = torch.logit(p).float()
    mask = torch.tensor([[v < len(r) for v in range(V)] for r in rows])
    return logits, mask


def seed_batch():
    """The seed's worked example, with its comment fixed (1 = event).

    Patient 0: hazards 0.1, 0.2, 0.3, dies at visit 2. Patient 1: hazards 0.15, 0.25,
    censored at visit 1, which it survived. With H = 1 the state of visit v predicts bin
    v + 1, and the landmark is visit 0, so patient 0 dies in bin 3 and patient 1 survived
    2 whole bins.
    """
    logits, mask = padded_logits([[0.1, 0.2, 0.3], [0.15, 0.25]])
    batch = {"sequence_mask": mask, "landmark": torch.tensor([0, 0]), "event_bin": torch.tensor([3, 2]),
             "event": torch.tensor([1.0, 0.0])}
    return logits, batch


def test_h1_is_the_seeds_per_visit_nll_by_hand():
    logits, batch = seed_batch()
    patient0 = math.log(0.9) + math.log(0.8) + math.log(0.3)  # survive bins 1, 2 (<), die in 3
    patient1 = math.log(0.85) + math.log(0.75)  # censored: survives bins 1 and 2 (<=, the seed's text)
    assert discrete_time_nll(logits, batch).item() == pytest.approx(-(patient0 + patient1) / 2, rel=1e-5)
    per_stay = log_likelihood(logits, *loss_masks(batch["sequence_mask"], batch["landmark"], batch["event_bin"],
                                                  batch["event"], 1))
    assert per_stay.tolist() == pytest.approx([patient0, patient1], rel=1e-5)


def test_multi_bin_head_sums_every_at_risk_state_by_hand():
    # One stay, H = 2, landmark at visit 0, death in bin 2: state 0 predicts bins 1 (survived)
    # and 2 (death); state 1 (after post-cutoff bin 1) predicts bin 2 (death) and bin 3 (beyond).
    logits = torch.logit(torch.tensor([[[0.1, 0.2], [0.3, 0.4]]]))  # [B=1, V=2, H=2]
    batch = {"sequence_mask": torch.tensor([[True, True]]), "landmark": torch.tensor([0]),
             "event_bin": torch.tensor([2]), "event": torch.tensor([1.0])}
    expected = -(math.log(0.9) + math.log(0.2) + math.log(0.3)) / 2
    assert discrete_time_nll(logits, batch).item() == pytest.approx(expected, rel=1e-5)
    # the landmark curve: S(1) = 0.9, S(2) = 0.9 * 0.8
    curve = survival_curve(landmark_logits(logits, batch["landmark"]))
    assert curve[0].tolist() == pytest.approx([0.9, 0.72], rel=1e-5)


def test_the_event_term_is_not_safe_when_a_masking_level_is_missed():
    """The seed claims the loss stays correct if one masking level is missed. Padded
    hazards are 0 (the model's level), so the survival term log(1 - h) vanishes there
    without the loss mask; the event term log(h) does not: it is -inf on padding, and
    the seed's `log(h) * mask` turns it into NaN even with the mask."""
    # patient 1's label points one bin past its visits (the seed's pitfall 3)
    logits, batch = seed_batch()
    batch["event_bin"], batch["event"] = torch.tensor([3, 3]), torch.tensor([1.0, 1.0])
    all_visits = torch.ones_like(batch["sequence_mask"])
    args = (batch["landmark"], batch["event_bin"], batch["event"], 1)
    survived, at_event = loss_masks(batch["sequence_mask"], *args)
    survived_nomask, at_event_nomask = loss_masks(all_visits, *args)
    log_survive, log_hazard = torch.nn.functional.logsigmoid(-logits), torch.nn.functional.logsigmoid(logits)
    # survival term: identical with and without the loss's visit mask
    assert log_survive[survived].sum().item() == pytest.approx(log_survive[survived_nomask].sum().item())
    # event term: finite with the loss mask (the event is lost: why load_survival drops such rows) ...
    assert torch.isfinite(log_hazard[at_event].sum()) and at_event[1].sum() == 0
    # ... -inf without it, and NaN as the seed computes it (log(0) * 0)
    assert log_hazard[at_event_nomask].sum().item() == NEG_INF
    assert torch.isnan((log_hazard * batch["sequence_mask"].unsqueeze(-1).float()).sum())
    # our loss with every level stays finite, gradients too
    logits.requires_grad_(True)
    loss = discrete_time_nll(logits, batch)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()


def test_stays_without_a_term_give_a_zero_loss_not_nan():
    logits, mask = padded_logits([[0.2], [0.3]])
    logits.requires_grad_(True)
    batch = {"sequence_mask": mask, "landmark": torch.tensor([0, 0]), "event_bin": torch.tensor([0, 0]),
             "event": torch.tensor([0.0, 0.0])}  # both censored before the end of bin 1
    loss = discrete_time_nll(logits, batch)
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(logits.grad).all()


# ---------------------------------------------------------- data, collate and model


def small(size: int) -> dict:
    """Constructor arguments of a small survival_lstm (params.yaml sets them in the pipeline)."""
    return {"embedding_dim": size, "hidden_size": size, "num_layers": 1, "dropout": 0.0, "packed": "auto",
            "initial_hazard": None}


def survival_frame(n: int, seed: int, horizon: int = 4, n_pre: int = 3, vocab: int = 30) -> pd.DataFrame:
    """Stays in the survival view contract with a planted signal: code 5 in a pre-cutoff
    visit gives a hazard of 0.5 per bin, otherwise 0.03. `true_risk` records it."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        risky = rng.random() < 0.3
        hazard = 0.5 if risky else 0.03
        pre = [rng.choice(np.arange(6, vocab), size=rng.integers(0, 5), replace=False) for _ in range(n_pre)]
        if risky:
            v = rng.integers(n_pre)
            pre[v] = np.append(pre[v], 5)
        death = next((k for k in range(1, horizon + 1) if rng.random() < hazard), None)
        discharge = int(rng.integers(1, 3 * horizon))
        if death is not None and death <= min(discharge, horizon):
            event, k = 1, death
        else:
            event, k = 0, min(discharge, horizon)
        post = [rng.choice(np.arange(6, vocab), size=rng.integers(0, 3), replace=False) for _ in range(max(k - 1, 0))]
        rows.append({"stay_id": 100 + i, "subject_id": 1000 + i // 2,
                     "visits": [np.sort(v).astype(np.int32) for v in pre + post], "pre_visits": n_pre,
                     "event_bin": k, "event": event, "time_hours": float(6 * k - (3 if event else 0)),
                     "horizon_bins": horizon, "true_risk": 1 - (1 - hazard) ** horizon})
    return pd.DataFrame(rows)


def test_load_survival_drops_bad_rows_with_a_reason(tmp_path):
    frame = survival_frame(6, seed=0).drop(columns="true_risk")
    frame.loc[0, "pre_visits"] = 0  # no landmark state
    frame.loc[1, ["event_bin", "event"]] = [9, 1]  # beyond the 4-bin horizon
    frame.loc[2, ["event_bin", "event"]] = [0, 1]  # a death in bin 0
    frame.at[3, "visits"] = frame.at[3, "visits"][:2]  # fewer visits than its label needs
    frame.loc[3, ["event_bin", "event"]] = [4, 0]
    frame.to_parquet(tmp_path / "s.parquet")
    kept, dropped = load_survival(tmp_path / "s.parquet", vocab_size=30)
    assert dropped == {"no_pre_cutoff_visit": 1, "event_bin_beyond_horizon": 1, "event_bin_before_first_bin": 1,
                       "missing_post_cutoff_visits": 1}
    assert kept["stay_id"].tolist() == [104, 105]
    frame.at[4, "visits"] = [np.array([31], dtype=np.int32)] * 3
    frame.to_parquet(tmp_path / "bad.parquet")
    with pytest.raises(ValueError, match="bad.parquet: column 'visits' must hold ids 1..29; found 31"):
        load_survival(tmp_path / "bad.parquet", vocab_size=30)


def test_an_all_empty_batch_keeps_a_code_dimension():
    items = [{"visits": [torch.zeros(0, dtype=torch.long)] * 2, "landmark": 1, "event_bin": 1, "event": 0.0,
              "time_hours": 7.0, "stay_id": 1, "subject_id": 1}]
    batch = collate_visits(items)
    assert batch["visit_codes"].shape == (1, 2, 1) and not batch["visit_mask"].any()
    model = build_model("survival_lstm", vocab_size=10, horizon_bins=3, **small(4))
    logits = model(batch["visit_codes"], batch["visit_mask"], batch["sequence_mask"], batch["landmark"])["logits"]
    assert logits.shape == (1, 2, 3) and torch.isfinite(logits).all()


def test_packed_and_padded_give_the_same_hazards_and_padding_is_zero_hazard():
    frame = survival_frame(8, seed=1)
    batch = collate_visits([SurvivalDataset(frame)[i] for i in range(8)])
    torch.manual_seed(0)
    model = build_model("survival_lstm", vocab_size=30, horizon_bins=4, **{**small(8), "packed": False})
    model.eval()
    inputs = (batch["visit_codes"], batch["visit_mask"], batch["sequence_mask"], batch["landmark"])
    padded = model(*inputs)["logits"]
    model.packed = True
    packed = model(*inputs)["logits"]
    real = batch["sequence_mask"]
    torch.testing.assert_close(packed[real], padded[real])
    assert (packed[~real] == NEG_INF).all() and (padded[~real] == NEG_INF).all()
    # codes of padding (id 0) never change a visit vector: the mean divides by real codes only
    codes = batch["visit_codes"][0, :1]  # [1, C]
    vec = model.visit_vectors(codes[None], (codes != 0)[None])[0, 0]
    real_codes = codes[0][codes[0] != 0]
    expected = model.embed(real_codes).mean(0) if len(real_codes) else torch.zeros_like(vec)
    torch.testing.assert_close(vec, expected)


def test_the_untrained_model_starts_at_kaplan_meier():
    # 4 stays: deaths in bins 1 and 2, censored after 1 and 3 whole bins
    hazards = kaplan_meier_hazards(np.array([1, 1, 2, 3]), np.array([1, 0, 1, 0]), horizon_bins=3)
    assert hazards == pytest.approx([1 / 4, 1 / 2, 0.0])  # bin 2: 2 at risk, 1 death; bin 3: 1 at risk
    frame = survival_frame(4, seed=0)
    batch = collate_visits([SurvivalDataset(frame)[i] for i in range(4)])
    model = build_model("survival_lstm", vocab_size=30, horizon_bins=4,
                        **{**small(4), "initial_hazard": [0.1, 0.2, 0.3, 0.4]})
    torch.nn.init.zeros_(model.hazard_head.weight)
    torch.nn.init.zeros_(model.hazard_head.bias)
    p = SurvivalTask().predict(model.eval(), batch)
    np.testing.assert_allclose(p["survival"].detach().numpy(), np.tile(np.cumprod([0.9, 0.8, 0.7, 0.6]), (4, 1)),
                               rtol=1e-5)
    # a later state predicts later bins: the state after post-cutoff bin 1 reads alpha_2, alpha_3, alpha_4
    logits = SurvivalTask().logits(model, batch)
    row = int(np.argmax(batch["sequence_mask"].sum(1)))
    state1 = logits[row, int(batch["landmark"][row]) + 1]
    np.testing.assert_allclose(torch.sigmoid(state1[:3]).detach().numpy(), [0.2, 0.3, 0.4], rtol=1e-5)


def test_training_learns_the_planted_hazard(tmp_path):
    train, val = survival_frame(400, seed=2), survival_frame(200, seed=3)

    def loader(frame, shuffle):
        return token_loader(SurvivalDataset(frame), 32, device=CPU, seed=0, shuffle=shuffle, collate_fn=collate_visits)

    torch.manual_seed(0)
    model = build_model("survival_lstm", vocab_size=30, horizon_bins=4, **{
        **small(16), "initial_hazard": kaplan_meier_hazards(train["event_bin"], train["event"], 4)})
    config = FitConfig(epochs=10, lr=2e-2, weight_decay=0.0, warmup_steps=2, schedule="cosine", min_lr_ratio=0.1,
                       grad_clip=1.0, patience=None, seed=0)
    fit(model, SurvivalTask(), loader(train, True), loader(val, False), config,
        checkpoint_dir=tmp_path / "ckpt", live_dir=tmp_path / "live", device=CPU)
    p = predict(model, SurvivalTask(), loader(val, False), CPU)
    risk_of = dict(zip(val["stay_id"], val["true_risk"]))
    true_risk = np.array([risk_of[s] for s in p["stay_id"]])
    predicted_risk = 1 - p["survival"][:, -1]
    high, low = predicted_risk[true_risk > 0.5], predicted_risk[true_risk < 0.5]
    assert high.mean() > 0.7 and low.mean() < 0.3  # true: 0.94 and 0.11
    assert np.all(np.diff(p["survival"], axis=1) <= 1e-6)  # survival never rises


# --------------------------------------------------------------------------- metrics


def brute_force_antolini(curve, grid, time, event):
    """Antolini's C: over comparable pairs (i died first), is S_i(T_i) < S_j(T_i)?"""
    num = den = 0
    for i in range(len(time)):
        if not event[i]:
            continue
        s = sm.step_survival(curve, grid, [time[i]])[:, 0]
        for j in range(len(time)):
            if time[j] > time[i] or (time[j] == time[i] and not event[j]):
                den += 1
                num += s[i] < s[j]
    return num / den


def test_antolini_matches_brute_force():
    rng = np.random.default_rng(0)
    n, grid = 40, np.arange(0.0, 36.0, 6.0)
    curve = np.hstack([np.ones((n, 1)), np.cumprod(rng.uniform(0.6, 1.0, (n, len(grid) - 1)), axis=1)])
    time = rng.choice(np.arange(1.0, 30.0), n)
    event = rng.random(n) < 0.5
    assert sm.antolini_c(curve, grid, time, event) == pytest.approx(brute_force_antolini(curve, grid, time, event))


def tied_survival_data(seed: int, n_test: int = 300):
    """Train and test outcomes on whole hours up to a 24 h horizon (ties among deaths,
    among censorings and between both; every survivor censored at 24 h, where the censoring
    survival G drops to 0), and test curves on a 6 h grid with tied values (tied risks)."""
    rng = np.random.default_rng(seed)

    def outcomes(n):
        time = rng.choice(np.arange(1.0, 25.0), n)
        return sm.outcome(time, (rng.random(n) < 0.4) & (time < 24))

    train, test = outcomes(200), outcomes(n_test)
    grid = np.arange(0.0, 25.0, 6.0)
    steps = np.round(rng.uniform(0.7, 1.0, (n_test, len(grid) - 1)), 1)
    curve = np.hstack([np.ones((n_test, 1)), np.cumprod(steps, axis=1)])
    return train, test, curve, grid


@pytest.mark.parametrize("seed", range(5))
def test_ipcw_metrics_equal_scikit_survival(seed):
    """One censoring fit, indexed by a resample's rows, gives scikit-survival's floats
    (which refit it on every call), exactly."""
    from sksurv.metrics import concordance_index_ipcw, cumulative_dynamic_auc, integrated_brier_score

    train, test, curve, grid = tied_survival_data(seed)
    censoring = sm.censoring_survival(train, test["time"])
    rows = np.random.default_rng(seed).integers(0, len(test), len(test))  # a bootstrap resample: repeated rows
    times = grid[1:-1]  # 6-18 h, inside the follow-up
    for y, g, s in ((test, censoring, curve), (test[rows], censoring[rows], curve[rows])):
        for t in (6.0, 12.0, 18.0):
            risk = 1.0 - sm.step_survival(s, grid, [t])
            assert sm.time_dependent_auc(y, g, s, grid, t) == cumulative_dynamic_auc(train, y, risk, [t])[0][0]
        for tau in (12.0, 20.0):
            risk = 1.0 - sm.step_survival(s, grid, [tau])[:, 0]
            assert sm.uno_c(y, g, s, grid, tau) == concordance_index_ipcw(train, y, risk, tau=tau)[0]
        expected = integrated_brier_score(train, y, sm.step_survival(s, grid, times), times)
        assert sm.integrated_brier(y, g, s, grid, times, sm.censoring_survival(train, times)) == expected


def test_brier_weighs_nothing_where_the_censoring_survival_is_zero():
    """The train split ends censored at 24 h, so G = 0 from there on: scikit-survival
    divides by infinity instead, for a death at 24 h and for the Brier score at 24 h."""
    from sksurv.metrics import integrated_brier_score

    train, _, _, _ = tied_survival_data(0)
    test = sm.outcome(np.array([6.0, 12.0, 24.0, 24.0, 30.0]), np.array([1, 0, 1, 0, 0]))
    grid = np.arange(0.0, 31.0, 6.0)
    curve = np.linspace(1.0, 0.4, len(grid))[None, :] ** np.arange(1.0, 6.0)[:, None]
    times = np.array([6.0, 12.0, 24.0])
    censoring, censoring_at_times = sm.censoring_survival(train, test["time"]), sm.censoring_survival(train, times)
    assert censoring[2] == censoring_at_times[-1] == 0.0
    expected = integrated_brier_score(train, test, sm.step_survival(curve, grid, times), times)
    assert sm.integrated_brier(test, censoring, curve, grid, times, censoring_at_times) == expected


def test_ipcw_metrics_refuse_what_scikit_survival_refuses():
    train, test, curve, grid = tied_survival_data(0)
    censoring = sm.censoring_survival(train, test["time"])
    with pytest.raises(ValueError, match="NaN"):
        sm.uno_c(test, censoring, np.where(curve < 0.9, np.nan, curve), grid, 12.0)
    last_died = sm.outcome(np.array([1.0, 2.0, 3.0]), np.array([0, 0, 1]))  # G(3 h) > 0: unknown after
    with pytest.raises(ValueError, match="smaller than largest observed time"):
        sm.censoring_survival(last_died, [5.0])
    with pytest.raises(ValueError, match="censoring survival function is zero"):  # a death where G = 0
        sm.time_dependent_auc(test, np.zeros(len(test)), curve, grid, 12.0)


@pytest.mark.parametrize("seed", range(5))
def test_antolini_equals_pycox(seed):
    from pycox.evaluation import EvalSurv

    _, test, curve, grid = tied_survival_data(seed)
    time = test["time"].copy()
    time[:3] = 30.0  # past the grid: pycox reads its last column
    ev = EvalSurv(pd.DataFrame(curve.T, index=grid), time, test["event"].astype(float), censor_surv=None, steps="pre")
    expected = ev.concordance_td("antolini")
    assert sm.antolini_c(curve, grid, time, test["event"]) == expected
    # no comparable pair (pycox divides by zero): undefined, with the reason
    with pytest.raises(sm.UndefinedMetricError, match="before another stay"):
        sm.antolini_c(curve[:2], grid, np.array([6.0, 6.0]), np.array([True, True]))


def test_curves_by_hand():
    grid = np.array([0.0, 6.0, 12.0])
    np.testing.assert_allclose(sm.oracle_curve(np.array([0.5]), np.array([0.1]), grid)[0],
                               [1.0, 1 - 0.5 * (1 - math.exp(-0.6)), 1 - 0.5 * (1 - math.exp(-1.2))])
    # 4 stays: deaths at 3 h and 8 h, censored at 5 h and 20 h: S = 3/4 after 3 h, 3/4 * 1/2 after 8 h
    np.testing.assert_allclose(sm.kaplan_meier_curve(np.array([3.0, 5.0, 8.0, 20.0]), np.array([1, 0, 1, 0]), grid),
                               [1.0, 0.75, 0.375])
    # a time reads the end of its bin ((0, 6] -> 6 h)
    np.testing.assert_array_equal(sm.step_survival(np.array([[1.0, 0.9, 0.8]]), grid, [0.0, 0.1, 6.0, 6.1]),
                                  [[1.0, 0.9, 0.9, 0.8]])


def test_patient_bootstrap_resamples_whole_patients():
    subjects = np.repeat(np.arange(20), 2)  # two stays each
    values = np.tile([0.0, 1.0], 20)  # first stay 0, second 1: any whole-patient resample has mean 0.5

    def compute(rows):
        return {"mean": float(values[rows].mean()), "never": None, "never/reason": "no data"}

    out = sm.patient_bootstrap(compute, subjects, n_resamples=50, seed=0)
    assert out["mean"] == {"value": 0.5, "n_resamples": 50, "ci_low": 0.5, "ci_high": 0.5}
    assert out["never"] == {"value": None, "reason": "no data"}


def test_auroc_at_the_horizon_is_undefined_with_the_reason():
    y = sm.outcome(np.array([2.0, 5.0, 12.0, 12.0]), np.array([1, 1, 0, 0]))
    grid = np.array([0.0, 6.0, 12.0])
    curve = np.array([[1, 0.5, 0.4], [1, 0.7, 0.6], [1, 0.9, 0.8], [1, 0.95, 0.9]])
    censoring = sm.censoring_survival(y, y["time"])
    with pytest.raises(sm.UndefinedMetricError, match="follow-up beyond it"):
        sm.time_dependent_auc(y, censoring, curve, grid, 12.0)
    assert sm.time_dependent_auc(y, censoring, curve, grid, 6.0) == pytest.approx(1.0)
    censored = sm.outcome(np.array([2.0, 5.0, 12.0, 12.0]), np.zeros(4))  # e.g. a bootstrap resample of the demo
    values = sm.method_metrics(censored, censoring, curve, grid, [6.0], np.array([6.0]),
                               sm.censoring_survival(y, [6.0]), 6.0)
    assert all(values[k] is None and values[k + "/reason"] for k in
               ("antolini_c", "uno_c", "integrated_brier_score", "auroc_6h"))


def test_evaluation_scores_the_oracle_and_baselines_in_one_run(tmp_path):
    frames = {name: survival_frame(n, seed=s) for name, n, s in (("train", 300, 4), ("val", 100, 5), ("test", 150, 6))}
    test = frames["test"]
    hazard = np.where(test["true_risk"] > 0.5, 0.5, 0.03)
    rate = -np.log(1 - hazard) / 6.0  # per hour: S(6k) = (1 - hazard)^k
    truth = tmp_path / "stay_survival.parquet"
    pd.DataFrame({"stay_id": test["stay_id"], "true_risk": 1.0, "death_rate_per_hour": rate}).to_parquet(truth)
    grid = 6.0 * np.arange(5.0)
    oracle = sm.oracle_curve(np.ones(len(test)), rate, grid)
    kw = dict(test=test, train=frames["train"], val=frames["val"], vocab_size=30, visit_hours=6.0,
              auc_hours=[6.0, 12.0], tau_hours=20.0, cox={"min_stays": 5, "l1_ratio": 0.5, "n_alphas": 5},
              n_resamples=20, seed=0)
    report, curves = evaluate_curves(model_curve=oracle[:, 1:], truth_path=truth, **kw)
    m = report["metrics"]
    assert report["resample_unit"] == "patient" and report["c_index_vs_oracle"]["value"] == pytest.approx(1.0)
    # two risk groups: ties within a group count 0 in Antolini's C (no tie credit), so even
    # the oracle stays well below 1, and Kaplan-Meier (one curve for all) scores exactly 0
    assert m["model"]["antolini_c"]["value"] == m["oracle"]["antolini_c"]["value"] > 0.6
    assert m["kaplan_meier"]["antolini_c"]["value"] == 0.0 and m["cox"]["antolini_c"]["value"] > 0.5
    assert m["oracle"]["integrated_brier_score"]["value"] < m["kaplan_meier"]["integrated_brier_score"]["value"]
    assert set(m["model"]) == {"antolini_c", "uno_c", "integrated_brier_score", "auroc_6h", "auroc_12h"}
    # real data: no truth file, the oracle is undefined with the reason
    report, _ = evaluate_curves(model_curve=oracle[:, 1:], truth_path=tmp_path / "absent.parquet", **kw)
    assert report["metrics"]["oracle"]["antolini_c"]["value"] is None
    assert "absent.parquet not found" in report["c_index_vs_oracle"]["reason"]
    table = tertile_table(curves["model"], test["time_hours"].to_numpy(), test["event"].to_numpy(), grid)
    assert (table["high_predicted"] < table["low_predicted"]).iloc[1:].all()
