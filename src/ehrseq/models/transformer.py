"""GPT-style causal decoder over token ids (after karpathy/nanoGPT), with a mortality head.

Pre-norm blocks, learned positions, next-token head tied to the token embedding.
Attention is `F.scaled_dot_product_attention` with one boolean mask that is both causal
and key-padding; see `attention_mask_4d` for why no row can be empty (no NaN).
`attention_dropout` (on the attention weights) is apart from `dropout` (embeddings,
residual branches, head) because on CPU any dropout_p > 0 sends SDPA to its math kernel,
which draws a [B, nh, T, T] mask: 1.4-1.8x the time of a whole training step here
(`benchmarks/train.py --attention-dropout`). CUDA's fused kernels draw it for little.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ehrseq.models.head import MortalityHead


def attention_mask_4d(attention_mask: torch.Tensor) -> torch.Tensor:
    """[B, T] bool (True = real token) -> [B, 1, T, T] bool (True = query may attend to key).

    A query sees earlier-or-same real keys. Every query is also allowed its own position:
    that changes nothing for a real query (it sees itself anyway) but gives a padding
    query one key, so its softmax row is never all -inf (which is NaN). Outputs at
    padding positions are then finite and ignored downstream.
    """
    T = attention_mask.shape[1]
    causal = torch.ones(T, T, dtype=torch.bool, device=attention_mask.device).tril()  # [T, T]
    self_only = torch.eye(T, dtype=torch.bool, device=attention_mask.device)  # [T, T]
    return causal & (attention_mask[:, None, None, :] | self_only)  # [B, 1, T, T]


class CausalSelfAttention(nn.Module):
    def __init__(self, d_model: int, n_heads: int, dropout: float, attention_dropout: float):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model ({d_model}) must be divisible by n_heads ({n_heads})")
        self.n_heads = n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.attn_dropout = attention_dropout
        self.resid_dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        B, T, D = x.shape
        q, k, v = self.qkv(x).split(D, dim=2)  # 3 x [B, T, D]
        q, k, v = (t.view(B, T, self.n_heads, D // self.n_heads).transpose(1, 2) for t in (q, k, v))  # [B, nh, T, hd]
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.attn_dropout if self.training else 0.0
        )  # [B, nh, T, hd]
        y = y.transpose(1, 2).reshape(B, T, D)  # [B, T, D]
        return self.resid_dropout(self.proj(y))


class Block(nn.Module):
    def __init__(self, d_model: int, n_heads: int, dropout: float, attention_dropout: float):
        super().__init__()
        self.ln_1 = nn.LayerNorm(d_model)
        self.attn = CausalSelfAttention(d_model, n_heads, dropout, attention_dropout)
        self.ln_2 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(
            nn.Linear(d_model, 4 * d_model), nn.GELU(), nn.Linear(4 * d_model, d_model), nn.Dropout(dropout)
        )

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), mask)
        return x + self.mlp(self.ln_2(x))


class TransformerTokenModel(nn.Module):
    def __init__(self, vocab_size: int, d_model: int, n_layers: int, n_heads: int, dropout: float,
                 attention_dropout: float, max_positions: int):
        super().__init__()
        self.max_positions = max_positions
        self.tok_emb = nn.Embedding(vocab_size, d_model)
        self.pos_emb = nn.Embedding(max_positions, d_model)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(d_model, n_heads, dropout, attention_dropout) for _ in range(n_layers))
        self.ln_f = nn.LayerNorm(d_model)
        self.lm_head = nn.Linear(d_model, vocab_size, bias=False)
        self.lm_head.weight = self.tok_emb.weight  # weight tying, as in GPT-2
        self.mortality_head = MortalityHead(d_model, dropout)
        self.apply(self._init_weights)
        # GPT-2's scaled init of the residual projections keeps the residual stream's
        # variance from growing with depth.
        for name, p in self.named_parameters():
            if name.endswith(("attn.proj.weight", "mlp.2.weight")):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * n_layers))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        B, T = input_ids.shape
        if T > self.max_positions:
            raise ValueError(f"sequence of {T} tokens exceeds max_positions={self.max_positions}; raise it in params")
        positions = torch.arange(T, device=input_ids.device)  # [T]
        x = self.drop(self.tok_emb(input_ids) + self.pos_emb(positions))  # [B, T, D]
        mask = attention_mask_4d(attention_mask)  # [B, 1, T, T]
        for block in self.blocks:
            x = block(x, mask)
        hidden = self.ln_f(x)  # [B, T, D]
        logits, pool_weights = self.mortality_head(hidden, attention_mask)
        return {"hidden": hidden, "logits": logits, "pool_weights": pool_weights}

    def next_token_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(hidden)  # [..., V]
