"""Explainability of every mortality model: attention capture, Captum attributions,
event removal, faithfulness, precision against planted truth, sanity checks, plots.

Tiny models (clinical_lf, and the three token models) are trained on toy stays whose
label is "a danger event occurred before the cutoff"; their explanations are checked
against Captum's axioms, against direct re-computation (a stay rebuilt by hand without
an event), against the planted truth, and against randomised models.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import TINY, make_toy_data, train_tiny
from ehrseq.explain.attention import attention_rollout, pooling_event_scores
from ehrseq.explain.attributions import (
    group_ablation,
    importance_by,
    integrated_gradients,
    layer_integrated_gradients,
    mean_baselines,
)
from ehrseq.explain.events import index_events, positions_of, to_events
from ehrseq.explain.explainers import (
    ClinicalLFExplainer,
    Explanation,
    TokenExplainer,
    compact,
    event_ablation,
)
from ehrseq.explain.faithfulness import (
    _jsd,
    aopc,
    aopc_against_random,
    curves_to_risk,
    deletion_curve,
    deletion_curves,
    deletion_table,
    greedy_deletion_curve,
    head_specialisation,
    precision_at_k,
    random_scores,
)
from ehrseq.explain.inputs import (
    TokenEventDataset,
    Truth,
    collate_token_events,
    event_descriptions,
    read_truth,
)
from ehrseq.explain.plots import head_heatmap, importance_bars, stay_timeline
from ehrseq.explain.run import ExplainConfig, explain_split, length_batches, sanity_checks, scores_frame
from ehrseq.explain.sanity import (
    RelabelledDataset,
    SanityBatch,
    label_randomisation_verdict,
    parameter_randomisation,
    shuffled_label_model,
    spearman_per_stay,
)
from ehrseq.explain.token_attention import record_token_attention, token_layer_attention
from ehrseq.features import build_dataset, collate, fit_encoder
from ehrseq.models import build_model
from ehrseq.models.attention import forward_with_attention, record_attention, save_attention
from ehrseq.models.clinical_lf import ClinicalLF, sinusoidal_positions
from ehrseq.schema import BOS_ID, EOS_ID, PAD_ID, UNK_ID

torch.set_num_threads(1)


def _config(**overrides) -> ExplainConfig:
    """An ExplainConfig (it has no defaults: params.yaml holds them) sized for toy data."""
    base = {"batch_size": 16, "batch_tokens": 100_000, "ig_steps": 32, "internal_batch_size": None,
            "k_max": 3, "precision_k": (1, 3, 5),
            "n_random": 3, "n_permutations": 20, "plot_stays": 1, "attention_batches": 1, "max_stays": None,
            "perturbations_per_eval": 4, "sanity_stays": 8, "sanity_ig_steps": 16, "seed": 0,
            "label_shuffle": {"stays": 100, "epochs": 1, "seeds": 2, "tolerance": 0.05, "event_strata": 4,
                              "n_bootstrap": 10, "untrained_models": 1}}
    return ExplainConfig(**{**base, **overrides})


@pytest.fixture(scope="module")
def setup():
    events, cohort, texts, vectors, planted = make_toy_data()
    encoder = fit_encoder(events, cohort, texts, vectors, max_events=8)
    train = build_dataset(events, cohort, texts, vectors, encoder, "train")
    test = build_dataset(events, cohort, texts, vectors, encoder, "test")
    model = train_tiny(train, steps=250)
    batch = collate([test[i] for i in range(len(test))])
    explainer = ClinicalLFExplainer(model, "clinical_lf", encoder=encoder)
    return {"model": model, "encoder": encoder, "batch": batch, "planted": planted, "events": events,
            "explainer": explainer, "event_index": explainer.events(batch)}


def _event_scores(position_scores, setup):
    """[B, T] clinical_lf step scores -> [B, E] (one event per step)."""
    return to_events(position_scores.masked_fill(setup["batch"]["padding_mask"], 0.0), setup["event_index"])


def _logits(model, steps, static, padding):
    with torch.no_grad():
        return model(steps, static, padding)["logits"]


def _heavily_padded(batch, extra=20):
    """The batch with `extra` more padded steps, and one stay emptied entirely."""
    B, T, Fdim = batch["steps"].shape
    out = dict(batch)
    out["steps"] = torch.cat([batch["steps"], torch.zeros(B, extra, Fdim)], dim=1)
    out["padding_mask"] = torch.cat([batch["padding_mask"], torch.ones(B, extra, dtype=torch.bool)], dim=1)
    out["padding_mask"][0] = True
    return out


# ---------------------------------------------------------------------- attention


def test_hooks_fire_on_the_real_forward_and_match_its_outputs(setup):
    model, batch = setup["model"], setup["batch"]
    B, T = batch["padding_mask"].shape
    assert torch.backends.mha.get_fastpath_enabled()
    with record_attention(model):
        assert not torch.backends.mha.get_fastpath_enabled()  # off while capturing
    outputs, att = forward_with_attention(model, batch)  # eval + no grad: the fast path's home ground
    assert torch.backends.mha.get_fastpath_enabled()  # restored afterwards
    assert len(att.layers) == TINY["n_layers"]
    assert all(w.shape == (B, TINY["n_heads"], T, T) for w in att.layers)
    assert att.pooling.shape == (B, TINY["pool_heads"], 1, T)
    plain = model(batch["steps"], batch["static"], batch["padding_mask"])
    assert torch.allclose(outputs["logits"], plain["logits"], atol=1e-5)
    assert torch.allclose(att.pooling, _manual_pooling(model, batch), atol=1e-6)
    # every padded key gets exactly zero weight, in every layer and in the pooling
    padded_keys = batch["padding_mask"][:, None, None, :]
    for w in [*att.layers, att.pooling]:
        assert (w.masked_select(padded_keys.expand_as(w)) == 0).all()
        assert torch.allclose(w.sum(-1), torch.ones_like(w.sum(-1)), atol=1e-5)


def _manual_pooling(model: ClinicalLF, batch) -> torch.Tensor:
    """[B, H, 1, T] pooling weights from a second, explicit pass: the encoder, then the
    pooling attention asked for its weights directly."""
    padding = batch["padding_mask"]
    B, T = padding.shape
    with torch.no_grad():
        x = model.input_proj(batch["steps"]) + sinusoidal_positions(T, model.input_proj.out_features)
        h = model.encoder(x, src_key_padding_mask=padding)
        _, weights = model.pool(model.pool_query.expand(B, -1, -1), h, h, key_padding_mask=padding,
                                need_weights=True, average_attn_weights=False)
    return weights


def test_capture_fails_loudly_when_no_hook_fired(setup):
    with record_attention(setup["model"]) as rec:
        pass  # no forward: must not silently return nothing
    with pytest.raises(RuntimeError, match="hooks fired"):
        rec.weights()


def _manual_layer_attention(model: ClinicalLF, batch) -> list[torch.Tensor]:
    """Self-attention weights computed by hand from each layer's REAL attention input."""
    padding = batch["padding_mask"]
    T = padding.shape[1]
    x = model.input_proj(batch["steps"]) + sinusoidal_positions(T, model.input_proj.out_features)
    weights = []
    for layer in model.encoder.layers:
        attn = layer.self_attn
        a_in = layer.norm1(x) if layer.norm_first else x
        E, H = attn.embed_dim, attn.num_heads
        q, k, _ = F.linear(a_in, attn.in_proj_weight, attn.in_proj_bias).split(E, dim=-1)
        q, k = (t.view(t.shape[0], T, H, E // H).transpose(1, 2) for t in (q, k))  # [B, H, T, hd]
        scores = q @ k.transpose(-1, -2) / math.sqrt(E // H)  # [B, H, T, T]
        weights.append(scores.masked_fill(padding[:, None, None, :], float("-inf")).softmax(-1))
        x = layer(x, src_key_padding_mask=padding)
    return weights


@pytest.mark.parametrize("norm_first", [False, True])
def test_captured_weights_equal_a_manual_reimplementation(setup, norm_first):
    batch = setup["batch"]
    torch.manual_seed(1)
    model = ClinicalLF(batch["steps"].shape[-1], batch["static"].shape[-1], **{**TINY, "norm_first": norm_first}).eval()
    _, att = forward_with_attention(model, batch)
    with torch.no_grad():
        manual = _manual_layer_attention(model, batch)
    for captured, expected in zip(att.layers, manual, strict=True):
        assert torch.allclose(captured, expected, atol=1e-5)
    if norm_first:  # re-running self_attn on the layer input (the seed's bug) would not match
        with torch.no_grad():
            layer0 = model.encoder.layers[0]
            x = model.input_proj(batch["steps"]) + sinusoidal_positions(batch["steps"].shape[1], TINY["d_model"])
            _, wrong = layer0.self_attn(x, x, x, key_padding_mask=batch["padding_mask"], average_attn_weights=False)
        assert not torch.allclose(wrong, att.layers[0], atol=1e-3)


def test_rollout_rows_sum_to_one_without_nan_under_heavy_padding(setup):
    batch = _heavily_padded(setup["batch"])
    _, att = forward_with_attention(setup["model"], batch)
    rollout = attention_rollout(att.layers, batch["padding_mask"])
    real = ~batch["padding_mask"]
    assert not torch.isnan(rollout).any()
    sums = rollout.sum(-1)
    assert torch.allclose(sums[real], torch.ones_like(sums[real]), atol=1e-5)
    assert (sums[~real] == 0).all()
    assert (rollout.masked_select(batch["padding_mask"][:, None, :].expand_as(rollout)) == 0).all()
    assert (rollout[0] == 0).all()  # the emptied stay


def test_rollout_of_one_layer_by_hand():
    A = torch.tensor([[[[0.2, 0.8, 0.0], [0.6, 0.4, 0.0], [0.3, 0.3, 0.4]]]])  # [1, 1, 3, 3]
    padding = torch.tensor([[False, False, True]])
    expected = torch.tensor([[[0.6, 0.4, 0.0], [0.3, 0.7, 0.0], [0.0, 0.0, 0.0]]])
    assert torch.allclose(attention_rollout([A], padding), expected)
    assert torch.allclose(attention_rollout([A, A], padding), expected @ expected)


def test_attention_npz_round_trip(setup, tmp_path):
    batch = setup["batch"]
    _, att = forward_with_attention(setup["model"], batch)
    save_attention(tmp_path / "attention" / "test.npz", att, batch)
    with np.load(tmp_path / "attention" / "test.npz") as npz:
        loaded = {key: npz[key] for key in npz.files}
    assert set(loaded) == {"layer_0", "layer_1", "pooling", "padding_mask", "stay_id", "event_row"}
    assert np.array_equal(loaded["layer_1"], att.layers[1].numpy())
    assert np.array_equal(loaded["event_row"], batch["event_row"].numpy())


# -------------------------------------------------------------------- attributions


def test_baseline_is_train_mean_step_and_input_at_padding(setup):
    batch, encoder = setup["batch"], setup["encoder"]
    steps_base, static_base = mean_baselines(batch, encoder)
    padding = batch["padding_mask"]
    assert torch.equal(steps_base[padding], batch["steps"][padding])
    assert torch.allclose(steps_base[~padding], torch.tensor(encoder.step_mean).expand(int((~padding).sum()), -1))
    assert torch.allclose(static_base, torch.tensor(encoder.static_mean).expand_as(static_base))
    # not the zero vector: zero is no sentence embedding the model has seen
    assert steps_base[~padding][:, encoder.step_groups["text"]].abs().sum() > 0


def test_integrated_gradients_completeness_and_zero_on_padding(setup):
    model, batch = setup["model"], setup["batch"]
    model.train()  # IG must switch to eval itself (and restore the mode)
    base = mean_baselines(batch, setup["encoder"])
    ig = integrated_gradients(model, batch, base, n_steps=200, internal_batch_size=512)
    assert model.training
    model.eval()
    fx = _logits(model, batch["steps"], batch["static"], batch["padding_mask"])
    fb = _logits(model, *base, batch["padding_mask"])
    total = ig.steps.sum(dim=(1, 2)) + ig.static.sum(dim=1)
    gap = total - (fx - fb)
    assert torch.allclose(gap, ig.delta, atol=1e-3)  # Captum's delta is what we think it is
    assert (gap.abs() <= 0.05 * (fx - fb).abs() + 1e-3).all(), gap
    assert (ig.steps[batch["padding_mask"]] == 0).all()


def test_integrated_gradients_find_the_planted_events(setup):
    batch = setup["batch"]
    ig = integrated_gradients(setup["model"], batch, mean_baselines(batch, setup["encoder"]), n_steps=64)
    events = setup["event_index"]
    planted = torch.from_numpy(np.isin(events.rows.numpy(), setup["planted"]))
    p1 = precision_at_k(_event_scores(ig.steps.sum(-1), setup), events.padding, planted, planted.any(1),
                        batch["stay_id"], k=1)
    assert len(p1) >= 10
    assert p1["precision"].mean() >= 0.9
    assert p1["random_precision"].mean() <= 0.3


def test_layer_integrated_gradients_baseline_goes_through_the_projection(setup):
    model, batch = setup["model"], setup["batch"]
    steps_base, _ = mean_baselines(batch, setup["encoder"])
    attr, delta = layer_integrated_gradients(model, batch, steps_base, n_steps=200)
    assert attr.shape == (*batch["padding_mask"].shape, TINY["d_model"])
    fx = _logits(model, batch["steps"], batch["static"], batch["padding_mask"])
    fb = _logits(model, steps_base, batch["static"], batch["padding_mask"])  # real static held fixed
    gap = attr.sum(dim=(1, 2)) - (fx - fb)
    assert torch.allclose(gap, delta, atol=1e-3)
    assert (gap.abs() <= 0.05 * (fx - fb).abs() + 1e-3).all(), gap
    assert (attr[batch["padding_mask"]] == 0).all()


def test_event_ablation_equals_masked_model_difference(setup):
    model, batch, events = setup["model"], setup["batch"], setup["event_index"]
    attr = event_ablation(setup["explainer"].logits_without(batch, events), events, perturbations_per_eval=4)
    assert torch.allclose(attr, event_ablation(setup["explainer"].logits_without(batch, events), events, 1), atol=1e-5)
    padding = batch["padding_mask"]
    fx = _logits(model, batch["steps"], batch["static"], padding)
    for b in range(4):
        for t in range(padding.shape[1]):
            if padding[b, t]:
                assert attr[b, t] == 0
                continue
            removed = padding.clone()
            removed[b, t] = True
            expected = fx[b] - _logits(model, batch["steps"], batch["static"], removed)[b]
            assert attr[b, t] == pytest.approx(float(expected), abs=1e-5)


def test_group_ablation_replaces_whole_groups_by_their_baseline(setup):
    model, batch, encoder = setup["model"], setup["batch"], setup["encoder"]
    base = mean_baselines(batch, encoder)
    groups = group_ablation(model, batch, base, encoder)
    assert list(groups) == ["kind", "text", "time", *encoder.static_groups]
    padding = batch["padding_mask"]
    fx = _logits(model, batch["steps"], batch["static"], padding)
    text = encoder.step_groups["text"]
    steps = batch["steps"].clone()
    steps[..., text] = base[0][..., text]
    assert torch.allclose(groups["text"], fx - _logits(model, steps, batch["static"], padding), atol=1e-5)
    race = encoder.static_groups["race"]
    static = batch["static"].clone()
    static[:, race] = base[1][:, race]
    assert torch.allclose(groups["race"], fx - _logits(model, batch["steps"], static, padding), atol=1e-5)
    # the planted signal is in the text, not in the static features
    assert groups["text"].abs().mean() > 10 * groups["race"].abs().mean()


def test_scores_map_back_to_event_rows(setup):
    batch, events = setup["batch"], setup["events"]
    scores = torch.randn(batch["padding_mask"].shape)
    frame = scores_frame({"random": scores}, setup["event_index"], batch["stay_id"])
    assert len(frame) == int((~batch["padding_mask"]).sum())
    first = frame.iloc[0]
    assert events.loc[first["event_row"], "stay_id"] == first["stay_id"]
    assert first["score"] == pytest.approx(float(scores[0, first["position"]]))
    table = importance_by(frame.merge(events[["code"]], left_on="event_row", right_index=True), "code")
    assert table["n_events"].sum() == len(frame)


# -------------------------------------------------------------------- faithfulness


class SumOfFirstFeature(nn.Module):
    """logit = sum over real events of feature 0: deletion curves computable by hand."""

    def forward(self, steps, static, padding_mask):
        return {"logits": (steps[..., 0] * ~padding_mask).sum(dim=1)}


def _sigmoid(x):
    return 1 / (1 + math.exp(-x))


def test_deletion_curve_and_aopc_by_hand():
    steps = torch.tensor([[[1.0], [2.0], [-1.0], [0.0]], [[0.5], [0.0], [0.0], [0.0]]])
    padding = torch.tensor([[False, False, False, True], [False, True, True, True]])
    batch = {"steps": steps, "static": torch.zeros(2, 0), "padding_mask": padding}
    scores = torch.tensor([[0.3, 0.9, -5.0, 99.0], [1.0, 50.0, 50.0, 50.0]])  # padding scores must be ignored
    model = SumOfFirstFeature()

    def logits_without(removed, n):  # one event per step: removed events are removed steps
        return model(steps, batch["static"], padding | removed)["logits"]

    curve = torch.sigmoid(deletion_curve(logits_without, scores, padding, k_max=3))
    # stay 0 removes 2.0, then 1.0, then -1.0; stay 1 removes its one event, then nothing is left
    expected = torch.tensor([[_sigmoid(2.0), _sigmoid(0.0), _sigmoid(-1.0), _sigmoid(0.0)],
                             [_sigmoid(0.5), _sigmoid(0.0), _sigmoid(0.0), _sigmoid(0.0)]])
    assert torch.allclose(curve, expected)
    assert torch.allclose(aopc(curve), (expected[:, :1] - expected[:, 1:]).mean(dim=1))
    assert aopc(torch.tensor([[0.9, 0.5, 0.3]])).item() == pytest.approx(0.5)


def test_greedy_deletion_curve_by_hand():
    """Greedy deletion removes, step by step, the event whose removal lowers the logit
    most; with logit = sum of the kept events' values that is the largest value left,
    even when every choice left raises the logit."""
    steps = torch.tensor([[[1.0], [2.0], [-1.0], [0.0]], [[0.5], [0.0], [0.0], [0.0]]])
    padding = torch.tensor([[False, False, False, True], [False, True, True, True]])
    model = SumOfFirstFeature()

    def logits_without(removed, n):  # n = copies x 2 stays, copy-major
        copies = n // 2
        return model(steps.repeat(copies, 1, 1), torch.zeros(n, 0), padding.repeat(copies, 1) | removed)["logits"]

    curve = greedy_deletion_curve(logits_without, padding, k_max=4, copies_per_forward=3)
    # stay 0: 2 -> remove 2.0 -> 0 -> remove 1.0 -> -1 -> remove -1.0 -> 0 -> nothing left: 0
    # stay 1: 0.5 -> remove 0.5 -> 0, then nothing left
    assert curve.tolist() == [[2.0, 0.0, -1.0, 0.0, 0.0], [0.5, 0.0, 0.0, 0.0, 0.0]]


def test_precision_at_k_by_hand():
    padding = torch.tensor([[False, False, False, False], [False, False, True, True], [False, True, True, True]])
    rows = torch.tensor([[10, 11, 12, 13], [20, 21, -1, -1], [30, -1, -1, -1]])
    planted = torch.from_numpy(np.isin(rows.numpy(), [11, 13, 21]))
    scores = torch.tensor([[0.1, 0.9, 0.5, 0.2], [0.3, 0.2, 9.0, 9.0], [1.0, 0.0, 0.0, 0.0]])
    table = precision_at_k(scores, padding, planted, planted.any(1), torch.tensor([1, 2, 3]), k=2)
    assert table["stay_id"].tolist() == [1, 2]  # stay 3 has nothing planted
    assert table["precision"].tolist() == [0.5, 0.5]  # stay 1: top-2 = 11, 12; stay 2: 20, 21
    assert table["random_precision"].tolist() == [0.5, 0.5]
    # stay 1 has 2 planted events (11, 13), stay 2 one (21): hits / min(k, planted)
    assert table["recall_precision"].tolist() == [0.5, 1.0]
    # a random top-2 holds k * planted / events planted ones: 2 * 2/4 = 1 of 2, 2 * 1/2 = 1 of 1
    assert table["random_recall_precision"].tolist() == [0.5, 1.0]
    # companion-aware: 12 is a companion of stay 1's planted events, 30 is one of stay 3,
    # which has no planted event and so stays out (both figures cover the same stays)
    aware = planted | torch.from_numpy(np.isin(rows.numpy(), [12, 30]))
    table = precision_at_k(scores, padding, aware, planted.any(1), torch.tensor([1, 2, 3]), k=2)
    assert table["stay_id"].tolist() == [1, 2]
    assert table["precision"].tolist() == [1.0, 0.5]  # stay 1: 11 planted, 12 companion
    assert table["recall_precision"].tolist() == [1.0, 1.0]
    assert table["random_precision"].tolist() == [0.75, 0.5]  # 3 truth events of 4


def test_truth_reader_reports_missing_companions(tmp_path):
    planted = pd.DataFrame({"stay_id": [1], "event_row": [11], "rule": ["vasopressor"]})
    planted.to_parquet(tmp_path / "planted_events.parquet")
    truth = read_truth(tmp_path)
    assert truth.planted_rows.tolist() == [11] and truth.companion_rows is None
    assert "companion_events.parquet not found" in truth.companion_reason
    planted.assign(event_row=[12]).to_parquet(tmp_path / "companion_events.parquet")
    assert read_truth(tmp_path).companion_rows.tolist() == [12]
    assert read_truth(tmp_path / "absent") is None


def test_attributions_beat_random_deletion(setup):
    model, batch, events = setup["model"], setup["batch"], setup["event_index"]
    ig = integrated_gradients(model, batch, mean_baselines(batch, setup["encoder"]), n_steps=64)
    without = setup["explainer"].logits_without(batch, events)
    curves = curves_to_risk(deletion_curves(without, {"ig": _event_scores(ig.steps.sum(-1), setup),
                                                      "ablation": event_ablation(without, events)},
                                            events.padding, 3, random_scores(batch["stay_id"], events.padding, 5, 0)))
    table = deletion_table(curves)
    versus = aopc_against_random(curves)
    assert versus["ig"]["ci_low"] > 0.1 and versus["ablation"]["ci_low"] > 0.1
    assert set(table["method"]) == {"ig", "ablation", "random"} and len(table) == 3 * 4
    aopcs = table.groupby("method")["aopc"].first()
    assert aopcs["ig"] > aopcs["random"] + 0.1
    assert aopcs["ablation"] > aopcs["random"] + 0.1
    # removing nothing changes nothing: every method starts from the same risk
    assert table[table["k"] == 0]["risk"].nunique() == 1


def test_jensen_shannon_by_hand():
    p, q = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    assert _jsd(p, q).item() == pytest.approx(1.0)
    assert _jsd(p, p).item() == pytest.approx(0.0)


def test_head_specialisation_report(setup):
    model, batch = setup["model"], setup["batch"]
    _, att = forward_with_attention(model, batch)
    summary, kinds = head_specialisation(att.pooling, batch, n_permutations=50)
    assert 0 <= summary["mean_jsd"] <= 1 and 0 <= summary["p_value_agree"] <= 1
    assert summary["null_jsd_q05"] <= summary["null_mean_jsd"] <= summary["null_jsd_q95"]
    assert np.allclose(kinds.groupby("head")["attention_share"].sum(), 1.0)
    # identical heads: zero divergence, below every null draw (the smallest p-value 50 draws give)
    same = att.pooling[:, :1].expand_as(att.pooling)
    summary_same, _ = head_specialisation(same, batch, n_permutations=50)
    assert summary_same["mean_jsd"] == pytest.approx(0.0, abs=1e-6)
    assert summary_same["null_jsd_q05"] > 0
    assert summary_same["p_value_agree"] == pytest.approx(1 / 51)


def test_attention_scores_are_zero_on_padding(setup):
    batch = _heavily_padded(setup["batch"])
    _, att = forward_with_attention(setup["model"], batch)
    rollout = attention_rollout(att.layers, batch["padding_mask"])
    for scores in (pooling_event_scores(att.pooling, batch["padding_mask"]),
                   pooling_event_scores(att.pooling, batch["padding_mask"], rollout)):
        assert (scores[batch["padding_mask"]] == 0).all() and not torch.isnan(scores).any()


# --------------------------------------------------------------------------- plots


def test_plots_write_png_and_csv(setup, tmp_path):
    events = pd.DataFrame({
        "hours_before_cutoff": [30.0, 12.5, 2.0, 0.5], "event_type": ["lab", "prescription", "lab", "procedure"],
        "text": ["Lab: Creatinine 2.3 mg/dL (abnormal)", "Rx: Norepinephrine 0.1 mcg/kg/min IV",
                 "Lab: Lactate 6.1 mmol/L (abnormal)", "Procedure: Invasive Ventilation"],
        "score": [0.2, 1.5, 3.0, -0.7],
    })
    data = stay_timeline(events, tmp_path / "timeline.png", "stay 1000: died", n_labels=2)
    assert data["labelled"].tolist() == [False, True, True, False]
    heat = head_heatmap(np.full((4, 4), 0.25), events["text"].tolist(), tmp_path / "heads.png", "pooling")
    bars = importance_bars(pd.DataFrame({"event_type": ["lab", "procedure"], "mean_abs_score": [1.0, 0.2]}),
                           "event_type", "mean_abs_score", tmp_path / "kinds.png", "per kind")
    for name, frame in (("timeline", data), ("heads", heat), ("kinds", bars)):
        png = tmp_path / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert len(pd.read_csv(png.with_suffix(".csv"))) == len(frame)
    assert len(heat) == 16


# ---------------------------------------------------------------- the whole split


def test_explain_split_writes_every_artifact(setup, tmp_path):
    events, cohort, texts, vectors, planted = make_toy_data()
    test = build_dataset(events, cohort, texts, vectors, setup["encoder"], "test")
    config = _config(batch_size=8, ig_steps=32, k_max=3, precision_k=(1, 3), n_random=3, n_permutations=20,
                     plot_stays=2, sanity_stays=8)
    truth = Truth(planted, None, "no companions recorded")
    metrics, sanity = explain_split(setup["explainer"], test, collate, event_descriptions(events, cohort), tmp_path,
                                    config, truth, logit_shift=0.0)
    assert metrics["stays"] == len(test)
    assert set(metrics["aopc"]) == {"integrated_gradients", "layer_integrated_gradients", "event_ablation",
                                    "attention_pooling", "attention_rollout", "random"}
    assert metrics["aopc_calibrated"] == pytest.approx(metrics["aopc"])  # no prior correction given
    p1 = metrics["precision_at_k"]["k=1"]
    assert p1["integrated_gradients"] > 3 * p1["random"]
    assert metrics["companion_aware"] == {"value": None, "reason": "no companions recorded"}
    scores = pd.read_parquet(tmp_path / "event_scores.parquet")
    assert len(scores) == 5 * metrics["events"]
    assert (events.loc[scores["event_row"], "text"].to_numpy() == scores["text"].to_numpy()).all()
    for name in ("static_attributions.parquet", "group_ablation.parquet", "predictions.parquet", "deletion.png",
                 "deletion.csv", "precision_at_k.csv", "head_kinds.csv", "importance_code.csv",
                 "importance_code_layer_integrated_gradients.png", "attention/batch_000.npz"):
        assert (tmp_path / name).exists(), name
    assert not (tmp_path / "attention" / "batch_001.npz").exists()
    assert len(list((tmp_path / "stays").glob("timeline_*.png"))) == 2
    assert len(list((tmp_path / "stays").glob("heads_*.png"))) == 2
    heads = pd.read_csv(tmp_path / "attention_heads.csv")  # 2 layers x 4 heads + 4 pooling heads
    assert len(heads) == 2 * 4 + 4 and set(heads["k_requested"]) == {3}
    # the sanity stays: planted-event stays first
    assert sum(len(b.events.padding) for b in sanity) == 8
    assert all(bool(np.isin(b.events.rows.numpy(), planted).any(1).all()) for b in sanity)
    sample, _ = explain_split(setup["explainer"], test, collate, event_descriptions(events, cohort),
                              tmp_path / "sample", dataclasses.replace(config, ig_steps=16, k_max=2, n_random=2,
                                                                       n_permutations=10, plot_stays=1, max_stays=10))
    assert sample["stays"] == 10 and "precision_at_k" not in sample  # no planted truth given
    assert sample["precision"]["value"] is None


def test_importance_by_code_names_each_code_for_a_reader():
    scores = pd.DataFrame({
        "method": "integrated_gradients",
        "code": ["LAB//50813", "LAB//50813", "LAB//50813", "ITEM//225792"],
        "text": ["Lab: Lactate 5.2 mmol/L (abnormal)", "Lab: Lactate 4.7 mmol/L (abnormal)",
                 "Lab: Lactate 1.1 mmol/L", "Procedure: Invasive Ventilation"],
        "score": [0.9, 0.7, -0.1, 0.3],
    })
    table = importance_by(scores, "code").set_index("code")
    assert table.loc["LAB//50813", "description"] == "Lab: Lactate mmol/L (abnormal)"
    assert table.loc["ITEM//225792", "description"] == "Procedure: Invasive Ventilation"
    assert table.loc["LAB//50813", "mean_abs_score"] == pytest.approx(1.7 / 3)
    assert table.loc["LAB//50813", "n_events"] == 3


# ===================================================================== token models

VOCAB = 40
DANGER = (37, 38, 39)  # event tokens that make a stay die
TOKEN_TINY = {
    "lstm": {"embedding_dim": 16, "hidden_size": 16, "num_layers": 1, "dropout": 0.0, "bidirectional": True},
    "transformer": {"d_model": 16, "n_layers": 2, "n_heads": 2, "dropout": 0.0, "attention_dropout": 0.0,
                    "max_positions": 32},
    "gpt2": {"n_embd": 16, "n_layer": 2, "n_head": 2, "dropout": 0.0, "attention_dropout": 0.0, "max_positions": 32},
}


def make_token_toy(n: int = 160, seed: int = 0):
    """Token stays `<bos>` + 3 demographic tokens + 4-9 events + `<eos>`; every other stay
    has one danger token among its events and dies. Every third stay's first event is
    two tokens (same event_row), to exercise events that span tokens. Returns the
    dataset and the planted event rows (the danger events)."""
    rng = np.random.default_rng(seed)
    ids, rows, labels, planted = [], [], [], []
    row = 10_000 * seed
    for i in range(n):
        dies = i % 2 == 0
        kinds = list(rng.integers(8, 37, size=int(rng.integers(4, 10))))
        if dies:
            kinds[int(rng.integers(len(kinds)))] = int(rng.choice(DANGER))
        seq, rws = [BOS_ID, 5, int(rng.integers(6, 8)), 7], [-1, -1, -1, -1]
        for j, token in enumerate(kinds):
            extra = [int(rng.integers(8, 37))] if (j == 0 and i % 3 == 0 and token not in DANGER) else []
            seq += [int(token), *extra]
            rws += [row] * (1 + len(extra))
            if token in DANGER:
                planted.append(row)
            row += 1
        ids.append(np.array(seq + [EOS_ID]))
        rows.append(np.array(rws + [-1]))
        labels.append(int(dies))
    stay_ids = np.arange(n) + 1000 + 10_000 * seed
    frame = pd.DataFrame({"stay_id": stay_ids, "subject_id": stay_ids, "input_ids": ids, "mortality": labels})
    return TokenEventDataset(frame, rows), np.array(planted)


def train_token_model(name: str, dataset, steps: int = 150, seed: int = 0):
    torch.manual_seed(seed)
    model = build_model(name, vocab_size=VOCAB, **TOKEN_TINY[name])
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    loader = torch.utils.data.DataLoader(dataset, batch_size=32, shuffle=True, collate_fn=collate_token_events,
                                         generator=torch.Generator().manual_seed(seed))
    model.train()
    step = 0
    while step < steps:
        for batch in loader:
            logit = model(batch["input_ids"], batch["attention_mask"])["logits"]
            loss = F.binary_cross_entropy_with_logits(logit, batch["label"])
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
            if step == steps:
                break
    return model.eval()


@pytest.fixture(scope="module")
def tokens():
    train, _ = make_token_toy(160, seed=0)
    test, planted = make_token_toy(48, seed=1)
    models = {name: train_token_model(name, train) for name in TOKEN_TINY}
    batch = collate_token_events([test[i] for i in range(16)])
    return dict(train=train, test=test, planted=planted, models=models, batch=batch)


def _logit(model, ids: list[int]) -> float:
    """The model on one stay given as a plain list of token ids (the oracle for removal)."""
    ids_t = torch.tensor([ids])
    with torch.no_grad():
        return float(model(ids_t, torch.ones_like(ids_t, dtype=torch.bool))["logits"][0])


def test_index_events_groups_the_tokens_of_one_event():
    event_row = torch.tensor([[-1, 5, 5, 7, -1, 9, -1], [-1, 3, -1, 4, 4, 0, 0]])
    real = torch.tensor([[True] * 7, [True] * 5 + [False] * 2])  # row 1 is padded after 5 tokens
    events = index_events(event_row, real)
    assert events.index.tolist() == [[-1, 0, 0, 1, -1, 2, -1], [-1, 0, -1, 1, 1, -1, -1]]
    assert events.rows.tolist() == [[5, 7, 9], [3, 4, -1]]
    assert events.padding.tolist() == [[False, False, False], [False, False, True]]
    scores = torch.tensor([[100.0, 1, 2, 3, 100, 4, 100], [100, 5, 100, 6, 7, 100, 100]])
    assert to_events(scores, events).tolist() == [[3.0, 3.0, 4.0], [5.0, 13.0, 0.0]]  # tokens summed, rest dropped
    removed = torch.tensor([[True, False, False], [False, True, False]])
    assert positions_of(removed, events).tolist() == [
        [False, True, True, False, False, False, False], [False, False, False, True, True, False, False]]


def test_compact_moves_kept_tokens_left_and_pads_the_rest():
    ids = torch.tensor([[2, 10, 11, 12, 3], [2, 20, 3, 0, 0]])
    keep = torch.tensor([[True, False, True, False, True], [True, False, True, False, False]])
    new_ids, mask = compact(ids, keep)
    assert new_ids.tolist() == [[2, 11, 3, PAD_ID, PAD_ID], [2, 3, PAD_ID, PAD_ID, PAD_ID]]
    assert mask.tolist() == [[True, True, True, False, False], [True, True, False, False, False]]


@pytest.mark.parametrize("name", list(TOKEN_TINY))
def test_removing_an_event_equals_the_stay_rebuilt_without_it(tokens, name):
    model, batch = tokens["models"][name], tokens["batch"]
    explainer = TokenExplainer(model, name)
    events = explainer.events(batch)
    ablation = event_ablation(explainer.logits_without(batch, events), events, perturbations_per_eval=3)
    full = explainer.logits(batch)
    for b in (0, 3, 7):  # stay 0 and 3 start with a two-token event
        ids = batch["input_ids"][b, : int(batch["lengths"][b])].tolist()
        rows = batch["event_row"][b, : int(batch["lengths"][b])].tolist()
        assert full[b].item() == pytest.approx(_logit(model, ids), abs=1e-4)  # padding changes nothing
        for e in range(int(events.n_events[b])):
            row = int(events.rows[b, e])
            without = [t for t, r in zip(ids, rows) if r != row]
            removed = torch.zeros_like(events.padding)
            removed[b, e] = True
            got = explainer.logits(batch, positions_of(removed, events))[b]
            assert got.item() == pytest.approx(_logit(model, without), abs=1e-4)
            assert ablation[b, e].item() == pytest.approx(_logit(model, ids) - _logit(model, without), abs=1e-4)
    assert (ablation[events.padding] == 0).all()


@pytest.mark.parametrize("name", list(TOKEN_TINY))
def test_layer_ig_on_the_embedding_is_complete_and_zero_off_events(tokens, name):
    model, batch = tokens["models"][name], tokens["batch"]
    model.train()  # LIG must switch to eval itself and restore the mode
    explainer = TokenExplainer(model, name)
    model.train()
    events = explainer.events(batch)
    scores, delta, change = explainer.layer_integrated_gradients(batch, events, n_steps=128, internal_batch_size=512)
    assert model.training
    model.eval()
    # the <unk> baseline: every event token replaced, every other token kept
    baseline = batch["input_ids"].clone()
    baseline[events.index >= 0] = UNK_ID
    with torch.no_grad():
        expected = explainer.logits(batch) - model(baseline, batch["attention_mask"])["logits"]
    assert torch.allclose(change, expected, atol=1e-5)
    # delta = sum over ALL positions - change; events alone must account for it, so the
    # <bos>/demographic/<eos> tokens (equal in input and baseline) got exactly nothing
    assert torch.allclose(scores.sum(dim=1) - change, delta, atol=1e-4)
    # convergence: small for the typical stay (a saturated toy logit leaves a few stays rougher)
    assert delta.abs().median() <= 0.01 * change.abs().median(), (delta, change)
    assert (scores[events.padding] == 0).all()


def test_transformer_attention_hooks_reproduce_each_module_output(tokens):
    model, batch = tokens["models"]["transformer"], tokens["batch"]
    outputs, inputs = [], []

    def keep(module, args, output):  # returns None: the output is left as it is
        inputs.append(args[0])
        outputs.append(output)

    handles = [block.attn.register_forward_hook(keep) for block in model.blocks]
    with torch.no_grad(), record_token_attention(model) as records:
        model(batch["input_ids"], batch["attention_mask"])
    for h in handles:
        h.remove()
    layers = token_layer_attention(records)
    assert len(layers) == TOKEN_TINY["transformer"]["n_layers"]
    B, T = batch["input_ids"].shape
    for block, A, x, out in zip(model.blocks, layers, inputs, outputs, strict=True):
        assert A.shape == (B, 2, T, T)
        assert (A.triu(diagonal=1) == 0).all()  # causal: no query sees a later key
        D = x.shape[-1]
        v = block.attn.qkv(x).split(D, dim=2)[2].view(B, T, 2, D // 2).transpose(1, 2)  # [B, nh, T, hd]
        with torch.no_grad():
            rebuilt = block.attn.proj((A @ v).transpose(1, 2).reshape(B, T, D))
        assert torch.allclose(rebuilt, out, atol=1e-5)
    real = batch["attention_mask"]
    padded_keys = (~real)[:, None, None, :] & real[:, None, :, None]  # real queries, padded keys
    assert all((A.masked_select(padded_keys.expand_as(A)) == 0).all() for A in layers)


def test_gpt2_attention_is_read_from_the_eager_forward_and_restored(tokens):
    model, batch = tokens["models"]["gpt2"], tokens["batch"]
    before = model.backbone.config._attn_implementation
    with torch.no_grad():
        plain = model(batch["input_ids"], batch["attention_mask"])["logits"]
        with record_token_attention(model) as records:
            captured = model(batch["input_ids"], batch["attention_mask"])["logits"]
    assert model.backbone.config._attn_implementation == before
    assert torch.allclose(plain, captured, atol=1e-5)  # eager and SDPA agree
    layers = token_layer_attention(records)
    real = batch["attention_mask"]
    for A in layers:
        assert (A.triu(diagonal=1) == 0).all()
        rows = A.sum(-1)[real[:, None, :].expand(-1, A.shape[1], -1)]
        assert torch.allclose(rows, torch.ones_like(rows), atol=1e-5)
        padded_keys = (~real)[:, None, None, :] & real[:, None, :, None]
        assert (A.masked_select(padded_keys.expand_as(A)) == 0).all()
    with record_token_attention(model) as records:
        pass
    with pytest.raises(RuntimeError, match="hooks fired"):
        token_layer_attention(records)


@pytest.mark.parametrize("name", list(TOKEN_TINY))
def test_token_explain_split_finds_the_planted_events(tokens, name, tmp_path):
    explainer = TokenExplainer(tokens["models"][name], name)
    rows = np.concatenate([r.numpy() for r in tokens["test"].event_rows])
    rows = rows[rows >= 0]
    descriptions = pd.DataFrame({"event_type": "lab", "code": [f"TOK//{r % 7}" for r in rows],
                                 "text": [f"event {r}" for r in rows], "hours_before_cutoff": 1.0},
                                index=pd.Index(rows, name="event_row"))
    config = _config(precision_k=(1, 3))
    metrics, _ = explain_split(explainer, tokens["test"], collate_token_events, descriptions, tmp_path, config,
                                    Truth(tokens["planted"], tokens["planted"][::2], None))
    assert set(metrics["aopc"]) == {*explainer.methods, "random"}
    for method in ("layer_integrated_gradients", "event_ablation"):
        assert metrics["recall_precision_at_k"]["k=1"][method] >= 0.9
        assert metrics["aopc_vs_random"][method]["ci_low"] > 0.1
    # every other planted event is also a "companion": companion-aware truth is a superset
    aware = metrics["companion_aware"]["recall_precision_at_k"]["k=1"]
    assert aware["stays"] == metrics["recall_precision_at_k"]["k=1"]["stays"]
    scores = pd.read_parquet(tmp_path / "event_scores.parquet")
    assert len(scores) == len(explainer.methods) * metrics["events"] == len(explainer.methods) * len(rows)
    for name_ in ("deletion.png", "importance_code_layer_integrated_gradients.png", "attention/batch_000.npz"):
        assert (tmp_path / name_).exists(), name_
    if name != "lstm":  # every self-attention head, scored on its own
        heads = pd.read_csv(tmp_path / "attention_heads.csv")
        assert len(heads) == 2 * 2 and metrics["attention_heads"]["heads"] == 4
    assert len(list((tmp_path / "stays").glob("timeline_*.png"))) == 1


def test_length_batches_keep_the_budget_and_every_stay_once():
    lengths = np.array([5, 40, 3, 300, 12, 12, 90, 7, 600, 25])
    batches = length_batches(lengths, max_rows=3, max_tokens=100)
    assert sorted(np.concatenate(batches).tolist()) == list(range(len(lengths)))
    assert np.concatenate(batches).tolist() == np.argsort(lengths, kind="stable").tolist()  # by length
    for b in batches:
        assert len(b) <= 3 and (len(b) == 1 or len(b) * lengths[b].max() <= 100), lengths[b]
    assert [lengths[b].tolist() for b in batches] == [[3, 5, 7], [12, 12, 25], [40], [90], [300], [600]]
    # no binding budget: batches of max_rows by length, as before the budget
    assert [len(b) for b in length_batches(lengths, 4, 2**62)] == [4, 4, 2]


def test_random_rankings_are_each_stays_own():
    """A stay's random rankings come from its own stream: the same in any batch, at any
    padding width, and different from another stay's."""
    alone = random_scores(torch.tensor([7]), torch.tensor([[False] * 4]), 3, seed=0)  # [3, 1, 4]
    padding = torch.tensor([[False] * 6, [False] * 4 + [True] * 2])
    batched = random_scores(torch.tensor([9, 7]), padding, 3, seed=0)  # [3, 2, 6]
    assert torch.equal(batched[:, 1, :4], alone[:, 0]) and (batched[:, 1, 4:] == 0).all()
    assert not torch.equal(batched[:, 0, :4], alone[:, 0])
    assert not torch.equal(random_scores(torch.tensor([7]), padding[1:, :4], 3, seed=1), alone)


def test_explain_split_does_not_depend_on_the_batching(tokens, tmp_path):
    """Every stay alone or all in one batch: the same event scores (up to padding's
    float noise) and the same deletion curves, the random rankings' included."""
    explainer = TokenExplainer(tokens["models"]["transformer"], "transformer")
    rows = np.concatenate([r.numpy() for r in tokens["test"].event_rows])
    rows = rows[rows >= 0]
    descriptions = pd.DataFrame({"event_type": "lab", "code": "TOK//1", "text": "event", "hours_before_cutoff": 1.0},
                                index=pd.Index(rows, name="event_row"))
    out = {}
    for name, rows_max, tokens_max in (("alone", 1, 1), ("one_batch", 1000, 10**9)):
        config = _config(precision_k=(1,), batch_size=rows_max, batch_tokens=tokens_max, max_stays=12)
        metrics, _ = explain_split(explainer, tokens["test"], collate_token_events, descriptions,
                                   tmp_path / name, config, Truth(tokens["planted"], None, "none"))
        scores = pd.read_parquet(tmp_path / name / "event_scores.parquet")
        out[name] = metrics, scores.sort_values(["stay_id", "method", "position"]).reset_index(drop=True)
    (alone, a), (one_batch, b) = out["alone"], out["one_batch"]
    assert len(a) == len(b) > 0 and (a["event_row"] == b["event_row"]).all()
    assert np.allclose(a["score"], b["score"], atol=1e-4)
    assert alone["aopc"].keys() == one_batch["aopc"].keys()
    for method, value in alone["aopc"].items():
        assert value == pytest.approx(one_batch["aopc"][method], abs=1e-5), method


@pytest.mark.parametrize("name", list(TOKEN_TINY))
def test_stacked_deletion_curves_equal_one_removal_set_per_forward(tokens, name):
    """deletion_curves runs every ranking's k = 1..K removals through a few large forwards
    and k = 0 once; each curve must equal removing that ranking's top k, one forward per k."""
    explainer = TokenExplainer(tokens["models"][name], name)
    batch = tokens["batch"]
    events = explainer.events(batch)
    without = explainer.logits_without(batch, events)
    scores = {"ablation": event_ablation(without, events), "position": -events.index.new_tensor(
        range(events.rows.shape[1])).float().expand(events.rows.shape)}
    randoms = random_scores(batch["stay_id"], events.padding, 3, 5)
    stacked = deletion_curves(without, scores, events.padding, 4, randoms, copies_per_forward=7)
    oracle = {n: deletion_curve(without, s, events.padding, k_max=4) for n, s in scores.items()}
    oracle["random"] = torch.stack([deletion_curve(without, r, events.padding, k_max=4) for r in randoms])
    assert stacked.keys() == oracle.keys() and stacked["random"].shape == (3, 16, 5)
    for n in oracle:
        assert torch.allclose(stacked[n], oracle[n], atol=1e-5), n
    # and by hand: "position" removes each stay's first events, i.e. the stay rebuilt without them
    for b in (0, 3):
        ids = batch["input_ids"][b, : int(batch["lengths"][b])].tolist()
        rows = batch["event_row"][b, : int(batch["lengths"][b])].tolist()
        first_two = set(events.rows[b, :2].tolist())
        kept = [t for t, r in zip(ids, rows) if r not in first_two]
        assert stacked["position"][b, 2].item() == pytest.approx(_logit(explainer.model, kept), abs=1e-4)


def test_sanity_stays_carry_the_scores_explain_split_gave_them(tokens, tmp_path):
    """The randomisation checks compare against the trained model's scores from
    explain_split instead of explaining the stays again: re-collated in other batches,
    each stay's scores must be the ones its events get when explained afresh."""
    explainer = TokenExplainer(tokens["models"]["gpt2"], "gpt2")
    rows = np.concatenate([r.numpy() for r in tokens["test"].event_rows])
    rows = rows[rows >= 0]
    descriptions = pd.DataFrame({"event_type": "lab", "code": "TOK//1", "text": "event", "hours_before_cutoff": 1.0},
                                index=pd.Index(rows, name="event_row"))
    config = _config(precision_k=(1,), batch_size=5, sanity_stays=12)
    _, sanity = explain_split(explainer, tokens["test"], collate_token_events, descriptions, tmp_path, config,
                              Truth(tokens["planted"], None, "none"))
    assert sum(len(b.events.padding) for b in sanity) == 12
    for b in sanity:
        fresh = explainer.explain(b.batch, b.events, config).scores
        assert b.scores.keys() == fresh.keys()
        for m in fresh:
            assert torch.allclose(b.scores[m], fresh[m], atol=1e-4), m
            assert (b.scores[m][b.events.padding] == 0).all()


class StepRecorder(TokenExplainer):
    """Records the IG steps of every explain call (a shared list survives `randomised`)."""

    def __init__(self, model, name, calls=None):
        super().__init__(model, name)
        self.calls = [] if calls is None else calls

    def _init_kwargs(self):
        return {"calls": self.calls}

    def explain(self, batch, events, config):
        self.calls.append(config.ig_steps)
        return super().explain(batch, events, config)


def test_sanity_checks_explain_only_the_changed_models_at_sanity_ig_steps(tokens):
    """With the trained model's scores carried in, the cascade explains each randomised
    model once and the label check the shuffled one once, all at `sanity_ig_steps`; the
    trained model is explained once more, at `sanity_ig_steps`, only for the steps control:
    its Spearman with the carried scores, recomputed here by hand."""
    model = tokens["models"]["lstm"]
    explainer = StepRecorder(model, "lstm")
    batch = tokens["batch"]
    events = explainer.events(batch)
    config = _config(precision_k=(1,), ig_steps=32, sanity_ig_steps=8)
    trained = TokenExplainer(model, "lstm").explain(batch, events, config).scores
    report = sanity_checks(explainer, [SanityBatch(batch, events, trained)], config,
                           Truth(tokens["planted"], None, "none"), explainer.with_model(model), {})
    assert explainer.calls == [8] * (len(explainer.cascade()) + 2)
    assert report["ig_steps"] == 8
    at_8 = TokenExplainer(model, "lstm").explain(batch, events, dataclasses.replace(config, ig_steps=8)).scores
    for m, r in report["parameter_randomisation"]["methods"].items():
        by_hand = np.nanmean(spearman_per_stay(trained[m], at_8[m], events.padding))
        assert r["spearman_trained_at_check_steps"] == pytest.approx(by_hand)
    lig = report["parameter_randomisation"]["methods"]["layer_integrated_gradients"]
    assert lig["spearman_trained_at_check_steps"] > 0.9  # 8 steps rank events as 32 do: the check sees weights
    label = report["label_randomisation"]["recall_precision_at_k"]["k=1"]["layer_integrated_gradients"]
    assert label["trained"] >= 0.7  # the carried scores find the planted events
    # without carried scores the trained model is explained once more
    explainer.calls.clear()
    parameter_randomisation(explainer, [SanityBatch(batch, events)], dataclasses.replace(config, ig_steps=8))
    assert explainer.calls == [8] * (len(explainer.cascade()) + 1)


# ===================================================================== sanity checks


def test_spearman_per_stay_by_hand():
    a = torch.tensor([[1.0, 2.0, 3.0, 4.0], [1.0, 2.0, 3.0, 0.0], [1.0, 1.0, 1.0, 0.0], [1.0, 2.0, 0.0, 0.0]])
    b = torch.tensor([[10.0, 20.0, 30.0, 40.0], [3.0, 2.0, 1.0, 0.0], [1.0, 2.0, 3.0, 0.0], [2.0, 1.0, 0.0, 0.0]])
    padding = torch.tensor([[False] * 4, [False, False, False, True], [False, False, False, True],
                            [False, False, True, True]])
    rho = spearman_per_stay(a, b, padding)
    assert rho[0] == pytest.approx(1.0) and rho[1] == pytest.approx(-1.0)
    assert np.isnan(rho[2]) and np.isnan(rho[3])  # constant scores; fewer than 3 events


class PositionExplainer(TokenExplainer):
    """A 'method' that ignores the model: later events score higher. It must fail."""

    def __init__(self, model, name):
        super().__init__(model, name)
        self.methods = ("position",)

    def explain(self, batch, events, config):
        scores = torch.arange(events.rows.shape[1], dtype=torch.float32).expand_as(events.rows).clone()
        return Explanation({"position": scores.masked_fill(events.padding, 0.0)}, self.logits(batch))


def test_parameter_randomisation_passes_gradients_and_fails_a_model_blind_method(tokens):
    model, batch = tokens["models"]["lstm"], tokens["batch"]
    explainer = TokenExplainer(model, "lstm")
    sanity = [SanityBatch(batch, explainer.events(batch))]
    config = _config(n_random=2)
    report = parameter_randomisation(explainer, sanity, config)
    assert [s["randomised_down_to"] for s in report["methods"]["layer_integrated_gradients"]["stages"]] == [
        "mortality_head", "backward_lstm", "forward_lstm", "embeddings"]
    assert report["methods"]["layer_integrated_gradients"]["passes"]
    assert report["methods"]["event_ablation"]["passes"]
    blind = parameter_randomisation(PositionExplainer(model, "lstm"), sanity, config)["methods"]["position"]
    assert blind["spearman_fully_randomised"] == pytest.approx(1.0) and not blind["passes"]
    # randomising works on a copy: the trained model is untouched
    assert torch.equal(explainer.logits(batch), TokenExplainer(model, "lstm").logits(batch))


def test_cascade_reaches_every_parameter_that_feeds_the_logit(tokens, setup):
    for explainer in [TokenExplainer(m, n) for n, m in tokens["models"].items()] + [setup["explainer"]]:
        prefixes = tuple(p for _, group in explainer.cascade() for p in group)
        randomised = explainer.randomised(prefixes, seed=0).model
        trained = dict(explainer.model.named_parameters())
        unchanged = [n for n, p in randomised.named_parameters() if torch.equal(p, trained[n])]
        # what stays: only the next-token head (never on the mortality path) and the
        # zero-initialised biases/pad rows that re-initialisation gives the same values
        assert all(n.startswith("lm_head") or n.endswith("bias") or "ln" in n or "norm" in n for n in unchanged), \
            (explainer.name, unchanged)


def _shuffled_lstm(tokens, seed: int, leak: bool = False):
    """A tiny lstm trained on shuffled labels. `leak` plants a leak: the loader restores
    every stay's TRUE label by stay_id (as a loader that re-reads labels from the cohort
    table would), so the shuffling never reaches the loss."""
    from ehrseq.data import token_loader
    from ehrseq.tasks import MortalityTask, mortality_task
    from ehrseq.training import FitConfig

    true_label = {int(split[i]["stay_id"]): float(split[i]["label"])
                  for split in (tokens["train"], tokens["test"]) for i in range(len(split))}

    def leaky_collate(items):
        batch = collate_token_events(items)
        batch["label"] = torch.tensor([true_label[int(s)] for s in batch["stay_id"]])
        return batch

    def loader(dataset, shuffle):
        return token_loader(dataset, 32, device=torch.device("cpu"), shuffle=shuffle,
                            collate_fn=leaky_collate if leak else collate_token_events)

    fit_config = FitConfig(epochs=1, lr=1e-2, weight_decay=0.0, warmup_steps=0, schedule="cosine", min_lr_ratio=0.1,
                           grad_clip=1.0, patience=None, seed=0)
    model, task, summary = shuffled_label_model(
        "lstm", {"vocab_size": VOCAB, **TOKEN_TINY["lstm"]}, tokens["train"], loader, fit_config,
        lambda labels: mortality_task(labels, "pos_weight", MortalityTask)[0], 160, 8, seed, torch.device("cpu"))
    return model, task, summary, loader


def test_label_randomisation_trains_by_the_shared_loop_and_learns_nothing(tokens, tmp_path):
    from ehrseq.metrics import auroc
    from ehrseq.training import predict

    relabelled = RelabelledDataset(tokens["train"], np.array([0, 1, 2]), np.array([2, 0, 1]), ("label",))
    assert [float(relabelled[i]["label"]) for i in range(3)] == [float(tokens["train"][j]["label"]) for j in (2, 0, 1)]
    assert relabelled.lengths.tolist() == [len(tokens["train"][i]["input_ids"]) for i in range(3)]

    model, task, summary, loader = _shuffled_lstm(tokens, seed=0)
    assert summary["epochs"] == 8 and summary["train_stays"] == 128 and summary["seed"] == 0
    p = predict(model, task, loader(tokens["test"], False), torch.device("cpu"))
    assert abs(auroc(p["label"], p["prob"]) - 0.5) < 0.25  # the trained toy model reaches 1.0
    explainer = TokenExplainer(tokens["models"]["lstm"], "lstm")
    sanity = [SanityBatch(tokens["batch"], explainer.events(tokens["batch"]))]
    config = _config(precision_k=(1,), n_random=2)
    report = sanity_checks(explainer, sanity, config, Truth(tokens["planted"], None, "none"),
                           explainer.with_model(model), {"passes": True})
    label = report["label_randomisation"]["recall_precision_at_k"]["k=1"]["layer_integrated_gradients"]
    assert label["trained"] >= 0.7 and label["shuffled"] <= label["trained"] - 0.3
    assert report["label_randomisation"]["passes"]
    assert report["parameter_randomisation"]["methods"]["layer_integrated_gradients"]["passes"]


def test_label_randomisation_verdict_by_hand():
    from scipy import stats

    verdict = label_randomisation_verdict([0.60, 0.40, 0.56], tolerance=0.1)
    assert verdict["mean"] == pytest.approx(0.52) and verdict["passes"]
    half = stats.t.ppf(0.975, 2) * np.std([0.60, 0.40, 0.56], ddof=1) / np.sqrt(3)
    assert verdict["mean_ci95"] == pytest.approx([0.52 - half, 0.52 + half])
    lean = label_randomisation_verdict([0.56, 0.54, 0.55], tolerance=0.1)  # small, but every seed one way
    assert not lean["ci_covers_half"] and not lean["passes"]
    wide = label_randomisation_verdict([0.95, 0.40, 0.95], tolerance=0.1)  # the interval reaches 0.5, the mean is far
    assert wide["ci_covers_half"] and not wide["passes"]
    one = label_randomisation_verdict([0.58], tolerance=0.1)
    assert one["mean_ci95"] is None and one["passes"]


def test_stratified_auroc_removes_a_confound_and_keeps_a_signal():
    from sklearn.metrics import roc_auc_score

    from ehrseq.explain.sanity import stratified_auroc

    rng = np.random.default_rng(0)
    n_events = rng.integers(5, 200, size=4000)
    death = (rng.random(4000) < 0.05 + 0.3 * (n_events > 100)).astype(int)  # longer stays die more
    follows_length = n_events + rng.normal(0, 1, 4000)  # knows nothing but the length
    assert roc_auc_score(death, follows_length) > 0.7
    assert abs(stratified_auroc(death, follows_length, n_events, 10) - 0.5) < 0.05
    knows = death + rng.normal(0, 1, 4000)  # knows the label beyond the length
    assert stratified_auroc(death, knows, n_events, 10) == pytest.approx(roc_auc_score(death, knows), abs=0.03)
    # by hand: two strata; pairs only within each
    y, x, c = np.array([1, 0, 0, 1, 0]), np.array([0.9, 0.1, 0.95, 0.2, 0.3]), np.array([1, 1, 1, 9, 9])
    # stratum {0,1,2}: death 0.9 beats 0.1, loses to 0.95 -> 1/2 over 2 pairs; stratum {3,4}: 0.2 < 0.3 -> 0 over 1
    assert stratified_auroc(y, x, c, 2) == pytest.approx((0.5 * 2 + 0.0 * 1) / 3)


def test_a_planted_label_leak_fails_the_shuffled_label_check(tokens):
    """The same check, once honest and once with a loader that leaks the true labels: the
    leak must make it fail (the toy models trained on true labels reach AUROC 1.0)."""
    from ehrseq.metrics import auroc
    from ehrseq.training import predict

    def verdict(leak: bool) -> dict:
        aurocs = []
        for seed in (0, 1):
            model, task, _, loader = _shuffled_lstm(tokens, seed, leak=leak)
            p = predict(model, task, loader(tokens["test"], False), torch.device("cpu"))
            aurocs.append(auroc(p["label"], p["prob"]))
        return label_randomisation_verdict(aurocs, tolerance=0.2), aurocs

    leaked, _ = verdict(leak=True)
    assert leaked["mean"] > 0.8 and not leaked["passes"]
    honest, aurocs = verdict(leak=False)
    assert honest["passes"], aurocs


def test_head_scores_by_hand():
    from ehrseq.explain.run import head_scores

    events = index_events(torch.tensor([[-1, 10, 11]]), torch.tensor([[True, True, True]]))
    pooling = torch.tensor([[0.0, 0.25, 0.75]])  # the mortality read-out's weights over positions
    layer = torch.tensor([[[[1.0, 0.0, 0.0], [0.5, 0.5, 0.0], [0.0, 0.2, 0.8]],  # head 0
                           [[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [1.0, 0.0, 0.0]]]])  # head 1 reads <bos> only
    scores = head_scores({"pooling": pooling, "layer_0": layer}, events)
    # head 0: w^T A = [0.125, 0.125 + 0.15, 0.6] -> events 10, 11 get 0.275, 0.6; position 0 is no event
    assert torch.allclose(scores["layer_0/head_0"], torch.tensor([[0.275, 0.6]]))
    assert torch.allclose(scores["layer_0/head_1"], torch.tensor([[0.0, 0.0]]))


def test_untrained_aurocs_are_fresh_models_of_each_seed(tokens):
    from sklearn.metrics import roc_auc_score

    from ehrseq.data import token_loader
    from ehrseq.explain.sanity import untrained_aurocs
    from ehrseq.tasks import MortalityTask

    loader = token_loader(tokens["test"], 16, device=torch.device("cpu"), shuffle=False,
                          collate_fn=collate_token_events)
    config = {"vocab_size": VOCAB, **TOKEN_TINY["gpt2"]}
    got = untrained_aurocs("gpt2", config, MortalityTask(), loader, torch.device("cpu"), [3, 4],
                           lambda p: (p["label"].astype(int), p["prob"]))
    torch.manual_seed(4)
    model = build_model("gpt2", **config).eval()
    batch = collate_token_events([tokens["test"][i] for i in range(len(tokens["test"]))])
    with torch.no_grad():
        logits = model(batch["input_ids"], batch["attention_mask"])["logits"]
    assert got[1] == pytest.approx(roc_auc_score(batch["label"].numpy(), logits.numpy()))
    assert got[0] != got[1]


def test_a_split_too_small_for_strata_leaves_the_shuffled_label_verdict_undefined():
    from ehrseq.explain.sanity import stratified_auroc
    from ehrseq.metrics import UndefinedMetricError
    from ehrseq.report import shuffled_label_cell

    # 9 stays, 3 deaths, each in its own event-count stratum: no (death, survivor) pair to compare
    labels, events = np.array([1, 0, 0, 1, 0, 0, 1, 0, 0]), np.arange(9)
    with pytest.raises(UndefinedMetricError, match="3 deaths among 9 stays"):
        stratified_auroc(labels, np.linspace(0, 1, 9), events, n_strata=9)
    verdict = label_randomisation_verdict([0.5, None, 0.6], tolerance=0.1)
    assert verdict["passes"] is None and verdict["mean"] is None
    assert shuffled_label_cell(verdict).startswith("undefined (")
