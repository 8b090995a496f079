"""The training machinery: data contract, batching, schedule, early stopping, checkpoints, resume.

Toy stays (`toy_sequences`, a planted risk token) come from conftest.py.
"""
from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from conftest import RISK_TOKEN, TOY_VOCAB, Killed, KilledAfter, run_python, toy_sequences, write_toy_split
from ehrseq.data import (
    LengthBucketSampler,
    TokenSequenceDataset,
    class_balance_weights,
    collate_tokens,
    token_loader,
)
from ehrseq.models import build_model
from ehrseq.schema import BOS_ID, EOS_ID, PAD_ID, SPECIAL_TOKENS
from ehrseq.sequences import load_sequences, read_vocab_size
from ehrseq.tasks import MortalityTask, NextTokenTask, mortality_task
from ehrseq.training import EarlyStopping, FitConfig, fit, load_checkpoint, load_trained_model, lr_multiplier, predict

torch.set_num_threads(1)
CPU = torch.device("cpu")

def toy_config(**overrides) -> FitConfig:
    config = dict(epochs=3, lr=1e-2, weight_decay=0.01, warmup_steps=2, schedule="cosine", min_lr_ratio=0.1,
                  grad_clip=1.0, patience=None, seed=7)
    return FitConfig(**{**config, **overrides})


def tiny_lstm() -> nn.Module:
    return build_model("lstm", vocab_size=TOY_VOCAB, embedding_dim=8, hidden_size=16, num_layers=1,
                       dropout=0.1, bidirectional=True)


@pytest.fixture(scope="module")
def toy_data():
    train, val = toy_sequences(160, seed=1), toy_sequences(60, seed=2)
    return TokenSequenceDataset(train), TokenSequenceDataset(val)


def loaders(toy_data, batch_size=16):
    train, val = toy_data
    return (token_loader(train, batch_size, device=CPU, seed=3, pool_batches=4),
            token_loader(val, 32, device=CPU, shuffle=False))


# ------------------------------------------------------------ data contract


def test_load_sequences_reads_the_contract(tmp_path):
    frame = toy_sequences(20, seed=0)
    loaded = load_sequences(write_toy_split(tmp_path / "train.parquet", frame), vocab_size=TOY_VOCAB)
    assert list(loaded.columns) == ["stay_id", "subject_id", "input_ids", "mortality"]
    assert len(loaded) == 20 and list(loaded["input_ids"].iloc[0]) == list(frame["input_ids"].iloc[0])


@pytest.mark.parametrize("corrupt, message", [
    (lambda f: f.drop(columns="mortality"), "missing column(s) ['mortality']"),
    (lambda f: f.assign(mortality=np.int8(2)), "column 'mortality' must be 0/1; stay_id 1000 has 2"),
    (lambda f: f.assign(input_ids=[np.array([BOS_ID, 99, EOS_ID], dtype=np.int32)] * len(f)),
     "column 'input_ids' must hold ids 1..39; stay_id 1000 has 99"),
    (lambda f: f.assign(input_ids=[np.array([BOS_ID, PAD_ID, EOS_ID], dtype=np.int32)] * len(f)),
     "stay_id 1000 has 0"),
    (lambda f: f.assign(input_ids=[np.array([BOS_ID], dtype=np.int32)] * len(f)), "needs >= 2 tokens"),
])
def test_load_sequences_names_file_column_and_value(tmp_path, corrupt, message):
    path = write_toy_split(tmp_path / "bad.parquet", corrupt(toy_sequences(5, seed=0)))
    with pytest.raises(ValueError) as err:
        load_sequences(path, vocab_size=TOY_VOCAB)
    assert "bad.parquet" in str(err.value) and message in str(err.value)


def test_read_vocab_size_checks_ids_and_specials(tmp_path):
    strings = [*SPECIAL_TOKENS, "AGE//60-69", "LAB//50912"]
    good = pd.DataFrame({"token": range(len(strings)), "str": strings, "count": 1})
    good.to_csv(tmp_path / "vocab.csv", index=False)
    assert read_vocab_size(tmp_path / "vocab.csv") == len(strings)
    good.iloc[[1, 0, 2, 3, 4, 5, 6]].to_csv(tmp_path / "shuffled.csv", index=False)
    with pytest.raises(ValueError, match="shuffled.csv: column 'token' must be 0..6 in order; row 0 has 1"):
        read_vocab_size(tmp_path / "shuffled.csv")


def test_collate_right_pads_with_prefix_masks():
    items = [{"input_ids": torch.tensor(ids), "label": torch.tensor(1.0), "stay_id": torch.tensor(i)}
             for i, ids in enumerate([[2, 7, 3], [2, 8, 9, 10, 3]])]
    batch = collate_tokens(items)
    assert batch["input_ids"].tolist() == [[2, 7, 3, PAD_ID, PAD_ID], [2, 8, 9, 10, 3]]
    assert batch["attention_mask"].tolist() == [[True] * 3 + [False] * 2, [True] * 5]
    assert batch["lengths"].tolist() == [3, 5] and batch["stay_id"].tolist() == [0, 1]


def test_bucket_sampler_is_a_seeded_permutation_with_less_padding():
    lengths = np.random.default_rng(0).lognormal(4, 0.7, size=500).astype(int) + 2
    sampler = LengthBucketSampler(lengths, 16, seed=5, pool_batches=10)
    sampler.set_epoch(3)
    batches = list(sampler)
    assert sorted(i for b in batches for i in b) == list(range(500)) and len(batches) == len(sampler)
    assert batches == list(sampler)  # same (seed, epoch): same batches, as a resumed run needs
    sampler.set_epoch(4)
    assert batches != list(sampler)

    def padding(s):
        return sum(len(b) * lengths[b].max() - lengths[b].sum() for b in s)

    random_batches = LengthBucketSampler(lengths, 16, seed=5, pool_batches=1)
    assert padding(sampler) < 0.3 * padding(random_batches)
    assert [lengths[b].max() for b in LengthBucketSampler(lengths, 16, shuffle=False)] == sorted(
        lengths[b].max() for b in LengthBucketSampler(lengths, 16, shuffle=False))


def test_weighted_sampler_balances_classes():
    labels = np.r_[np.ones(50), np.zeros(450)].astype(int)
    sampler = LengthBucketSampler(np.full(500, 10), 50, seed=0, weights=class_balance_weights(labels))
    drawn = np.concatenate([b for b in sampler])
    assert abs(labels[drawn].mean() - 0.5) < 0.06


# ------------------------------------------------------------------ schedule


def test_lr_schedule_warms_up_linearly_then_decays_to_the_floor():
    kw = dict(warmup_steps=10, total_steps=110, min_lr_ratio=0.1)
    warm = [lr_multiplier(s, schedule="cosine", **kw) for s in range(10)]
    assert np.allclose(np.diff(warm), 1 / 11) and warm[-1] < 1
    cosine = [lr_multiplier(s, schedule="cosine", **kw) for s in range(10, 111)]
    assert cosine[0] == pytest.approx(1.0) and cosine[-1] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(cosine, cosine[1:]))
    assert cosine[50] == pytest.approx(0.55)  # halfway: midpoint of 1 and 0.1
    assert lr_multiplier(35, schedule="linear", **kw) == pytest.approx(0.1 + 0.9 * 0.75)
    with pytest.raises(ValueError, match="schedule must be"):
        lr_multiplier(20, schedule="step", **kw)


def test_optimizer_follows_the_schedule_during_fit(tmp_path, toy_data):
    train_loader, val_loader = loaders(toy_data)
    config = toy_config(epochs=2, warmup_steps=3)
    result = fit(tiny_lstm(), MortalityTask(), train_loader, val_loader, config,
                 checkpoint_dir=tmp_path / "ckpt", live_dir=tmp_path / "live", device=CPU)
    total = 2 * len(train_loader)
    expected = [config.lr * lr_multiplier(s, warmup_steps=3, total_steps=total, schedule="cosine",
                                          min_lr_ratio=0.1) for s in (len(train_loader), total)]
    assert [h["lr"] for h in result.history] == pytest.approx(expected)


# ----------------------------------------------------------- early stopping


def test_early_stopping_counts_epochs_without_improvement():
    stopper = EarlyStopping(mode="min", patience=3)
    assert [stopper.update(v, e) for e, v in enumerate([3.0, 2.0, 2.5, 2.0, 1.9])] == [True, True, False, False, True]
    assert not stopper.should_stop
    stopper.update(2.0, 5), stopper.update(2.0, 6)
    assert not stopper.should_stop
    stopper.update(1.95, 7)
    assert stopper.should_stop and stopper.best == 1.9 and stopper.best_epoch == 4
    never = EarlyStopping(mode="max", patience=None)
    for epoch in range(20):
        never.update(0.5, epoch)
    assert never.bad_epochs == 19 and not never.should_stop


def test_fit_stops_early_and_keeps_the_best_epoch(tmp_path, toy_data):
    train_loader, val_loader = loaders(toy_data)
    # lr=0: the validation AUROC never improves after the first epoch
    result = fit(tiny_lstm(), MortalityTask(), train_loader, val_loader, toy_config(epochs=10, lr=0.0, patience=2),
                 checkpoint_dir=tmp_path / "ckpt", live_dir=tmp_path / "live", device=CPU)
    assert result.stopped_early and result.epochs_run == 3 and result.best_epoch == 0
    assert load_checkpoint(tmp_path / "ckpt" / "last.pt")["finished"]


# ------------------------------------------------------ checkpoints, resume


def test_checkpoints_hold_everything_needed_to_resume(tmp_path, toy_data):
    train_loader, val_loader = loaders(toy_data)
    model = tiny_lstm()
    meta = {"model": "lstm", "model_config": {"vocab_size": TOY_VOCAB, "embedding_dim": 8, "hidden_size": 16,
                                              "num_layers": 1, "dropout": 0.1, "bidirectional": True}}
    result = fit(model, NextTokenTask(), train_loader, val_loader, toy_config(epochs=4, lr=3e-2),
                 checkpoint_dir=tmp_path / "ckpt", live_dir=tmp_path / "live", device=CPU, metadata=meta)
    last = load_checkpoint(tmp_path / "ckpt" / "last.pt")
    assert {"model", "optimizer", "scheduler", "epoch", "step", "rng", "early_stopping", "config", "finished",
            "result", "metadata", "task", "task_config"} <= set(last)
    assert last["epoch"] == 4 and last["step"] == 4 * len(train_loader) and last["finished"]
    assert set(last["rng"]) >= {"python", "numpy", "torch"} and last["optimizer"]["state"]
    assert last["early_stopping"]["best_epoch"] == result.best_epoch and last["task"] == "pretrain"

    best = load_checkpoint(tmp_path / "ckpt" / "best.pt")
    assert best["epoch"] == result.best_epoch + 1 and best["val"]["loss"] == result.best_metric
    reloaded, _ = load_trained_model(tmp_path / "ckpt" / "best.pt", CPU)
    assert all(torch.equal(a, b) for a, b in zip(reloaded.state_dict().values(), model.state_dict().values()))
    # the language model learned the walk: far better than guessing uniformly
    assert result.history[-1]["val/perplexity"] < TOY_VOCAB / 3


def test_killed_and_resumed_run_ends_like_an_uninterrupted_one(tmp_path, toy_data):
    train_loader, val_loader = loaders(toy_data)
    config = toy_config(epochs=4)

    def run(name, task, resume=False):
        torch.manual_seed(123)  # the same initial weights, as a re-run stage would build
        model = tiny_lstm()
        result = fit(model, task, train_loader, val_loader, config, checkpoint_dir=tmp_path / name / "ckpt",
                     live_dir=tmp_path / name / "live", resume=resume, device=CPU)
        return model, result

    full_model, full = run("full", MortalityTask(pos_weight=3.0))
    steps_per_epoch = len(train_loader)
    with pytest.raises(Killed):  # dies in the middle of the third epoch
        run("killed", KilledAfter(2 * steps_per_epoch + 3, pos_weight=3.0))
    assert load_checkpoint(tmp_path / "killed" / "ckpt" / "last.pt")["epoch"] == 2
    resumed_model, resumed = run("killed", MortalityTask(pos_weight=3.0), resume=True)

    assert resumed.history == full.history  # every epoch's losses, AUROCs and lrs, bitwise
    for (name, a), b in zip(full_model.state_dict().items(), resumed_model.state_dict().values()):
        assert torch.equal(a, b), name
    # DVCLive kept one row per epoch across the restart
    tsv = pd.read_csv(tmp_path / "killed" / "live" / "plots" / "metrics" / "val" / "auroc.tsv", sep="\t")
    assert tsv["step"].tolist() == [0, 1, 2, 3]

    # resuming a finished run trains nothing and returns the same result
    again_model, again = run("killed", MortalityTask(pos_weight=3.0), resume=True)
    assert again == resumed
    for a, b in zip(again_model.state_dict().values(), resumed_model.state_dict().values()):
        assert torch.equal(a, b)


def test_resume_refuses_other_settings(tmp_path, toy_data):
    train_loader, val_loader = loaders(toy_data)
    kw = dict(checkpoint_dir=tmp_path / "ckpt", live_dir=tmp_path / "live", device=CPU)
    fit(tiny_lstm(), MortalityTask(), train_loader, val_loader, toy_config(epochs=1), **kw)
    with pytest.raises(ValueError, match=r"other settings \{'lr': \(0.01, 0.5\)\}"):
        fit(tiny_lstm(), MortalityTask(), train_loader, val_loader, toy_config(epochs=1, lr=0.5), resume=True, **kw)
    with pytest.raises(ValueError, match="is a 'mortality' checkpoint; cannot resume task 'pretrain'"):
        fit(tiny_lstm(), NextTokenTask(), train_loader, val_loader, toy_config(epochs=1), resume=True, **kw)


# ------------------------------------------------------------ class imbalance


class BiasOnly(nn.Module):
    """A model that can only learn the base rate: its logit is one bias."""

    def __init__(self):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, attention_mask):
        return {"logits": self.bias.expand(input_ids.shape[0])}


@pytest.mark.parametrize("imbalance", ["pos_weight", "sampler", "none"])
def test_imbalance_strategies_keep_probabilities_calibrated(tmp_path, imbalance):
    frame = toy_sequences(400, seed=4, risk_rate=0.15)
    dataset = TokenSequenceDataset(frame)
    task, weights = mortality_task(frame["mortality"].to_numpy(), imbalance)
    prevalence = frame["mortality"].mean()
    assert task.pos_weight == pytest.approx((1 - prevalence) / prevalence if imbalance == "pos_weight" else 1.0)
    assert (weights is not None) == (imbalance == "sampler")
    train_loader = token_loader(dataset, 50, device=CPU, seed=0, weights=weights)
    val_loader = token_loader(dataset, 100, device=CPU, shuffle=False)
    model = BiasOnly()
    fit(model, task, train_loader, val_loader, toy_config(epochs=40, lr=0.1, warmup_steps=0, weight_decay=0.0),
        checkpoint_dir=tmp_path / "ckpt", live_dir=tmp_path / "live", device=CPU)
    probs = predict(model, task, val_loader, CPU)["prob"]
    # the raw logit learned the shifted odds; the prediction is back at the prevalence
    shift = math.log((1 - prevalence) / prevalence) if imbalance != "none" else 0.0
    assert torch.sigmoid(model.bias - shift).item() == pytest.approx(prevalence, abs=0.04)
    assert probs.mean() == pytest.approx(prevalence, abs=0.04)


def test_mortality_task_rejects_one_class_and_unknown_strategies():
    with pytest.raises(ValueError, match="one class"):
        mortality_task(np.zeros(10), "pos_weight")
    with pytest.raises(ValueError, match="imbalance must be one of"):
        mortality_task(np.r_[0, 1], "smote")


# ------------------------------------------------------------------ the stages

STAGE_PARAMS = """
train:
  lstm:
    seed: 0
    batch_size: 16
    bucket_pool_batches: 4
    imbalance: sampler
    model: {embedding_dim: 8, hidden_size: 16, num_layers: 1, bidirectional: true, dropout: 0.1, packed: auto}
    lr: 3.0e-3
    weight_decay: 0.01
    warmup_steps: 2
    schedule: cosine
    min_lr_ratio: 0.1
    grad_clip: 1.0
    pretrain: {epochs: 1, patience: null}
    finetune: {epochs: 3, lr: 1.0e-2, schedule: linear, min_lr_ratio: 0.0, patience: 2}  # a phase overrides
evaluate: {batch_size: 64, n_bootstrap: 50, calibration_bins: 5, seed: 0}
"""


REPO = Path(__file__).resolve().parents[1]


def toy_workspace(tmp_path: Path, params: str) -> dict[str, pd.DataFrame]:
    """params.yaml, vocab, token splits, truth and cohort of a toy pipeline in `tmp_path`."""
    (tmp_path / "params.yaml").write_text(params)
    (tmp_path / "data/processed/sequences").mkdir(parents=True)
    (tmp_path / "data/interim/truth").mkdir(parents=True)
    strings = [*SPECIAL_TOKENS, *(f"TOK//{i}" for i in range(len(SPECIAL_TOKENS), TOY_VOCAB))]
    pd.DataFrame({"token": range(TOY_VOCAB), "str": strings, "count": 1}).to_csv(
        tmp_path / "data/processed/vocab.csv", index=False)
    splits = {"train": toy_sequences(200, seed=1), "val": toy_sequences(60, seed=2), "test": toy_sequences(80, seed=3)}
    splits["test"]["stay_id"] += 10_000  # distinct stays per split, as the real splits have
    for split, frame in splits.items():
        write_toy_split(tmp_path / f"data/processed/sequences/{split}.parquet", frame)
    splits["test"][["stay_id", "true_risk"]].to_parquet(tmp_path / "data/interim/truth/stay_risk.parquet")
    # Two test stays per patient: the evaluate stage's bootstrap resamples these 40 patients.
    cohort = pd.DataFrame({"stay_id": splits["test"]["stay_id"], "subject_id": np.arange(80) // 2})
    cohort.to_parquet(tmp_path / "data/interim/cohort.parquet")
    return splits


def run_stage(workdir: Path, *args: str) -> str:
    return run_python(workdir, REPO / "stages" / args[0], *args[1:]).stderr


@pytest.mark.slow
def test_train_and_evaluate_stages_write_their_outputs(tmp_path):
    splits = toy_workspace(tmp_path, STAGE_PARAMS)
    cohort = pd.read_parquet(tmp_path / "data/interim/cohort.parquet")

    def stage(*args):
        return run_stage(tmp_path, *args)

    stage("train.py", "lstm")
    for phase in ("pretrain", "finetune"):
        assert {p.name for p in (tmp_path / "models/lstm" / phase).iterdir()} == {"best.pt", "last.pt"}
        assert (tmp_path / "reports/train/lstm" / phase / "metrics.json").exists()
    cost = json.loads((tmp_path / "reports/metrics/train_lstm.json").read_text())
    assert (cost["nproc"], cost["device"]) == (1, "cpu")
    assert set(cost["seconds_by_phase"]) == {"start", "load", "pretrain", "finetune"}
    assert cost["epochs_by_phase"] == {"pretrain": 1, "finetune": load_checkpoint(
        tmp_path / "models/lstm/finetune/last.pt")["result"]["epochs_run"]}
    assert cost["seconds"] >= sum(cost["seconds_by_phase"].values()) - 0.3  # rounding of the parts
    assert "already finished" in stage("train.py", "lstm", "--resume")

    stage("evaluate.py", "lstm")
    report = json.loads((tmp_path / "reports/metrics/lstm.json").read_text())
    assert report["stays"] == 80 and report["deaths"] == int(splits["test"]["mortality"].sum())
    assert (report["resample_unit"], report["patients"]) == ("patient", 40)
    from ehrseq import metrics

    # The oracle interval recomputed from the files: resampling patients does not depend on row order.
    test = splits["test"].drop(columns="subject_id").merge(cohort, on="stay_id")
    oracle = metrics.bootstrap(metrics.auroc, (test["mortality"].to_numpy(), test["true_risk"].to_numpy()),
                               clusters=test["subject_id"].to_numpy(), n_resamples=50, seed=0)
    assert report["oracle_auroc"] == pytest.approx(oracle, rel=1e-9)
    for key in ("auroc", "auprc", "brier", "ece", "oracle_auroc", "auroc_vs_oracle"):
        assert report[key]["ci_low"] <= report[key]["value"] <= report[key]["ci_high"], key
    assert report["oracle_auroc"]["value"] > 0.9
    assert 1 < report["pretrain"]["perplexity"]["value"] < TOY_VOCAB
    for name in ("roc", "pr", "calibration"):
        assert len(pd.read_csv(tmp_path / f"reports/plots/lstm/{name}.csv")) > 0


@pytest.mark.slow
def test_train_stage_with_nproc_2_runs_under_torchrun(tmp_path):
    """`nproc: 2` in params.yaml: the same command re-executes itself under torchrun; rank 0
    writes the checkpoints and the cost file, and the model is a complete one."""
    toy_workspace(tmp_path, STAGE_PARAMS.replace("    seed: 0\n", "    seed: 0\n    nproc: 2\n", 1))
    log = run_stage(tmp_path, "train.py", "lstm")
    assert "re-executing under torchrun" in log
    cost = json.loads((tmp_path / "reports/metrics/train_lstm.json").read_text())
    assert (cost["nproc"], set(cost["seconds_by_phase"])) == (2, {"start", "load", "pretrain", "finetune"})
    last = load_checkpoint(tmp_path / "models/lstm/finetune/last.pt")
    assert last["world_size"] == 2 and len(last["rank_rng"]) == 2 and last["finished"]
    assert last["step"] == last["epoch"] * 13  # 200 train stays in global batches of 16: 13 steps per epoch
    model, _ = load_trained_model(tmp_path / "models/lstm/finetune/best.pt", CPU)
    assert model.lm_head.out_features == TOY_VOCAB
    (tmp_path / "params.yaml").write_text(STAGE_PARAMS.replace("    seed: 0\n", "    seed: 0\n    nproc: 3\n", 1))
    done = subprocess.run([sys.executable, "-P", str(REPO / "stages/train.py"), "lstm"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert "train.lstm.batch_size = 16 is not a multiple of train.lstm.nproc = 3" in done.stderr


EXPLAIN_PARAMS = """
explain: {batch_size: 16, batch_tokens: 512, ig_steps: 32, internal_batch_size: 256, k_max: 2, precision_k: [1, 3, 5],
          n_random: 3, n_permutations: 20, plot_stays: 1, attention_batches: 1, max_stays: 24,
          perturbations_per_eval: 4, sanity_stays: 8, sanity_ig_steps: 8, seed: 0,
          label_shuffle: {stays: 100, epochs: 1, seeds: 2, tolerance: 0.1, event_strata: 4, n_bootstrap: 10,
                          untrained_models: 1}}
"""


@pytest.mark.slow
def test_the_explain_reference_scripts_run_on_a_trained_model(tmp_path):
    """scripts/aopc_ceiling.py, scripts/ig_mean_baseline.py and benchmarks/explain.py, whose
    figures README quotes, run on the stays explain@MODEL explains (aopc_ceiling.py once fell
    behind a change of the batching and stopped running). Checks with an answer known without
    them: the benchmark's two ways of drawing deletion curves give the same logits; for k <= 2 greedy deletion
    can only do as well as the event-ablation ranking or better (both remove the same event
    first; greedy then picks the best second event, ablation's among them), and IG from the
    mean baseline must be complete."""
    splits = toy_workspace(tmp_path, STAGE_PARAMS + EXPLAIN_PARAMS)
    test = splits["test"]
    planted = [(stay, int(row)) for stay, ids, rows in zip(test["stay_id"], test["input_ids"], test["event_row"])
               for token, row in zip(ids, rows) if token == RISK_TOKEN]
    pd.DataFrame(planted, columns=["stay_id", "event_row"]).assign(rule="risk").to_parquet(
        tmp_path / "data/interim/truth/planted_events.parquet")
    run_stage(tmp_path, "train.py", "lstm")

    def script(*args, folder="scripts"):
        return run_python(tmp_path, REPO / folder / args[0], *args[1:]).stdout

    out = script("explain.py", "--models", "lstm", folder="benchmarks")
    deletion = re.search(r"lstm deletion curves \(24 stays.*largest logit difference (\S+)", out)
    assert deletion and float(deletion.group(1)) < 1e-4
    assert re.search(r"lstm cascade \(8 stays\): earlier .* now .*x wall", out)

    ceiling = re.search(r"lstm: 24 stays; mean risk ([\d.]+), every event removed ([\d.]+); AOPC of greedy "
                        r"deletion (-?[\d.]+) .*of the event-ablation ranking on the same stays (-?[\d.]+)",
                        script("aopc_ceiling.py", "lstm"))
    assert ceiling, "aopc_ceiling.py printed no result line"
    risk, emptied, greedy, ablation = map(float, ceiling.groups())
    assert 0 < risk < 1 and 0 < emptied < 1
    assert greedy >= ablation - 1e-6 and ablation > 0
    out = script("ig_mean_baseline.py", "lstm")
    assert re.search(r"lstm baseline unk: AOPC -?[\d.]+, strict recall-precision@5 [\d.]+ \(\d+ stays\)", out)
    assert re.search(r"lstm baseline mean: AOPC -?[\d.]+", out)
    gap = float(re.search(r"median \|completeness gap\| (\S+)", out).group(1))
    assert gap < 1e-2
