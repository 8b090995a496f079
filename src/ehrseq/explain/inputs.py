"""What explain reads besides the model: token sequences that name their events, event
descriptions, and the synthetic truth.

Token batches for training carry no `event_row`; an explanation needs it, to judge
methods per event and to name what it found. `TokenEventDataset` adds it (tokenize
writes each token's events.parquet row, -1 for `<bos>`, demographics, `<eos>`, gaps).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.nn.utils.rnn import pad_sequence

from ehrseq.data import TokenSequenceDataset, collate_tokens
from ehrseq.sequences import load_sequences

log = logging.getLogger(__name__)


class TokenEventDataset(TokenSequenceDataset):
    """TokenSequenceDataset whose items also hold `event_row` [T] (int64, -1 = no event)."""

    def __init__(self, frame: pd.DataFrame, event_rows: list[np.ndarray]):
        super().__init__(frame)
        self.event_rows = [torch.from_numpy(np.array(r, dtype=np.int64)) for r in event_rows]
        bad = [i for i, (ids, rows) in enumerate(zip(self.input_ids, self.event_rows)) if len(ids) != len(rows)]
        if bad:
            raise ValueError(f"stay_id {int(self.stay_ids[bad[0]])}: {len(self.input_ids[bad[0]])} tokens but "
                             f"{len(self.event_rows[bad[0]])} event_row values")

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {**super().__getitem__(i), "event_row": self.event_rows[i]}


def load_token_events(path: str | Path, vocab_size: int) -> TokenEventDataset:
    """One split of sequences/ with each token's event_row (checked like training's reader)."""
    frame = load_sequences(path, vocab_size)
    rows = pd.read_parquet(path, columns=["stay_id", "event_row"])
    if not (rows["stay_id"].to_numpy() == frame["stay_id"].to_numpy()).all():
        raise ValueError(f"{path}: column 'event_row' is not aligned with 'stay_id'")
    return TokenEventDataset(frame, rows["event_row"].to_list())


def collate_token_events(items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """`collate_tokens` plus event_row [B, T] (-1 at padding)."""
    out = collate_tokens(items)
    out["event_row"] = pad_sequence([it["event_row"] for it in items], batch_first=True, padding_value=-1)
    return out


def event_descriptions(events: pd.DataFrame, cohort: pd.DataFrame) -> pd.DataFrame:
    """Indexed by event_row (events.parquet row): event_type, code, text, hours_before_cutoff."""
    cutoff = events["stay_id"].map(cohort.set_index("stay_id")["cutoff"])
    hours = (cutoff - events["time"]).dt.total_seconds() / 3600.0
    out = events[["event_type", "code", "text"]].assign(hours_before_cutoff=hours.to_numpy())
    return out.reset_index(drop=True).rename_axis("event_row")


@dataclass
class Truth:
    """Planted events and their companions (event_row values). `companion_rows` is None
    when the truth folder records no companions; `companion_reason` then says why."""
    planted_rows: np.ndarray
    companion_rows: np.ndarray | None
    companion_reason: str | None = None


def read_truth(folder: str | Path) -> Truth | None:
    """data/interim/truth: planted_events.parquet (stay_id, event_row, rule) and, when the
    generator records them, companion_events.parquet (same columns). None for real data."""
    folder = Path(folder)
    planted_path, companion_path = folder / "planted_events.parquet", folder / "companion_events.parquet"
    if not planted_path.exists():
        return None
    planted = pd.read_parquet(planted_path)
    for col in ("stay_id", "event_row", "rule"):
        if col not in planted.columns:
            raise ValueError(f"{planted_path}: missing column {col!r}; has {list(planted.columns)}")
    if not companion_path.exists():
        reason = f"{companion_path} not found: this truth records no companion events"
        log.info("%s; companion-aware precision is undefined", reason)
        return Truth(planted["event_row"].to_numpy(np.int64), None, reason)
    companions = pd.read_parquet(companion_path)
    if "event_row" not in companions.columns:
        raise ValueError(f"{companion_path}: missing column 'event_row'; has {list(companions.columns)}")
    return Truth(planted["event_row"].to_numpy(np.int64), companions["event_row"].to_numpy(np.int64))
