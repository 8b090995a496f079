"""From model positions to clinical events, and back.

Every model sees a stay as positions: clinical_lf one step per event, token models one
or more tokens per event plus tokens that are no event at all (`<bos>`, demographics,
`<eos>`, gap tokens; `event_row` -1). Explanations are judged per EVENT (a row of
events.parquet): a method's score for an event is the sum of its positions' scores
(attributions are additive), and removing an event removes all of its positions at
once. This module owns that mapping, so no method or metric handles tokens itself.

    index    [B, T] dense event id of each position (0..n_b - 1, in order of first
             appearance), -1 for positions that are no event and for padding
    rows     [B, E] event_row of each event, -1 beyond the stay's n_b events
    padding  [B, E] True beyond the stay's events
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class EventIndex:
    index: torch.Tensor  # [B, T] int64, -1 = no event
    rows: torch.Tensor  # [B, E] int64, -1 = padding
    padding: torch.Tensor  # [B, E] bool

    @property
    def n_events(self) -> torch.Tensor:
        return (~self.padding).sum(dim=1)  # [B]


def index_events(event_row: torch.Tensor, real: torch.Tensor) -> EventIndex:
    """`event_row` [B, T] (-1 = no event), `real` [B, T] (True = a real position, not padding).

    Positions sharing an event_row within a stay form one event, wherever they sit."""
    rows_np = torch.where(real, event_row, torch.full_like(event_row, -1)).cpu().numpy()
    B, T = rows_np.shape
    index = np.full((B, T), -1, dtype=np.int64)
    per_stay = []
    for b in range(B):
        is_event = rows_np[b] >= 0
        uniq, first, inverse = np.unique(rows_np[b, is_event], return_index=True, return_inverse=True)
        order = np.argsort(first, kind="stable")  # dense ids in order of first appearance
        rank = np.empty_like(order)
        rank[order] = np.arange(len(order))
        index[b, is_event] = rank[inverse]
        per_stay.append(uniq[order])
    E = max(1, max(len(r) for r in per_stay))  # at least one column, so an empty batch has a shape
    rows = np.full((B, E), -1, dtype=np.int64)
    for b, r in enumerate(per_stay):
        rows[b, : len(r)] = r
    device = event_row.device
    return EventIndex(torch.from_numpy(index).to(device), torch.from_numpy(rows).to(device),
                      torch.from_numpy(rows < 0).to(device))


def to_events(position_scores: torch.Tensor, events: EventIndex) -> torch.Tensor:
    """[B, T] per-position scores -> [B, E] per-event sums; 0 beyond a stay's events."""
    B, E = events.rows.shape
    is_event = events.index >= 0
    out = torch.zeros(B, E + 1, dtype=position_scores.dtype, device=position_scores.device)
    # non-event positions go to a spare last column, which is dropped
    target = torch.where(is_event, events.index, torch.full_like(events.index, E))
    return out.scatter_add(1, target, position_scores)[:, :E]


def positions_of(removed: torch.Tensor, events: EventIndex) -> torch.Tensor:
    """[B, E] bool (True = event removed) -> [B, T] bool, True on every position of a removed event."""
    is_event = events.index >= 0
    return removed.gather(1, events.index.clamp_min(0)) & is_event
