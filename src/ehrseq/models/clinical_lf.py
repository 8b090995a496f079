"""clinical_lf: a transformer encoder over embedded clinical events, for in-hospital mortality.

    steps [B, T, F] --Linear--> [B, T, E] + sinusoidal positions
        --TransformerEncoder (key padding mask)--> h [B, T, E]
        --attention pooling (learned query, 4 heads)--> [B, E]
        --concat static [B, S]--> MLP --> one logit [B]

plus a per-step logit head on h (for the optional temporal auxiliary loss). The model
returns logits; `BCEWithLogits` losses live in `clinical_lf_loss`, and the sigmoid is
only for reporting. Attention weights (every layer and the pooling) are read by
`ehrseq.models.attention` with hooks on this real forward pass.

Steps come from `ehrseq.features` (F = 5 event kinds + D text dims + 1 time). A stay with
no event (all padding) is predicted from its static features alone: its pooled vector is
zero. Letting its attention rows see position 0 only avoids the NaN of an all-masked
softmax; the zero multiplier then removes whatever that position held.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def sinusoidal_positions(T: int, d_model: int, device: torch.device | None = None) -> torch.Tensor:
    """[T, E] fixed sin/cos encoding ("Attention Is All You Need"), any length, no buffer."""
    position = torch.arange(T, dtype=torch.float32, device=device)[:, None]  # [T, 1]
    freq = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32, device=device) * (-math.log(10000.0) / d_model))
    pe = torch.zeros(T, d_model, device=device)
    pe[:, 0::2] = torch.sin(position * freq)
    pe[:, 1::2] = torch.cos(position * freq)[:, : d_model // 2]
    return pe


class ClinicalLF(nn.Module):
    def __init__(
        self,
        step_dim: int,
        static_dim: int,
        d_model: int,
        n_layers: int,
        n_heads: int,
        ff_dim: int,
        dropout: float,
        attention_dropout: float,
        pool_heads: int,
        mlp_hidden: int,
        norm_first: bool,
    ):
        # No defaults: sizes live in params.yaml (`train.clinical_lf.model`), the one home
        # of every default; step_dim and static_dim come from the fitted feature encoder.
        super().__init__()
        self.input_proj = nn.Linear(step_dim, d_model)
        self.dropout = nn.Dropout(dropout)
        layer = nn.TransformerEncoderLayer(
            d_model, n_heads, ff_dim, dropout, batch_first=True, norm_first=norm_first
        )
        # The layer gives its one dropout to the attention weights too; ours is apart for
        # its CPU cost (see models/transformer.py). MultiheadAttention reads the float at
        # every forward.
        layer.self_attn.dropout = attention_dropout
        # No nested tensors: they drop padded positions inside the encoder, which hooks
        # reading attention weights and the padding-invariance guarantee both rely on.
        self.encoder = nn.TransformerEncoder(layer, n_layers, enable_nested_tensor=False)
        self.pool_query = nn.Parameter(torch.randn(1, 1, d_model) * 0.02)
        # No dropout on the pooling weights: they are what the explanations read.
        self.pool = nn.MultiheadAttention(d_model, pool_heads, batch_first=True)
        self.step_head = nn.Linear(d_model, 1)
        self.classifier = nn.Sequential(
            nn.Linear(d_model + static_dim, mlp_hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(mlp_hidden, mlp_hidden // 2),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(mlp_hidden // 2, 1),
        )

    def forward(
        self,
        steps: torch.Tensor,
        static: torch.Tensor,
        padding_mask: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        """steps [B, T, F], static [B, S], padding_mask [B, T] (True = padding)."""
        B, T, _ = steps.shape
        has_events = ~padding_mask.all(dim=1)  # [B]
        key_mask = padding_mask.clone()
        key_mask[:, 0] &= has_events  # an empty stay attends to position 0 (no NaN); zeroed below

        x = self.input_proj(steps) + sinusoidal_positions(T, self.input_proj.out_features, steps.device)  # [B, T, E]
        h = self.encoder(self.dropout(x), src_key_padding_mask=key_mask)  # [B, T, E]

        query = self.pool_query.expand(B, -1, -1)  # [B, 1, E]
        pooled, _ = self.pool(query, h, h, key_padding_mask=key_mask, need_weights=False)  # [B, 1, E]
        pooled = pooled.squeeze(1) * has_events[:, None].to(pooled.dtype)  # [B, E]

        logits = self.classifier(torch.cat([pooled, static], dim=-1)).squeeze(-1)  # [B]
        step_logits = self.step_head(h).squeeze(-1).masked_fill(padding_mask, 0.0)  # [B, T]
        return {"logits": logits, "step_logits": step_logits}


def temporal_step_weights(
    hours_before_cutoff: torch.Tensor, padding_mask: torch.Tensor, temporal_lambda: float
) -> torch.Tensor:
    """[B, T] weights exp(-lambda * hours before cutoff) on real steps, 0 on padding."""
    if temporal_lambda < 0:
        raise ValueError(f"temporal_lambda must be >= 0, got {temporal_lambda}")
    return torch.exp(-temporal_lambda * hours_before_cutoff) * (~padding_mask).to(hours_before_cutoff.dtype)


def clinical_lf_loss(
    outputs: dict[str, torch.Tensor],
    batch: dict[str, torch.Tensor],
    temporal_lambda: float = 0.0,
    pos_weight: float = 1.0,
) -> dict[str, torch.Tensor]:
    """Stay-level BCE on the logit, plus (lambda > 0) the temporal auxiliary loss.

    The auxiliary term asks every step's logit to predict the stay's outcome, weighted by
    exp(-lambda * hours before cutoff): recent events must carry the signal, old ones
    barely count. It is summed over real steps and divided by their number (not by the
    weights' sum, which would inflate the term for a stay whose events are all old).
    lambda = 0 switches it off.
    """
    label = batch["label"].to(outputs["logits"].dtype)  # [B]
    pw = torch.tensor(pos_weight, dtype=label.dtype, device=label.device)
    stay_loss = F.binary_cross_entropy_with_logits(outputs["logits"], label, pos_weight=pw)
    if temporal_lambda == 0:
        return {"loss": stay_loss, "stay_loss": stay_loss, "step_loss": torch.zeros_like(stay_loss)}
    padding_mask = batch["padding_mask"]
    weights = temporal_step_weights(batch["hours_before_cutoff"], padding_mask, temporal_lambda)  # [B, T]
    per_step = F.binary_cross_entropy_with_logits(
        outputs["step_logits"], label[:, None].expand_as(weights), pos_weight=pw, reduction="none"
    )  # [B, T]
    step_loss = (weights * per_step).sum() / (~padding_mask).sum().clamp_min(1)
    return {"loss": stay_loss + step_loss, "stay_loss": stay_loss, "step_loss": step_loss}
