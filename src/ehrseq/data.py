"""Token sequences as torch data: a split's frame (`sequences.load_sequences`) -> Dataset
-> padded batches.

A batch is a plain dict of tensors, so the training loop and the tasks never depend on
which dataset produced it. Token batches hold:

    input_ids       [B, T] int64, right-padded with PAD_ID
    attention_mask  [B, T] bool, True on real tokens (always a prefix of the row)
    lengths         [B]    int64, number of real tokens
    label           [B]    float32, in-hospital mortality
    stay_id         [B]    int64, to join predictions back to stays

Right padding is a contract: the LSTM packs by `lengths` and the causal models rely on
real tokens forming a prefix.
"""
from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np
import pandas as pd
import torch
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import DataLoader, Dataset, Sampler

from ehrseq.schema import PAD_ID


class TokenSequenceDataset(Dataset):
    """One stay per item: its token ids, mortality label and stay id."""

    def __init__(self, frame: pd.DataFrame):
        self.input_ids = [torch.from_numpy(np.array(ids, dtype=np.int64)) for ids in frame["input_ids"]]
        self.labels = torch.tensor(frame["mortality"].to_numpy(), dtype=torch.float32)
        self.stay_ids = torch.tensor(frame["stay_id"].to_numpy(), dtype=torch.long)
        self.lengths = np.array([len(ids) for ids in self.input_ids])

    def __len__(self) -> int:
        return len(self.input_ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.input_ids[i], "label": self.labels[i], "stay_id": self.stay_ids[i]}


def collate_tokens(items: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Right-pad a list of items into one batch (see the module docstring for shapes)."""
    lengths = torch.tensor([len(item["input_ids"]) for item in items])
    input_ids = pad_sequence([item["input_ids"] for item in items], batch_first=True, padding_value=PAD_ID)  # [B, T]
    attention_mask = torch.arange(input_ids.shape[1])[None, :] < lengths[:, None]  # [B, T]
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "lengths": lengths,
        "label": torch.stack([item["label"] for item in items]),
        "stay_id": torch.stack([item["stay_id"] for item in items]),
    }


class LengthBucketSampler(Sampler[list[int]]):
    """Batches of similar length, in random order, reproducible from (seed, epoch).

    Training (shuffle=True): each epoch draws an order of the examples -- a permutation,
    or with `weights` a weighted draw with replacement -- cuts it into pools of
    `pool_batches` batches, sorts each pool by length, cuts the pool into batches and
    shuffles all batches. Sorting inside pools rather than globally keeps batches random
    while cutting most of the padding; `pool_batches=1` gives plain random batches.
    Evaluation (shuffle=False): one global sort by length, no randomness.

    Call `set_epoch` before iterating so that a resumed run sees the same batches.
    """

    def __init__(
        self,
        lengths: Sequence[int],
        batch_size: int,
        *,
        seed: int = 0,
        shuffle: bool = True,
        pool_batches: int = 50,
        weights: Sequence[float] | None = None,
    ):
        if batch_size < 1 or pool_batches < 1:
            raise ValueError(f"batch_size and pool_batches must be >= 1, got {batch_size}, {pool_batches}")
        if weights is not None and not shuffle:
            raise ValueError("weighted sampling draws at random; it needs shuffle=True")
        self.lengths = np.asarray(lengths)
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.pool_batches = pool_batches
        self.weights = None if weights is None else np.asarray(weights, dtype=float) / np.sum(weights)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return -(-len(self.lengths) // self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        if not self.shuffle:
            order = np.argsort(self.lengths, kind="stable")
            yield from (order[i : i + self.batch_size].tolist() for i in range(0, len(order), self.batch_size))
            return
        rng = np.random.default_rng([self.seed, self.epoch])
        n = len(self.lengths)
        order = rng.choice(n, size=n, p=self.weights) if self.weights is not None else rng.permutation(n)
        pool_size = self.batch_size * self.pool_batches
        batches = []
        for start in range(0, n, pool_size):
            pool = order[start : start + pool_size]
            pool = pool[np.argsort(self.lengths[pool], kind="stable")]
            batches += [pool[i : i + self.batch_size].tolist() for i in range(0, len(pool), self.batch_size)]
        for b in rng.permutation(len(batches)):
            yield batches[b]


class ShardedBatches(Sampler[list[int]]):
    """This rank's share of every batch of `batches` (multi-process training, one process
    per rank): the same global batches as one process, each split across the ranks.

    Every rank draws the same global batches (the inner sampler is seeded by (seed,
    epoch), not by rank), pads each to a multiple of `world_size` by repeating its first
    examples, and takes every `world_size`-th example from position `rank`. A
    length-sorted batch thus gives every rank a similar length profile (bucketing kept),
    and every rank gets the same number of batches of equal size, which
    DistributedDataParallel needs (one gradient all-reduce per step, an average of equal
    per-rank means = the global batch's mean). The trap: padding repeats up to
    `world_size - 1` examples of a batch whose size is not a multiple of `world_size`
    (training counts them twice; `rank_indices` lets evaluation drop them again).
    """

    def __init__(self, batches: Sampler[list[int]], rank: int, world_size: int):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in 0..{world_size - 1}, got {rank}")
        self.batches, self.rank, self.world_size = batches, rank, world_size

    def set_epoch(self, epoch: int) -> None:
        self.batches.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.batches)

    def shard(self, batch: list[int]) -> list[int]:
        padded = (batch * self.world_size)[: len(batch) + (-len(batch)) % self.world_size]
        return padded[self.rank :: self.world_size]

    def __iter__(self) -> Iterator[list[int]]:
        return (self.shard(batch) for batch in self.batches)

    def rank_indices(self) -> np.ndarray:
        """The dataset index of each example this rank reads in one pass, in order (an
        evaluation sampler's: it must yield the same batches every time)."""
        return np.array([i for batch in self for i in batch], dtype=np.int64)

    def global_indices(self) -> np.ndarray:
        """The dataset index of each example one process would read, in its order (no padding)."""
        return np.array([i for batch in self.batches for i in batch], dtype=np.int64)


def class_balance_weights(labels: Sequence[int]) -> np.ndarray:
    """Per-example sampling weights that make both classes equally likely to be drawn."""
    labels = np.asarray(labels).astype(int)
    counts = np.bincount(labels, minlength=2)
    if (counts == 0).any():
        raise ValueError(f"class-balanced sampling needs both classes; label counts are {counts.tolist()}")
    return 1.0 / counts[labels]


def token_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    device: torch.device,
    seed: int = 0,
    shuffle: bool = True,
    pool_batches: int = 50,
    weights: Sequence[float] | None = None,
    collate_fn=collate_tokens,
    rank: int = 0,
    world_size: int = 1,
) -> DataLoader:
    """A DataLoader of length-bucketed batches (the dataset has `lengths`); pinned memory
    only when feeding a GPU. `collate_fn` defaults to token batches; clinical_lf passes
    `features.collate`. With `world_size` > 1, `batch_size` is the global batch and this
    rank reads its share of each (`ShardedBatches`)."""
    sampler = LengthBucketSampler(
        dataset.lengths, batch_size, seed=seed, shuffle=shuffle, pool_batches=pool_batches, weights=weights
    )
    if world_size > 1:
        sampler = ShardedBatches(sampler, rank, world_size)
    return DataLoader(dataset, batch_sampler=sampler, collate_fn=collate_fn, pin_memory=device.type == "cuda")
