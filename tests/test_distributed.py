"""Multi-process training: sharded batches, and 2 gloo processes on CPU against 1 (tests/ddp_fit.py).

The 2-process runs go through torchrun, as `stages/train.py` does with `nproc: 2`.
"""
from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import toy_sequences
from ehrseq.data import LengthBucketSampler, ShardedBatches, TokenSequenceDataset, token_loader
from ehrseq.tasks import MortalityTask
from ehrseq.training import FitConfig, fit, load_checkpoint

HERE = Path(__file__).resolve().parent
CPU = torch.device("cpu")


@pytest.mark.parametrize("world_size", [2, 3])
def test_shards_split_each_global_batch_and_pad_to_equal_size(world_size):
    lengths = np.random.default_rng(0).lognormal(4, 0.7, size=101).astype(int) + 2
    inner = LengthBucketSampler(lengths, 12, seed=5, pool_batches=3)
    shards = [ShardedBatches(inner, rank, world_size) for rank in range(world_size)]
    for s in shards:
        s.set_epoch(2)
    assert inner.epoch == 2 and all(len(s) == len(inner) for s in shards)
    for batch, *parts in zip(inner, *shards):
        assert len({len(p) for p in parts}) == 1  # equal per-rank batches: DDP steps in lockstep
        together = Counter(i for p in parts for i in p)
        assert set(together) == set(batch)  # the global batch, nothing else
        assert sum(together.values()) - len(batch) == (-len(batch)) % world_size  # padding only where needed
        # interleaved shares of a length-sorted batch: bucketing survives on every rank
        assert max(lengths[p].max() for p in parts) == lengths[batch].max()
    assert sorted(len(b) for b in inner)[:2] == [5, 12]  # 101 = 8 x 12 + 5: one short batch, somewhere


def test_rank_indices_cover_evaluation_once_after_dropping_padding():
    lengths = np.arange(2, 63)  # 61 stays: eval batches of 32 and 29
    inner = LengthBucketSampler(lengths, 32, shuffle=False)
    shards = [ShardedBatches(inner, rank, 2) for rank in range(2)]
    read = np.concatenate([s.rank_indices() for s in shards])
    assert len(read) == 62 and sorted(set(read.tolist())) == list(range(61))  # one stay read twice
    assert shards[0].global_indices().tolist() == [i for b in inner for i in b]


def test_loader_gives_each_rank_its_share(tmp_path):
    dataset = TokenSequenceDataset(toy_sequences(40, seed=0))
    full = [b["stay_id"].tolist() for b in token_loader(dataset, 8, device=CPU, seed=1)]
    ranks = [[b["stay_id"].tolist() for b in token_loader(dataset, 8, device=CPU, seed=1, rank=r, world_size=2)]
             for r in range(2)]
    assert [sorted(a + b) for a, b in zip(*ranks)] == [sorted(b) for b in full]
    assert all(len(b) == 4 for r in ranks for b in r)


def test_resume_refuses_another_number_of_processes(tmp_path):
    dataset = TokenSequenceDataset(toy_sequences(32, seed=0))
    from ehrseq.models import build_model

    def run(resume):
        model = build_model("lstm", vocab_size=40, embedding_dim=4, hidden_size=4, num_layers=1, dropout=0.0,
                            bidirectional=False)
        return fit(model, MortalityTask(), token_loader(dataset, 16, device=CPU), token_loader(dataset, 16, device=CPU,
                   shuffle=False), FitConfig(epochs=2, lr=1e-2, weight_decay=0.0, warmup_steps=0, schedule="linear",
                                             min_lr_ratio=0.1, grad_clip=None, patience=None, seed=0),
                   checkpoint_dir=tmp_path / "ckpt", live_dir=tmp_path / "live", device=CPU, resume=resume)

    run(False)
    last = load_checkpoint(tmp_path / "ckpt" / "last.pt")
    assert last["world_size"] == 1 and "rank_rng" not in last
    torch.save({**last, "world_size": 2, "finished": False}, tmp_path / "ckpt" / "last.pt")
    with pytest.raises(ValueError, match="written by 2 process.*this run has 1.*same nproc"):
        run(True)


# ------------------------------------------------------------------ 2 processes


def launch(out: Path, *args: str, nproc: int = 1, check: bool = True) -> subprocess.CompletedProcess:
    script = [str(HERE / "ddp_fit.py"), str(out), *args]
    if nproc > 1:
        script = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *script]
    done = subprocess.run([sys.executable, *script], capture_output=True, text=True, timeout=300,
                          env={"PATH": str(Path(sys.executable).parent), "OMP_NUM_THREADS": "1",
                               "PYTHONPATH": f"{HERE.parent / 'src'}:{HERE}"})
    if check:
        assert done.returncode == 0, done.stderr[-3000:]
    return done


def history(out: Path) -> list[dict]:
    return json.loads((out / "result.json").read_text())["history"]


@pytest.mark.slow
def test_two_processes_follow_the_one_process_loss_curve(tmp_path):
    """Same global batches (16 stays: 8 per rank), same initial weights, dropout 0: the one
    difference is float reduction order (gradients summed per rank, then averaged by the
    all-reduce; the epoch loss as a mean of rank means). Measured: train loss within 3e-9,
    val loss within 1e-10, val AUROC identical, over 30 steps."""
    launch(tmp_path / "one")
    launch(tmp_path / "two", nproc=2)
    one, two = history(tmp_path / "one"), history(tmp_path / "two")
    assert json.loads((tmp_path / "two" / "result.json").read_text())["world_size"] == 2
    assert len(one) == len(two) == 3
    for a, b in zip(one, two):
        assert (a["epoch"], a["step"], a["lr"]) == (b["epoch"], b["step"], b["lr"])
        for key in ("train/loss", "val/loss", "val/auroc"):
            assert b[key] == pytest.approx(a[key], rel=1e-6, abs=1e-7), (a["epoch"], key)
    w1, w2 = torch.load(tmp_path / "one" / "weights.pt"), torch.load(tmp_path / "two" / "weights.pt")
    for name, value in w1.items():
        # The pooling score's bias shifts every position's score alike, which the softmax
        # ignores: its gradient is rounding noise, which Adam scales up to lr-sized steps.
        if name != "mortality_head.score.bias":
            assert torch.allclose(value, w2[name], atol=1e-5), name


@pytest.mark.slow
def test_killed_two_process_run_resumes_bit_for_bit(tmp_path):
    """With dropout 0.1: each rank's RNG is restored from last.pt, so the resumed run ends
    exactly where an uninterrupted 2-process run does."""
    launch(tmp_path / "full", "--dropout", "0.1", nproc=2)
    killed = launch(tmp_path / "killed", "--dropout", "0.1", "--kill-after", "23", nproc=2, check=False)
    assert killed.returncode != 0 and "killed after the planned number of steps" in killed.stderr
    assert load_checkpoint(tmp_path / "killed" / "ckpt" / "last.pt")["epoch"] == 2  # died in the third epoch
    assert len(load_checkpoint(tmp_path / "killed" / "ckpt" / "last.pt")["rank_rng"]) == 2
    launch(tmp_path / "killed", "--dropout", "0.1", "--resume", nproc=2)
    assert history(tmp_path / "killed") == history(tmp_path / "full")
    full, resumed = torch.load(tmp_path / "full" / "weights.pt"), torch.load(tmp_path / "killed" / "weights.pt")
    assert all(torch.equal(full[k], resumed[k]) for k in full)
    # rank 0 alone logged: one DVCLive row per epoch across the restart
    rows = (tmp_path / "killed" / "live" / "plots" / "metrics" / "val" / "auroc.tsv").read_text().splitlines()
    assert [r.split("\t")[0] for r in rows] == ["step", "0", "1", "2"]
