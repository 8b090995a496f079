"""Skip-gram batches over code sequences (trained by `tasks.SkipGramTask` in `training.fit`).

Contexts of a target are codes of the same patient within `horizon_days` of it (either
side, the target itself excluded). When a target has at most `n_contexts` of them, all
are used (the rest of the C slots are padding); otherwise `n_contexts` are drawn
uniformly with replacement, afresh every epoch. Each pair's `dt` is the time between the
two codes in days, which the model turns into the weight exp(-lambda |dt|). So time, not
a position window, decides how much a context counts; with lambda = 0 every code within
the horizon counts the same. Slots are drawn uniformly, so a horizon far beyond 1/lambda
fills most of them with contexts that weigh almost nothing (the defaults, 1 day and
4 per day, put the horizon's weight at 0.018).

Negatives: K codes per (target, context) pair from the train unigram distribution raised
to 0.75 (word2vec's noise distribution), drawn with the batch.

Training batches draw from torch's global generator, which `fit` seeds and stores in its
checkpoints, so a resumed run draws what an uninterrupted one would. Validation batches
use a private generator reset on every pass: each epoch is scored on the same pairs.
"""
from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch

from ehrseq.code_embeddings.sequences import SequenceArrays

Batch = dict[str, torch.Tensor]


def noise_distribution(counts, power: float = 0.75) -> torch.Tensor:
    """P(code) proportional to count ** power. counts [V] -> [V] float."""
    weights = np.asarray(counts, dtype=np.float64) ** power
    if weights.sum() <= 0:
        raise ValueError("noise distribution: every code count is 0")
    return torch.from_numpy(weights / weights.sum()).float()


class SkipGramBatches:
    """An iterable of skip-gram batches; `len()` is the number of batches per pass.

    Each batch: target [B], context [B, C], dt [B, C] (days, float32), context_mask
    [B, C] (True = real), negatives [B, C, K]. Targets without any other code within the
    horizon can teach nothing and are left out (`lonely_targets` counts them).
    """

    def __init__(
        self, arrays: SequenceArrays, noise: torch.Tensor, *, n_contexts: int, horizon_days: float,
        n_negatives: int, batch_size: int, shuffle: bool, seed: int = 0,
    ):
        if n_contexts < 1 or n_negatives < 1 or horizon_days < 0:
            raise ValueError(f"need n_contexts >= 1, n_negatives >= 1, horizon_days >= 0; got "
                             f"{n_contexts}, {n_negatives}, {horizon_days}")
        days = np.asarray(arrays.days, dtype=np.float64)
        # One sorted key over all patients: a patient's codes sit in a band of their own,
        # so a window [t - h, t + h] never reaches another patient.
        band = (days.max() if len(days) else 0.0) + 2 * horizon_days + 1.0
        key = arrays.patient * band + days
        if len(key) and np.any(np.diff(key) < 0):
            raise ValueError("sequence arrays must be grouped by patient and time-sorted within each")
        lo = np.searchsorted(key, key - horizon_days, side="left")
        hi = np.searchsorted(key, key + horizon_days, side="right")
        available = hi - lo - 1  # codes in the window other than the target itself
        self.lonely_targets = int((available == 0).sum())
        self.targets = torch.from_numpy(np.flatnonzero(available > 0))
        self.tokens = torch.as_tensor(np.array(arrays.tokens, dtype=np.int64))
        self.days = torch.from_numpy(days)
        self.lo = torch.from_numpy(lo)
        self.available = torch.from_numpy(available)
        self.noise = noise
        self.n_contexts, self.n_negatives = n_contexts, n_negatives
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed

    def __len__(self) -> int:
        return math.ceil(len(self.targets) / self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        generator = None if self.shuffle else torch.Generator().manual_seed(self.seed)
        n = len(self.targets)
        order = torch.randperm(n) if self.shuffle else torch.arange(n)
        for start in range(0, n, self.batch_size):
            yield self.batch(self.targets[order[start:start + self.batch_size]], generator)

    def batch(self, position: torch.Tensor, generator: torch.Generator | None = None) -> Batch:
        """The batch of the targets at these sequence positions [B]."""
        B, C, K = len(position), self.n_contexts, self.n_negatives
        available = self.available[position][:, None]  # [B, 1]
        slot = torch.arange(C)[None, :]  # [1, C]
        drawn = (torch.rand(B, C, generator=generator, dtype=torch.float64) * available).long()  # [B, C]
        take_all = available <= C
        mask = ~take_all | (slot < available)  # [B, C]
        offset = torch.where(take_all, slot, drawn).masked_fill(~mask, 0)
        context_pos = self.lo[position][:, None] + offset  # [B, C]
        context_pos = context_pos + (context_pos >= position[:, None]).long()  # step over the target itself
        dt = (self.days[context_pos] - self.days[position][:, None]).abs().float()  # [B, C] days
        negatives = torch.multinomial(self.noise, B * C * K, replacement=True, generator=generator).view(B, C, K)
        return {"target": self.tokens[position], "context": self.tokens[context_pos], "dt": dt,
                "context_mask": mask, "negatives": negatives}
