"""Discrete-time survival LSTM over visits of codes (seed 000), with a multi-bin hazard head.

codes [B, V, C] -> embedding (padding id 0 is a zero vector) -> masked mean per visit
(count clamped to 1, so an empty visit is a zero vector, never 0/0) -> one-direction LSTM
over visits, packed with `enforce_sorted=False` and unpacked with `total_length=V` (so the
output lines up with the input whatever the longest row) -> from each visit's state, H
hazard logits: logit of P(death in bin j+m | alive at the end of bin j), m = 1..H, for
the state after bin j. With H = 1 this is the seed's per-visit hazard, shifted so that
a visit's hazard is predicted from the state *before* it (the seed let a visit's state
see the visit it predicts).

The hazard of a bin also depends on the time since the cutoff (deaths cluster early), which
a state cannot read off its visits: a learned baseline log-odds per bin after the cutoff,
alpha_k, is added to every logit for bin k = j + m (a discrete-time baseline hazard, as in
a Cox model). It starts at `initial_hazard` (the train split's Kaplan-Meier hazards, so the
untrained model is Kaplan-Meier; from 0 Adam needs hundreds of steps to reach a hazard of
0.5%, and meanwhile pushes every state towards "low risk").

One direction only: a state must summarise the past, never the bins it predicts.
Outputs are logits (the loss uses logsigmoid; no log(0) anywhere). Masking, the model's
two of the three levels: codes (`visit_mask`, in the mean) and output (a padded visit's
logits are -inf: hazard exactly 0, so it can carry no event; the loss selects with
`torch.where`, since -inf * 0 is NaN).
Packing on CPU is a speed question only (see models/lstm.py and benchmarks/train.py);
`packed="auto"` packs on CUDA.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from ehrseq.schema import PAD_ID


class SurvivalLSTM(nn.Module):
    def __init__(
        self,
        vocab_size: int,
        horizon_bins: int,
        embedding_dim: int,
        hidden_size: int,
        num_layers: int,
        dropout: float,
        packed: bool | str,
        initial_hazard: list[float] | None,  # None: start every bin at hazard 0.5
    ):
        super().__init__()
        if packed not in (True, False, "auto"):
            raise ValueError(f"packed must be true, false or 'auto', got {packed!r}")
        if horizon_bins < 1:
            raise ValueError(f"horizon_bins must be >= 1, got {horizon_bins}")
        self.packed = packed
        self.horizon_bins = horizon_bins
        self.embed = nn.Embedding(vocab_size, embedding_dim, padding_idx=PAD_ID)
        self.drop = nn.Dropout(dropout)
        self.lstm = nn.LSTM(embedding_dim, hidden_size, num_layers, batch_first=True,
                            dropout=dropout if num_layers > 1 else 0.0)
        self.hazard_head = nn.Linear(hidden_size, horizon_bins)
        if initial_hazard is not None and len(initial_hazard) != horizon_bins:
            raise ValueError(f"initial_hazard needs {horizon_bins} values, got {len(initial_hazard)}")
        start = torch.zeros(horizon_bins) if initial_hazard is None else torch.logit(
            torch.tensor(initial_hazard, dtype=torch.float32).clamp(1e-4, 1 - 1e-4))
        self.baseline = nn.Parameter(start)  # [H] alpha_k, log-odds of bin k's hazard

    def visit_vectors(self, visit_codes: torch.Tensor, visit_mask: torch.Tensor) -> torch.Tensor:
        """Masked mean of code embeddings per visit. [B, V, C] -> [B, V, E]"""
        mask = visit_mask.unsqueeze(-1).to(self.embed.weight.dtype)  # [B, V, C, 1]
        summed = (self.embed(visit_codes) * mask).sum(dim=2)  # [B, V, E]
        count = mask.sum(dim=2).clamp(min=1)  # [B, V, 1]; an empty visit divides 0 by 1
        return summed / count

    def forward(self, visit_codes: torch.Tensor, visit_mask: torch.Tensor, sequence_mask: torch.Tensor,
                landmark: torch.Tensor) -> dict[str, torch.Tensor]:
        """{"logits": hazard logits [B, V, H]}, -inf on padded visits (hazard 0). `landmark` [B]:
        the position of the last pre-cutoff visit (state j = position - landmark)."""
        V, H = visit_codes.shape[1], self.horizon_bins
        lengths = sequence_mask.sum(dim=1)  # [B]; real visits form a prefix of each row
        x = self.drop(self.visit_vectors(visit_codes, visit_mask))  # [B, V, E]
        if x.is_cuda if self.packed == "auto" else self.packed:
            # A row with no visit cannot be packed; give it length 1 (its output is masked below).
            packed = pack_padded_sequence(x, lengths.clamp(min=1).cpu(), batch_first=True, enforce_sorted=False)
            states = pad_packed_sequence(self.lstm(packed)[0], batch_first=True, total_length=V)[0]  # [B, V, Hd]
        else:
            states = self.lstm(x)[0]  # [B, V, Hd]; padding comes after every real visit
        logits = self.hazard_head(self.drop(states))  # [B, V, H]
        j = torch.arange(V, device=landmark.device)[None, :] - landmark[:, None]  # [B, V]
        k = j[:, :, None] + torch.arange(1, H + 1, device=landmark.device)  # [B, V, H] bin predicted
        # bins outside 1..H (pre-cutoff states, beyond the horizon) never enter the loss or the curve
        logits = logits + self.baseline[(k.clamp(1, H) - 1)]
        return {"logits": logits.masked_fill(~sequence_mask.unsqueeze(-1), float("-inf"))}
