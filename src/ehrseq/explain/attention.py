"""Attention-based event scores for the explanation: rollout through the encoder layers,
and the pooling weights per event. The weights themselves are captured on the real
forward pass by `ehrseq.models.attention`.
"""
from __future__ import annotations

from typing import Sequence

import torch


def attention_rollout(layers: Sequence[torch.Tensor], padding_mask: torch.Tensor) -> torch.Tensor:
    """[B, T, T] attention rollout (Abnar & Zuidema 2020) through the encoder layers.

    Each layer's head-averaged attention gets the residual connection as 0.5 A + 0.5 I;
    padded keys and padded query rows are zeroed, rows renormalised, and the layers
    multiplied in order (layer 0 first). Rows of real positions sum to 1; rows of padding
    are all zero; nothing is NaN even for an all-padding stay.
    """
    real = (~padding_mask).to(layers[0].dtype)  # [B, T]
    pair = real[:, :, None] * real[:, None, :]  # [B, T, T]
    eye = torch.eye(padding_mask.shape[1], dtype=real.dtype, device=real.device)  # [T, T]
    rollout = eye * real[:, :, None]  # [B, T, T]
    for A in layers:
        a = (0.5 * A.mean(dim=1) + 0.5 * eye) * pair  # [B, T, T]
        a = a / a.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(a.dtype).tiny)
        rollout = a @ rollout
    return rollout


def pooling_event_scores(pooling: torch.Tensor, padding_mask: torch.Tensor,
                         rollout: torch.Tensor | None = None) -> torch.Tensor:
    """[B, T] per-event attention score: pooling weights averaged over heads, optionally
    carried back through the encoder layers by `rollout` (the pooling query reads the last
    layer's outputs, which mix events). Zero on padding."""
    scores = pooling.mean(dim=1)  # [B, 1, T]
    if rollout is not None:
        scores = scores @ rollout  # [B, 1, T]
    return scores.squeeze(1).masked_fill(padding_mask, 0.0)
