"""Explainability of clinical_lf: attention capture, Captum attributions, faithfulness, plots.

One tiny model is trained on toy stays whose label is "a danger text occurred before the
cutoff"; its explanations are checked against Captum's axioms, against direct
re-computation, and against the planted truth.
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
    event_ablation, group_ablation, importance_by, integrated_gradients, layer_integrated_gradients,
    mean_baselines, scores_frame, step_scores,
)
from ehrseq.explain.faithfulness import (
    _jsd, aopc, deletion_curve, deletion_curves, deletion_table, head_specialisation, precision_at_k,
)
from ehrseq.explain.plots import head_heatmap, importance_bars, stay_timeline
from ehrseq.features import build_dataset, collate, fit_encoder
from ehrseq.models.attention import forward_with_attention, record_attention, save_attention
from ehrseq.models.clinical_lf import ClinicalLF, sinusoidal_positions

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def setup():
    events, cohort, texts, vectors, planted = make_toy_data()
    encoder = fit_encoder(events, cohort, texts, vectors, max_events=8)
    train = build_dataset(events, cohort, texts, vectors, encoder, "train")
    test = build_dataset(events, cohort, texts, vectors, encoder, "test")
    model = train_tiny(train, steps=250)
    batch = collate([test[i] for i in range(len(test))])
    return dict(model=model, encoder=encoder, batch=batch, planted=planted, events=events)


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
    assert (step_scores(ig.steps, batch["padding_mask"])[batch["padding_mask"]] == 0).all()


def test_integrated_gradients_find_the_planted_events(setup):
    batch = setup["batch"]
    ig = integrated_gradients(setup["model"], batch, mean_baselines(batch, setup["encoder"]), n_steps=64)
    p1 = precision_at_k(step_scores(ig.steps, batch["padding_mask"]), batch, setup["planted"], k=1)
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
    model, batch = setup["model"], setup["batch"]
    attr = event_ablation(model, batch, perturbations_per_eval=4)
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
    frame = scores_frame({"random": scores}, batch)
    assert len(frame) == int((~batch["padding_mask"]).sum())
    first = frame.iloc[0]
    assert events.loc[first["event_row"], "stay_id"] == first["stay_id"]
    assert events.loc[first["event_row"], "event_type"] == first["event_type"]
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
    curve = deletion_curve(SumOfFirstFeature(), batch, scores, k_max=3)
    # stay 0 removes 2.0, then 1.0, then -1.0; stay 1 removes its one event, then nothing is left
    expected = torch.tensor([[_sigmoid(2.0), _sigmoid(0.0), _sigmoid(-1.0), _sigmoid(0.0)],
                             [_sigmoid(0.5), _sigmoid(0.0), _sigmoid(0.0), _sigmoid(0.0)]])
    assert torch.allclose(curve, expected)
    assert torch.allclose(aopc(curve), (expected[:, :1] - expected[:, 1:]).mean(dim=1))
    assert aopc(torch.tensor([[0.9, 0.5, 0.3]])).item() == pytest.approx(0.5)


def test_precision_at_k_by_hand():
    batch = {
        "padding_mask": torch.tensor([[False, False, False, False], [False, False, True, True], [False, True, True, True]]),
        "event_row": torch.tensor([[10, 11, 12, 13], [20, 21, -1, -1], [30, -1, -1, -1]]),
        "stay_id": torch.tensor([1, 2, 3]),
    }
    scores = torch.tensor([[0.1, 0.9, 0.5, 0.2], [0.3, 0.2, 9.0, 9.0], [1.0, 0.0, 0.0, 0.0]])
    table = precision_at_k(scores, batch, planted_rows=np.array([11, 13, 21]), k=2)
    assert table["stay_id"].tolist() == [1, 2]  # stay 3 has nothing planted
    assert table["precision"].tolist() == [0.5, 0.5]  # stay 1: top-2 = 11, 12; stay 2: 20, 21
    assert table["random_precision"].tolist() == [0.5, 0.5]
    # stay 1 has 2 planted events (11, 13), stay 2 one (21): hits / min(k, planted)
    assert table["recall_precision"].tolist() == [0.5, 1.0]
    # a random top-2 holds k * planted / events planted ones: 2 * 2/4 = 1 of 2, 2 * 1/2 = 1 of 1
    assert table["random_recall_precision"].tolist() == [0.5, 1.0]


def test_attributions_beat_random_deletion(setup):
    model, batch = setup["model"], setup["batch"]
    ig = integrated_gradients(model, batch, mean_baselines(batch, setup["encoder"]), n_steps=64)
    curves = deletion_curves(model, batch, {"ig": step_scores(ig.steps, batch["padding_mask"]),
                                            "ablation": event_ablation(model, batch)}, k_max=3, n_random=5)
    table = deletion_table(curves)
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
    from ehrseq.explain.run import ExplainConfig, explain_split

    events, cohort, texts, vectors, planted = make_toy_data()
    test = build_dataset(events, cohort, texts, vectors, setup["encoder"], "test")
    config = ExplainConfig(batch_size=8, ig_steps=32, internal_batch_size=None, k_max=3, precision_k=(1, 3),
                           n_random=3, n_permutations=20, plot_stays=2, attention_batches=1, max_stays=None, seed=0)
    metrics = explain_split(setup["model"], setup["encoder"], test, events, tmp_path, config, planted_rows=planted)
    assert metrics["stays"] == len(test)
    assert set(metrics["aopc"]) == {"integrated_gradients", "layer_integrated_gradients", "event_ablation",
                                    "attention", "attention_rollout", "random"}
    p1 = metrics["precision_at_k"]["k=1"]
    assert p1["integrated_gradients"] > 3 * p1["random"]
    scores = pd.read_parquet(tmp_path / "event_scores.parquet")
    assert len(scores) == 5 * metrics["events"]
    assert (events.loc[scores["event_row"], "text"].to_numpy() == scores["text"].to_numpy()).all()
    for name in ("static_attributions.parquet", "group_ablation.parquet", "predictions.parquet", "deletion.png",
                 "deletion.csv", "precision_at_k.csv", "head_kinds.csv", "importance_code.csv",
                 "importance_event_type_ig.png", "attention/batch_000.npz"):
        assert (tmp_path / name).exists(), name
    assert not (tmp_path / "attention" / "batch_001.npz").exists()
    assert len(list((tmp_path / "stays").glob("timeline_*.png"))) == 2
    assert len(list((tmp_path / "stays").glob("heads_*.png"))) == 2
    sample = explain_split(setup["model"], setup["encoder"], test, events, tmp_path / "sample",
                           dataclasses.replace(config, ig_steps=16, k_max=2, n_random=2, n_permutations=10,
                                               plot_stays=1, max_stays=10))
    assert sample["stays"] == 10 and "precision_at_k" not in sample  # no planted truth given


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
