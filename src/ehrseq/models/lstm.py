"""LSTM over token ids: a next-token language model and a mortality classifier.

Bidirectional without seeing the future: the two directions are two separate LSTM
stacks, and only the forward stack feeds the next-token head. (A stacked
`nn.LSTM(bidirectional=True)` would not do: from its second layer on, the forward
direction reads the first layer's backward outputs, which summarise the future, so even
a "forward-only" head would leak the token it must predict.) The backward stack reads
each sequence reversed within its real length, and serves the mortality head only; it
is trained during fine-tuning.

Padding never changes an output on a real token, packed or not: the forward stack
reaches padding only after the last real token, and the backward stack reads sequences
reversed within their lengths, so its padding also comes last. Packing
(`pack_padded_sequence(enforce_sorted=False)`) is therefore purely about speed, and the
speed depends on the device. `packed="auto"` packs on CUDA, where cuDNN skips the padded
steps, and not on CPU: there the packed LSTM falls off PyTorch's fused oneDNN kernel,
and its backward pass slices the packed input once per time step (a full-size gradient
buffer each time), which makes packed *training* slower than padded, by 2-4x in
benchmarks/train.py. On CPU, length-bucketed batches are what cut the padding.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from ehrseq.models.head import MortalityHead
from ehrseq.schema import PAD_ID


def reverse_within_length(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Reverse each row's first `lengths[b]` steps, leaving padding in place. x: [B, T, ...]."""
    T = x.shape[1]
    positions = torch.arange(T, device=x.device)[None, :]  # [1, T]
    lengths = lengths.to(x.device)[:, None]  # [B, 1]
    source = torch.where(positions < lengths, lengths - 1 - positions, positions)  # [B, T]
    index = source.view(*source.shape, *([1] * (x.dim() - 2))).expand_as(x)
    return x.gather(1, index)


class LSTMTokenModel(nn.Module):
    def __init__(
        self,
        vocab_size: int,
        embedding_dim: int,
        hidden_size: int,
        num_layers: int,
        dropout: float,
        bidirectional: bool,
        packed: bool | str = "auto",
    ):
        super().__init__()
        if packed not in (True, False, "auto"):
            raise ValueError(f"packed must be true, false or 'auto', got {packed!r}")
        self.packed = packed
        self.embed = nn.Embedding(vocab_size, embedding_dim, padding_idx=PAD_ID)
        self.drop = nn.Dropout(dropout)

        def stack() -> nn.LSTM:
            return nn.LSTM(embedding_dim, hidden_size, num_layers, batch_first=True,
                           dropout=dropout if num_layers > 1 else 0.0)

        self.forward_lstm = stack()
        self.backward_lstm = stack() if bidirectional else None
        self.lm_head = nn.Linear(hidden_size, vocab_size)
        self.mortality_head = MortalityHead(hidden_size * (2 if bidirectional else 1), dropout)

    def _run(self, lstm: nn.LSTM, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        if not (x.is_cuda if self.packed == "auto" else self.packed):
            return lstm(x)[0]
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, _ = lstm(packed)
        return pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])[0]  # zeros on padding

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        lengths = attention_mask.sum(dim=1)  # [B]
        x = self.drop(self.embed(input_ids))  # [B, T, E]
        forward_states = self._run(self.forward_lstm, x, lengths)  # [B, T, H]
        if self.backward_lstm is None:
            hidden = forward_states
        else:
            backward_states = self._run(self.backward_lstm, reverse_within_length(x, lengths), lengths)
            hidden = torch.cat([forward_states, reverse_within_length(backward_states, lengths)], dim=-1)  # [B, T, 2H]
        hidden = self.drop(hidden)
        logits, pool_weights = self.mortality_head(hidden, attention_mask)
        return {"hidden": hidden, "logits": logits, "pool_weights": pool_weights}

    def next_token_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits for the token after each position, from the forward stack only. [..., V]"""
        return self.lm_head(hidden[..., : self.lm_head.in_features])
