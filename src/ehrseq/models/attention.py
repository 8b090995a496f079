"""Attention weights of clinical_lf, read from its real forward pass.

Beside the models, not in `explain/`, because both the explanation and the training
loop's snapshots (`AttentionSnapshots`, a `fit` callback) read them; it needs torch and
numpy only, never Captum.

`nn.TransformerEncoderLayer` calls its `self_attn` with `need_weights=False`, and in eval
mode without grad it may skip `self_attn` altogether (the fused fast path). So weights
are captured with hooks: a forward pre-hook (`with_kwargs=True`) forces
`need_weights=True, average_attn_weights=False` on each attention module, a forward hook
reads the weights the module really computed on its real input (with `norm_first` that is
`norm1(x)`, which re-running `self_attn(x, x, x)` would get wrong), and the fast path is
switched off while the hooks are on. Every hook must fire exactly once per forward, or
capture fails loudly instead of returning nothing.

Weights include attention dropout when the model is in training mode: capture under
`model.eval()` to see the weights the model predicts with.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from torch import nn

from ehrseq.io import atomic_path
from ehrseq.torch_utils import eval_mode


@dataclass
class AttentionWeights:
    layers: list[torch.Tensor]  # one [B, H, T, T] per encoder layer, in order (query rows, key columns)
    pooling: torch.Tensor  # [B, H_pool, 1, T]

    def to_arrays(self) -> dict[str, np.ndarray]:
        arrays = {f"layer_{i}": w.float().cpu().numpy() for i, w in enumerate(self.layers)}
        arrays["pooling"] = self.pooling.float().cpu().numpy()
        return arrays


def _attention_modules(model: nn.Module) -> dict[str, nn.MultiheadAttention]:
    modules = {f"layer_{i}": layer.self_attn for i, layer in enumerate(model.encoder.layers)}
    modules["pooling"] = model.pool
    return modules


class AttentionRecorder:
    """Collects the weights of every attention module while `record_attention` is active."""

    def __init__(self, names: Sequence[str]):
        self.records: dict[str, list[torch.Tensor]] = {name: [] for name in names}

    def weights(self) -> AttentionWeights:
        """The weights of the one forward pass run inside the context."""
        calls = {name: len(r) for name, r in self.records.items()}
        if set(calls.values()) != {1}:
            raise RuntimeError(
                f"attention hooks fired {calls} times; expected once each. A module that was never "
                "called took a fused fast path (or no forward ran inside the context); run one "
                "forward per capture."
            )
        layers = [self.records[name][0] for name in self.records if name.startswith("layer_")]
        return AttentionWeights(layers=layers, pooling=self.records["pooling"][0])


def _force_weights(module, args, kwargs):
    if len(args) > 3:
        raise RuntimeError("attention capture needs need_weights passed by keyword, not position")
    return args, {**kwargs, "need_weights": True, "average_attn_weights": False}


@contextlib.contextmanager
def record_attention(model: nn.Module) -> Iterator[AttentionRecorder]:
    """Hooks on every attention module of a ClinicalLF while the block runs.

        with record_attention(model) as rec:
            out = model(steps, static, padding_mask)
        attention = rec.weights()
    """
    modules = _attention_modules(model)
    recorder = AttentionRecorder(list(modules))
    handles = []
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        for name, module in modules.items():
            def keep(module, args, output, name=name):
                recorder.records[name].append(output[1].detach())

            handles.append(module.register_forward_pre_hook(_force_weights, with_kwargs=True))
            handles.append(module.register_forward_hook(keep))
        yield recorder
    finally:
        for handle in handles:
            handle.remove()
        torch.backends.mha.set_fastpath_enabled(fastpath)


@torch.no_grad()
def forward_with_attention(
    model: nn.Module, batch: dict[str, torch.Tensor]
) -> tuple[dict[str, torch.Tensor], AttentionWeights]:
    """One real forward pass over a collated batch, with its attention weights."""
    with record_attention(model) as rec:
        outputs = model(batch["steps"], batch["static"], batch["padding_mask"])
    return outputs, rec.weights()


def save_attention(path: str | Path, attention: AttentionWeights, batch: dict[str, torch.Tensor]) -> None:
    """Compressed npz: layer_i [B, H, T, T], pooling [B, H, 1, T], and the batch's
    padding_mask, stay_id and event_row (those it has), so positions can be named later."""
    arrays = attention.to_arrays()
    for key in ("padding_mask", "stay_id", "event_row"):
        if key in batch:
            arrays[key] = batch[key].cpu().numpy()
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:  # a file object: np.savez would otherwise append ".npz" to the name
            np.savez_compressed(f, **arrays)


class AttentionSnapshots:
    """A `fit` callback: every `every`-th training step, the attention of that step's batch
    (every encoder layer and the pooling, per head) as `out_dir/batch_<step>.npz`.

    Keyed by the global step `fit` passes (restored from the checkpoint on resume), so a
    killed and resumed run writes the same files as an uninterrupted one. The snapshot is
    a real forward pass in eval mode without grad, before the step's training forward: it
    draws no dropout randomness and changes neither the weights nor any RNG, so it cannot
    change the training run.
    """

    def __init__(self, every: int, out_dir: str | Path):
        if every < 1:
            raise ValueError(f"attention snapshots need every >= 1, got {every}")
        self.every = every
        self.out_dir = Path(out_dir)

    def __call__(self, step: int, model: nn.Module, batch: dict[str, torch.Tensor]) -> None:
        if step % self.every:
            return
        with eval_mode(model):
            _, attention = forward_with_attention(model, batch)
        save_attention(self.out_dir / f"batch_{step:07d}.npz", attention, batch)
