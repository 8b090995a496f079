"""The mortality head every token model shares."""
from __future__ import annotations

import torch
from torch import nn


class MortalityHead(nn.Module):
    """Attention pooling over real tokens, then one logit.

    Why attention pooling and not the last token's state: a risk event may sit hundreds
    of tokens before `<eos>`; a learned weight per position gives the loss a direct path
    to it, which matters most for the LSTM, whose last state must otherwise carry it
    through every later step. The weights are returned for inspection.
    """

    def __init__(self, hidden_size: int, dropout: float):
        super().__init__()
        self.score = nn.Linear(hidden_size, 1)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(hidden_size, 1)

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        scores = self.score(hidden).squeeze(-1)  # [B, T]
        scores = scores.masked_fill(~attention_mask, float("-inf"))
        weights = scores.softmax(dim=-1)  # [B, T], zero on padding
        pooled = torch.einsum("bt,bth->bh", weights, hidden)  # [B, H]
        logit = self.classifier(self.dropout(pooled)).squeeze(-1)  # [B]
        return logit, weights
