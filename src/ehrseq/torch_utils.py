"""Small torch helpers shared by the training loop, evaluation and explanation.

Nothing here knows a model, a task or a file: device choice, seeding, autocast, moving
a batch, switching a model to eval mode for one block, and the process group of
multi-process training (`start_distributed`, `gather_rows`).
"""
from __future__ import annotations

import contextlib
import os
import random
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

Batch = dict[str, torch.Tensor]


def pick_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def autocast(device: torch.device):
    """bf16 autocast on GPUs that support it (no loss scaling needed); full precision elsewhere."""
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def to_device(batch: Batch, device: torch.device) -> Batch:
    # non_blocking only helps from pinned memory, which the loaders pin only for CUDA.
    return {k: v.to(device, non_blocking=device.type == "cuda") for k, v in batch.items()}


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """`model.eval()` for the block, then the mode it had before (training stays training)."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


@dataclass(frozen=True)
class Distributed:
    """This process's place in a multi-process run (rank 0 of 1 without torchrun)."""

    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:  # the one process that writes files and logs
        return self.rank == 0


def start_distributed() -> Distributed:
    """Join the process group torchrun describes in the environment (RANK, WORLD_SIZE,
    LOCAL_RANK, MASTER_ADDR/PORT): backend nccl on CUDA, one GPU per process (LOCAL_RANK),
    gloo on CPU. Without torchrun (no WORLD_SIZE), or with one process, no group is made
    and the device is `pick_device()`."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return Distributed(0, 1, pick_device())
    if torch.cuda.is_available():
        local_rank = int(os.environ["LOCAL_RANK"])
        if local_rank >= torch.cuda.device_count():
            raise RuntimeError(f"process {local_rank} needs GPU {local_rank}, but {torch.cuda.device_count()} are "
                               f"visible: use at most that many processes (nproc) on this machine")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device)
    else:
        device = torch.device("cpu")
        dist.init_process_group("gloo")
    return Distributed(dist.get_rank(), dist.get_world_size(), device)


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def gather_rows(rows: dict[str, np.ndarray], index: np.ndarray, order: np.ndarray) -> dict[str, np.ndarray]:
    """Every rank's rows, on every rank, as one process would have them.

    `rows` are this rank's predictions (one row per example read), `index` the dataset
    index of each row, `order` the dataset indices in one process's order. Examples a
    sampler repeated to pad ranks to equal length appear twice across ranks and are kept
    once, so split metrics count each example exactly once.
    """
    parts: list = [None] * dist.get_world_size()
    dist.all_gather_object(parts, (index, rows))
    every_index = np.concatenate([i for i, _ in parts])
    _, first = np.unique(every_index, return_index=True)  # one row per example, by dataset index
    position = np.empty(int(order.max()) + 1, dtype=np.int64)
    position[order] = np.arange(len(order))
    keep = first[np.argsort(position[every_index[first]])]
    if len(keep) != len(order):
        raise ValueError(f"gathered {len(keep)} distinct examples across ranks, expected {len(order)}")
    return {key: np.concatenate([r[key] for _, r in parts])[keep] for key in rows}
