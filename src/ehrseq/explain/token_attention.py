"""Self-attention weights of the causal token models, read on their real forward pass.

- `transformer` (ours): `CausalSelfAttention` calls `F.scaled_dot_product_attention`,
  which never returns weights. A forward hook on each attention module receives the
  module's REAL input (`ln_1(x)` of its block, and the block's [B, 1, T, T] boolean
  mask) and recomputes softmax(q k^T / sqrt(d) masked) from the module's own `qkv`
  weights -- the weights SDPA used (eval mode: no attention dropout). The test checks
  that `proj(A @ v)` reproduces the module's output, so a silent divergence fails.
- `gpt2` (Hugging Face): each `GPT2Attention` returns `(output, weights)`, but the SDPA
  implementation returns `None` weights. Inside the capture the backbone is switched to
  the eager implementation (same maths, weights materialised) and a forward hook reads
  `output[1]`; the previous implementation is restored afterwards.

Every hook must fire exactly once per capture, or capture fails loudly. Weights are
[B, H, T, T] (query rows, key columns) per layer, in order; rows of padded queries are
whatever the model computed there (ignored by `attention_rollout`, which zeroes them).
"""
from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
from torch import nn


def _transformer_weights(module: nn.Module, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    B, T, D = x.shape
    q, k, _ = module.qkv(x).split(D, dim=2)  # [B, T, D] each
    q, k = (t.view(B, T, module.n_heads, D // module.n_heads).transpose(1, 2) for t in (q, k))  # [B, nh, T, hd]
    logits = (q @ k.transpose(-1, -2)) / math.sqrt(D // module.n_heads)  # [B, nh, T, T]
    return logits.masked_fill(~mask, float("-inf")).softmax(dim=-1)


@contextlib.contextmanager
def record_token_attention(model: nn.Module) -> Iterator[list[list[torch.Tensor]]]:
    """Hooks on every self-attention module of a `transformer` or `gpt2` token model.

        with record_token_attention(model) as records:
            model(input_ids, attention_mask)
        layers = [r[0] for r in records]   # one [B, H, T, T] per layer
    """
    handles, restore = [], None
    if hasattr(model, "blocks"):  # TransformerTokenModel
        modules = [block.attn for block in model.blocks]

        def hook_for(records):
            def keep(module, args, output):
                records.append(_transformer_weights(module, args[0], args[1]).detach())
            return keep
    elif hasattr(model, "backbone"):  # GPT2TokenModel
        modules = [block.attn for block in model.backbone.h]
        restore = model.backbone.config._attn_implementation
        model.backbone.set_attn_implementation("eager")

        def hook_for(records):
            def keep(module, args, output):
                if output[1] is None:
                    raise RuntimeError("GPT-2 attention returned no weights; the eager implementation is off")
                records.append(output[1].detach())
            return keep
    else:
        raise TypeError(f"{type(model).__name__} has no self-attention to record")
    records: list[list[torch.Tensor]] = [[] for _ in modules]
    try:
        for module, rec in zip(modules, records):
            handles.append(module.register_forward_hook(hook_for(rec)))
        yield records
    finally:
        for handle in handles:
            handle.remove()
        if restore is not None:
            model.backbone.set_attn_implementation(restore)


def token_layer_attention(records: list[list[torch.Tensor]]) -> list[torch.Tensor]:
    """The one forward's weights per layer, after checking every hook fired exactly once."""
    calls = [len(r) for r in records]
    if set(calls) != {1}:
        raise RuntimeError(f"attention hooks fired {calls} times per layer; expected once each (run one forward)")
    return [r[0] for r in records]
