"""Small torch helpers shared by the training loop, evaluation and explanation.

Nothing here knows a model, a task or a file: device choice, seeding, autocast, moving
a batch, and switching a model to eval mode for one block.
"""
from __future__ import annotations

import contextlib
import random
from typing import Iterator

import numpy as np
import torch
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
