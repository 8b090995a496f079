"""Hugging Face GPT-2 over token ids, built from a config sized to our vocabulary.

Nothing is downloaded: `GPT2Model(GPT2Config(...))` starts from random weights. We use
the bare `GPT2Model` plus our own next-token head (tied to `wte`, exactly as
`GPT2LMHeadModel` does) so that the language-model loss can project only the real
positions instead of every padded one, and so that every token model shares the
`forward` / `next_token_logits` interface. `attention_dropout` is GPT-2's `attn_pdrop`,
apart from `dropout` for its CPU cost (see `models/transformer.py`).
"""
from __future__ import annotations

import torch
from torch import nn
from transformers import GPT2Config, GPT2Model

from ehrseq.models.head import MortalityHead
from ehrseq.schema import BOS_ID, EOS_ID, PAD_ID


class GPT2TokenModel(nn.Module):
    def __init__(self, vocab_size: int, n_embd: int, n_layer: int, n_head: int, dropout: float,
                 attention_dropout: float, max_positions: int):
        super().__init__()
        config = GPT2Config(
            vocab_size=vocab_size,
            n_positions=max_positions,
            n_embd=n_embd,
            n_layer=n_layer,
            n_head=n_head,
            resid_pdrop=dropout,
            embd_pdrop=dropout,
            attn_pdrop=attention_dropout,
            bos_token_id=BOS_ID,
            eos_token_id=EOS_ID,
            pad_token_id=PAD_ID,
            use_cache=False,
        )
        self.max_positions = max_positions
        self.backbone = GPT2Model(config)
        self.lm_head = nn.Linear(n_embd, vocab_size, bias=False)
        self.lm_head.weight = self.backbone.wte.weight
        self.mortality_head = MortalityHead(n_embd, dropout)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        T = input_ids.shape[1]
        if T > self.max_positions:
            raise ValueError(f"sequence of {T} tokens exceeds max_positions={self.max_positions}; raise it in params")
        # GPT-2 combines this padding mask with its causal mask; positions count from 0
        # on every row, which is right for right-padded batches.
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask.long()).last_hidden_state  # [B, T, D]
        logits, pool_weights = self.mortality_head(hidden, attention_mask)
        return {"hidden": hidden, "logits": logits, "pool_weights": pool_weights}

    def next_token_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(hidden)  # [..., V]
