"""clinical_lf features and model on toy data with a planted signal (`make_toy_data`,
`train_tiny` and the `TINY` sizes come from conftest.py)."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

from conftest import DIM, TINY, make_toy_data, run_python, train_tiny
from ehrseq.data import token_loader
from ehrseq.features import (
    MISSING,
    FeatureEncoder,
    build_dataset,
    collate,
    fit_encoder,
    select_events,
)
from ehrseq.models.attention import AttentionSnapshots
from ehrseq.models.clinical_lf import ClinicalLF, clinical_lf_loss, temporal_step_weights
from ehrseq.schema import EVENT_TYPES
from ehrseq.tasks import ClinicalLFTask
from ehrseq.training import FitConfig, fit

torch.set_num_threads(1)
DROPPING = {**TINY, "dropout": 0.1, "attention_dropout": 0.1}  # training runs that draw dropout

@pytest.fixture(scope="module")
def toy():
    return make_toy_data()


@pytest.fixture(scope="module")
def encoder(toy):
    events, cohort, texts, vectors, _ = toy
    return fit_encoder(events, cohort, texts, vectors, max_events=8)


# ----------------------------------------------------------------------- features


def test_select_events_keeps_recent_pre_cutoff_events_in_order(toy):
    events, cohort, *_ = toy
    sel = select_events(events, cohort, max_events=5)
    assert not events.loc[sel["event_row"], "after_cutoff"].any()
    for stay_id, group in sel.groupby("stay_id"):
        pre = events[(events["stay_id"] == stay_id) & ~events["after_cutoff"]]
        assert group["event_row"].tolist() == pre.index[-5:].tolist()  # the most recent 5, oldest first
    row = sel.iloc[0]
    cutoff = cohort.set_index("stay_id").loc[row["stay_id"], "cutoff"]
    expected = (cutoff - events.loc[row["event_row"], "time"]).total_seconds() / 3600
    assert row["hours_before_cutoff"] == pytest.approx(expected)
    assert row["kind"] == EVENT_TYPES.index(events.loc[row["event_row"], "event_type"])


def test_encoder_is_fitted_on_train_only(toy, encoder):
    events, cohort, texts, vectors, _ = toy
    train = cohort[cohort["split"] == "train"]
    train_hours = select_events(events, train, 8)["hours_before_cutoff"]
    assert encoder.time_mean == pytest.approx(train_hours.mean())
    assert encoder.time_std == pytest.approx(train_hours.std(ddof=0))
    assert encoder.age_mean == pytest.approx(train["age"].mean())
    # a category that occurs only in the test split is unknown: all zeros in its block
    changed = cohort.copy()
    test_idx = changed.index[changed["split"] == "test"][0]
    changed.loc[test_idx, "race"] = "ONLY_IN_TEST"
    refit = fit_encoder(events, changed, texts, vectors, max_events=8)
    assert "ONLY_IN_TEST" not in refit.categories["race"]
    static = refit.encode_static(changed.loc[[test_idx]])
    assert static[0, refit.static_groups["race"]].sum() == 0
    assert static[0, refit.static_groups["gender"]].sum() == 1
    # nulls are their own category, not dropped
    assert MISSING in encoder.categories["marital_status"]
    assert len(encoder.static_names) == encoder.static_dim == sum(len(v) for v in encoder.static_groups.values())
    # the baseline step is the train mean of what the model sees
    ds = build_dataset(events, cohort, texts, vectors, encoder, "train")
    mean = torch.cat([ds[i]["steps"] for i in range(len(ds))]).mean(dim=0)
    assert torch.allclose(mean, torch.tensor(encoder.step_mean, dtype=torch.float32), atol=1e-5)


def test_encoder_round_trips_through_json(encoder, tmp_path):
    encoder.save(tmp_path / "features.json")
    assert FeatureEncoder.load(tmp_path / "features.json") == encoder


def test_bad_input_names_file_column_and_value(toy, encoder):
    events, cohort, texts, vectors, _ = toy
    bad = events.copy()
    bad.loc[3, "event_type"] = "chartevent"
    with pytest.raises(ValueError, match=r"event_type has 'chartevent' \(row 3\)"):
        select_events(bad, cohort, 8)
    bad = events.copy()
    bad.loc[4, "text"] = "never embedded"
    with pytest.raises(KeyError, match="row 4: text='never embedded'"):
        build_dataset(bad, cohort[cohort["stay_id"] == bad.loc[4, "stay_id"]].assign(split="test"),
                      texts, vectors, encoder, "test")
    bad = events.copy()
    late = bad.index[bad["after_cutoff"]][0]
    bad.loc[late, "after_cutoff"] = False
    with pytest.raises(ValueError, match=f"row {late} .* not before the stay's cutoff"):
        select_events(bad, cohort, 8)
    with pytest.raises(ValueError, match="lacks columns \\['split'\\]"):
        fit_encoder(events, cohort.drop(columns="split"), texts, vectors, 8)


def test_dataset_steps_and_collate(toy, encoder):
    events, cohort, texts, vectors, _ = toy
    ds = build_dataset(events, cohort, texts, vectors, encoder, "test")
    assert len(ds) == (cohort["split"] == "test").sum()
    item = ds[0]
    row = int(item["event_row"][0])
    k = len(EVENT_TYPES)
    assert item["steps"][0, :k].tolist() == [float(t == events.loc[row, "event_type"]) for t in EVENT_TYPES]
    text_vec = vectors[texts.set_index("text").loc[events.loc[row, "text"], "row"]]
    assert np.allclose(item["steps"][0, k:k + DIM].numpy(), text_vec)
    scaled = (item["hours_before_cutoff"][0] - encoder.time_mean) / encoder.time_std
    assert item["steps"][0, -1] == pytest.approx(float(scaled), abs=1e-5)

    batch = collate([ds[0], ds[1]])
    T = max(len(ds[0]["kind"]), len(ds[1]["kind"]))
    assert batch["steps"].shape == (2, T, encoder.step_dim)
    assert batch["static"].shape == (2, encoder.static_dim)
    n1 = len(ds[1]["kind"])
    assert batch["padding_mask"][1].tolist() == [False] * n1 + [True] * (T - n1)
    assert (batch["event_row"][batch["padding_mask"]] == -1).all()
    assert (batch["steps"][batch["padding_mask"]] == 0).all()


def test_stay_without_pre_cutoff_events_is_kept(toy, encoder):
    events, cohort, texts, vectors, _ = toy
    stay = cohort[cohort["split"] == "test"]["stay_id"].iloc[0]
    ds = build_dataset(events[events["stay_id"] != stay], cohort, texts, vectors, encoder, "test")
    empty = [it for it in (ds[i] for i in range(len(ds))) if int(it["stay_id"]) == stay][0]
    assert len(empty["kind"]) == 0
    batch = collate([empty])
    assert batch["padding_mask"].shape == (1, 1) and batch["padding_mask"].all()


# -------------------------------------------------------------------------- model


def _random_batch(B=3, T=6, F=12, S=4, lengths=(6, 3, 1), seed=0):
    g = torch.Generator().manual_seed(seed)
    padding = torch.arange(T)[None, :] >= torch.tensor(lengths)[:, None]
    steps = torch.randn(B, T, F, generator=g) * (~padding)[..., None]
    return steps, torch.randn(B, S, generator=g), padding


def test_forward_shapes():
    steps, static, padding = _random_batch()
    model = ClinicalLF(12, 4, **TINY).eval()
    out = model(steps, static, padding)
    assert set(out) == {"logits", "step_logits"}
    assert out["logits"].shape == (3,)
    assert out["step_logits"].shape == (3, 6)
    assert (out["step_logits"][padding] == 0).all()


def test_attention_dropout_is_its_own_parameter():
    """nn.TransformerEncoderLayer gives its one dropout to the attention weights too; ours
    reaches them apart: with `dropout` 0, training forwards repeat only without it."""
    steps, static, padding = _random_batch()
    for attention_dropout, repeats in ((0.0, True), (0.5, False)):
        torch.manual_seed(0)
        model = ClinicalLF(12, 4, **{**TINY, "attention_dropout": attention_dropout}).train()
        first, second = (model(steps, static, padding)["step_logits"] for _ in range(2))
        assert torch.equal(first, second) == repeats, attention_dropout


@pytest.mark.parametrize("norm_first", [False, True])
def test_more_padding_gives_the_same_logits(norm_first):
    steps, static, padding = _random_batch()
    model = ClinicalLF(12, 4, **{**TINY, "norm_first": norm_first}).eval()
    extra = torch.randn(3, 5, 12)  # garbage in the padding must not matter either
    longer = torch.cat([steps, extra], dim=1)
    longer_padding = torch.cat([padding, torch.ones(3, 5, dtype=torch.bool)], dim=1)
    for grad in (True, False):  # without grad, eval mode may take the fused fast path
        with torch.set_grad_enabled(grad):
            a = model(steps, static, padding)["logits"]
            b = model(longer, static, longer_padding)["logits"]
        assert torch.allclose(a, b, atol=1e-5), (grad, a, b)


def test_stay_without_events_is_predicted_from_static_features():
    steps, static, padding = _random_batch()
    padding[2] = True
    model = ClinicalLF(12, 4, **TINY).eval()
    with torch.no_grad():
        out = model(steps, static, padding)
        from_static = model.classifier(torch.cat([torch.zeros(1, TINY["d_model"]), static[2:3]], dim=-1))
    assert torch.isfinite(out["logits"]).all()
    assert float(out["logits"][2]) == pytest.approx(float(from_static), abs=1e-6)
    # its event features get no gradient, and nothing is NaN
    steps.requires_grad_(True)
    model(steps, static, padding)["logits"].sum().backward()
    assert torch.isfinite(steps.grad).all() and (steps.grad[2] == 0).all()


def test_temporal_loss_weights_and_values():
    hours = torch.tensor([[0.0, 10.0, 30.0], [5.0, 0.0, 0.0]])
    padding = torch.tensor([[False, False, False], [False, True, True]])
    w = temporal_step_weights(hours, padding, 0.1)
    assert torch.allclose(w, torch.tensor([[1.0, math.exp(-1.0), math.exp(-3.0)], [math.exp(-0.5), 0.0, 0.0]]))
    with pytest.raises(ValueError, match="temporal_lambda"):
        temporal_step_weights(hours, padding, -1.0)

    outputs = {"logits": torch.tensor([0.3, -1.2]), "step_logits": torch.tensor([[0.5, -0.5, 2.0], [1.0, 9.0, 9.0]])}
    batch = {"label": torch.tensor([1.0, 0.0]), "padding_mask": padding, "hours_before_cutoff": hours}
    stay = F.binary_cross_entropy_with_logits(outputs["logits"], batch["label"])
    off = clinical_lf_loss(outputs, batch, temporal_lambda=0.0)
    assert off["loss"] == stay and off["step_loss"] == 0

    def bce(z, y):
        return -(y * math.log(1 / (1 + math.exp(-z))) + (1 - y) * math.log(1 - 1 / (1 + math.exp(-z))))

    by_hand = (1.0 * bce(0.5, 1) + math.exp(-1.0) * bce(-0.5, 1) + math.exp(-3.0) * bce(2.0, 1)
               + math.exp(-0.5) * bce(1.0, 0)) / 4  # 4 real steps; padded steps (logit 9) never count
    on = clinical_lf_loss(outputs, batch, temporal_lambda=0.1)
    assert on["step_loss"] == pytest.approx(by_hand, rel=1e-5)
    assert on["loss"] == pytest.approx(float(stay) + by_hand, rel=1e-5)


def test_tiny_model_learns_the_planted_signal(toy, encoder):
    events, cohort, texts, vectors, _ = toy
    train = build_dataset(events, cohort, texts, vectors, encoder, "train")
    test = build_dataset(events, cohort, texts, vectors, encoder, "test")
    model = train_tiny(train, steps=200, temporal_lambda=0.05)
    batch = collate([test[i] for i in range(len(test))])
    with torch.no_grad():
        logits = model(batch["steps"], batch["static"], batch["padding_mask"])["logits"]
    assert roc_auc_score(batch["label"].numpy(), logits.numpy()) > 0.95


# --------------------------------------------------------- attention snapshots in fit


class Killed(Exception):
    pass


def test_resumed_run_writes_the_same_attention_snapshots_as_an_uninterrupted_one(toy, encoder, tmp_path):
    """Snapshots are named by the global step restored from the checkpoint: a run killed in
    its second epoch and resumed writes exactly the files (names and bytes of every array)
    of a run that never stopped. Numbering by batches seen in this process restarted at 0
    and overwrote batch_0000000 with a later batch's attention."""
    events, cohort, texts, vectors, _ = toy
    train = build_dataset(events, cohort, texts, vectors, encoder, "train")
    val = build_dataset(events, cohort, texts, vectors, encoder, "test")  # the toy val split has no deaths
    cpu = torch.device("cpu")
    train_loader = token_loader(train, 16, device=cpu, seed=1, pool_batches=2, collate_fn=collate)
    val_loader = token_loader(val, 32, device=cpu, shuffle=False, collate_fn=collate)
    steps_per_epoch = len(train_loader)
    config = FitConfig(epochs=2, lr=3e-3, weight_decay=0.01, warmup_steps=2, schedule="cosine", min_lr_ratio=0.1,
                       grad_clip=1.0, patience=None, seed=3)

    def run(name, on_step, resume=False):
        torch.manual_seed(0)  # the same initial weights, as a re-run stage builds them
        model = ClinicalLF(train[0]["steps"].shape[1], train[0]["static"].shape[0], **DROPPING)
        return fit(model, ClinicalLFTask(pos_weight=1.0), train_loader, val_loader, config,
                   checkpoint_dir=tmp_path / name / "ckpt", live_dir=tmp_path / name / "live", resume=resume,
                   device=cpu, on_step=on_step)

    full = run("full", AttentionSnapshots(3, tmp_path / "full" / "attention"))
    snapshots = AttentionSnapshots(3, tmp_path / "killed" / "attention")

    def snapshot_then_die(step, model, batch):
        snapshots(step, model, batch)
        if step == steps_per_epoch + 4:  # in the middle of the second epoch
            raise Killed

    with pytest.raises(Killed):
        run("killed", snapshot_then_die)
    resumed = run("killed", snapshots, resume=True)
    assert resumed.history == full.history

    names = sorted(p.name for p in (tmp_path / "full" / "attention").iterdir())
    assert names == [f"batch_{step:07d}.npz" for step in range(0, 2 * steps_per_epoch, 3)]
    assert sorted(p.name for p in (tmp_path / "killed" / "attention").iterdir()) == names
    for name in names:
        full_dir, killed_dir = tmp_path / "full" / "attention", tmp_path / "killed" / "attention"
        with np.load(full_dir / name) as a, np.load(killed_dir / name) as b:
            assert a.files == b.files
            for key in a.files:
                assert np.array_equal(a[key], b[key]), (name, key)


def test_snapshots_do_not_change_the_training_run(toy, encoder, tmp_path):
    """The snapshot forward runs in eval mode without grad: no dropout draw, no weight
    change, so the run with snapshots is the run without them, bit for bit."""
    events, cohort, texts, vectors, _ = toy
    train = build_dataset(events, cohort, texts, vectors, encoder, "train")
    val = build_dataset(events, cohort, texts, vectors, encoder, "test")  # the toy val split has no deaths
    cpu = torch.device("cpu")
    config = FitConfig(epochs=1, lr=3e-3, weight_decay=0.01, warmup_steps=2, schedule="cosine", min_lr_ratio=0.1,
                       grad_clip=1.0, patience=None, seed=3)
    results = []
    for name, on_step in (("with", AttentionSnapshots(1, tmp_path / "snapshots")), ("without", None)):
        torch.manual_seed(0)
        model = ClinicalLF(train[0]["steps"].shape[1], train[0]["static"].shape[0], **DROPPING)
        fit(model, ClinicalLFTask(), token_loader(train, 16, device=cpu, seed=1, collate_fn=collate),
            token_loader(val, 32, device=cpu, shuffle=False, collate_fn=collate), config,
            checkpoint_dir=tmp_path / name, live_dir=tmp_path / name / "live", device=cpu, on_step=on_step)
        results.append(model.state_dict())
    assert len(list((tmp_path / "snapshots").iterdir())) > 1
    for key, value in results[0].items():
        assert torch.equal(value, results[1][key]), key


# -------------------------------------------------------------------------- stages

LF_STAGE_PARAMS = """
train:
  clinical_lf:
    seed: 0
    batch_size: 16
    bucket_pool_batches: 4
    imbalance: pos_weight
    max_events: 16
    temporal_lambda: 0.1
    attention_every: 5
    model: {d_model: 16, n_layers: 2, n_heads: 4, ff_dim: 32, dropout: 0.0, attention_dropout: 0.0, pool_heads: 4,
            mlp_hidden: 32, norm_first: false}
    lr: 3.0e-3
    weight_decay: 0.01
    warmup_steps: 2
    schedule: cosine
    min_lr_ratio: 0.1
    grad_clip: 1.0
    finetune: {epochs: 6, patience: 6}
evaluate: {batch_size: 32, n_bootstrap: 50, calibration_bins: 5, seed: 0}
explain: {batch_size: 8, batch_tokens: 512, ig_steps: 16, internal_batch_size: 64, k_max: 3, precision_k: [1, 3],
          n_random: 3, n_permutations: 20, plot_stays: 1, attention_batches: 1, max_stays: null,
          perturbations_per_eval: 4, sanity_stays: 8, sanity_ig_steps: 8,
          label_shuffle: {stays: 60, epochs: 1, seeds: 2, tolerance: 0.25, event_strata: 2,
                          n_bootstrap: 20, untrained_models: 1}, seed: 0}
"""


@pytest.mark.slow
def test_train_evaluate_explain_stages_for_clinical_lf(tmp_path):
    """The three stages as DVC runs them, on files laid out as the pipeline writes them."""
    import json
    from pathlib import Path

    from ehrseq.embeddings import write_text_embeddings

    repo = Path(__file__).resolve().parents[1]
    events, cohort, texts, vectors, planted = make_toy_data(n_stays=300)
    position = np.arange(len(cohort)) % 20  # deaths are the even stays: every split gets both classes
    cohort["split"] = np.where(position < 14, "train", np.where(position < 17, "val", "test"))
    (tmp_path / "params.yaml").write_text(LF_STAGE_PARAMS)
    (tmp_path / "data/interim/truth").mkdir(parents=True)
    events.to_parquet(tmp_path / "data/interim/events.parquet")
    cohort.to_parquet(tmp_path / "data/interim/cohort.parquet")
    write_text_embeddings(tmp_path / "data/processed/text_embeddings", texts["text"].tolist(), vectors,
                          {"model": "toy"})
    planted_table = pd.DataFrame({"stay_id": events.loc[planted, "stay_id"].to_numpy(), "event_row": planted,
                                  "rule": "danger"})
    planted_table.to_parquet(tmp_path / "data/interim/truth/planted_events.parquet")
    cohort.assign(true_risk=cohort["mortality"] * 0.8 + 0.1)[["stay_id", "true_risk"]].to_parquet(
        tmp_path / "data/interim/truth/stay_risk.parquet")

    def stage(*args):
        run_python(tmp_path, repo / "stages" / args[0], *args[1:], timeout=600)

    stage("train.py", "clinical_lf")
    assert {p.name for p in (tmp_path / "models/clinical_lf/finetune").iterdir()} == {"best.pt", "last.pt"}
    assert not (tmp_path / "models/clinical_lf/pretrain").exists()  # clinical_lf has no pretraining
    snapshots = sorted((tmp_path / "reports/train/clinical_lf/attention").glob("batch_*.npz"))
    assert len(snapshots) >= 2  # 210 train stays / 16 = 14 batches an epoch, every 5th saved
    with np.load(snapshots[0]) as snap:
        assert snap["layer_0"].shape[1] == 4 and snap["pooling"].shape[1] == 4  # per head, not averaged

    stage("evaluate.py", "clinical_lf")
    report = json.loads((tmp_path / "reports/metrics/clinical_lf.json").read_text())
    assert report["stays"] == int((cohort["split"] == "test").sum())
    assert report["auroc"]["value"] > 0.9  # the planted signal is learnable: label = a danger text before cutoff
    assert report["oracle_auroc"]["value"] == 1.0

    stage("explain.py", "clinical_lf")
    explain = json.loads((tmp_path / "reports/metrics/explain_clinical_lf.json").read_text())
    assert explain["stays"] == report["stays"]
    at_1 = explain["recall_precision_at_k"]["k=1"]
    assert at_1["integrated_gradients"] > 2 * at_1["random"]
    assert explain["aopc"]["integrated_gradients"] > explain["aopc"]["random"]
    assert (tmp_path / "reports/explain/clinical_lf/deletion.png").stat().st_size > 0
