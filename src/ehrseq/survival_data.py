"""The survival view as torch data: `sequences/survival/{split}.parquet` -> Dataset -> batches.

A batch is a dict of tensors:

    visit_codes    [B, V, C] int64, code ids per visit, right-padded with PAD_ID (C >= 1)
    visit_mask     [B, V, C] bool, True on real codes (masking level 1, in the model)
    sequence_mask  [B, V]    bool, True on real visits, a prefix of each row (levels 2, 3)
    landmark       [B]       int64, position of the landmark state (last pre-cutoff visit)
    event_bin      [B]       int64, death bin (event 1) or bins survived (event 0), 0..H
    event          [B]       float32, 1 = death (not the seed's backwards comment)
    time_hours     [B]       float32, continuous time after the cutoff (metrics)
    stay_id, subject_id [B]  int64

An all-empty batch (every visit without codes) still has C = 1, never a zero-size
dimension. Rows that break the contract of `tokenize.survival_sequences` are dropped
and counted by `load_survival`, never passed on to make a NaN loss.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import torch
from torch.utils.data import Dataset

from ehrseq.schema import PAD_ID

log = logging.getLogger(__name__)

SURVIVAL_COLUMNS = ("stay_id", "subject_id", "visits", "pre_visits", "event_bin", "event", "time_hours",
                    "horizon_bins")


def load_survival(path: str | os.PathLike, vocab_size: int | None = None) -> tuple[pd.DataFrame, dict[str, int]]:
    """Read one split of the survival view; return the valid rows and drops by reason.

    Dropped: `no_pre_cutoff_visit` (no landmark state), `event_bin_beyond_horizon` (a
    label the H-bin head cannot hold, e.g. a view written with a longer horizon),
    `event_bin_before_first_bin` (a death in bin < 1), `missing_post_cutoff_visits`
    (fewer visits than the states its label needs). Whole-file breaches (a missing
    column, a token id outside the vocabulary, mixed horizons) raise with an example.
    """
    names = pq.read_schema(path).names
    missing = [c for c in SURVIVAL_COLUMNS if c not in names]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; has {names}")
    frame = pd.read_parquet(path, columns=list(SURVIVAL_COLUMNS))
    horizons = frame["horizon_bins"].unique()
    if len(horizons) > 1:
        raise ValueError(f"{path}: column 'horizon_bins' must be one value; has {sorted(horizons)[:5]}")
    bad = ~frame["event"].isin([0, 1])
    if bad.any():
        row = frame[bad].iloc[0]
        raise ValueError(f"{path}: column 'event' must be 0/1; stay_id {row.stay_id} has {row.event}")
    if vocab_size is not None and len(frame):
        empty = [np.zeros(0, np.int64)]
        flat = np.concatenate([np.concatenate([np.asarray(v, dtype=np.int64) for v in visits] or empty)
                               for visits in frame["visits"]])
        out = (flat <= PAD_ID) | (flat >= vocab_size)
        if out.any():
            raise ValueError(f"{path}: column 'visits' must hold ids 1..{vocab_size - 1}; found {flat[out][0]}")

    n_visits = frame["visits"].map(len).to_numpy()
    pre, k, event = (frame[c].to_numpy() for c in ("pre_visits", "event_bin", "event"))
    reasons = pd.Series("", index=frame.index, dtype=object)
    for reason, rows in (
        ("no_pre_cutoff_visit", pre < 1),
        ("event_bin_beyond_horizon", k > frame["horizon_bins"].to_numpy()),
        ("event_bin_before_first_bin", (event == 1) & (k < 1) | (k < 0)),
        ("missing_post_cutoff_visits", n_visits < pre + np.maximum(k - 1, 0)),
    ):
        reasons[(reasons == "") & rows] = reason
    dropped = {str(r): int(n) for r, n in reasons[reasons != ""].value_counts().items()}
    kept = frame[reasons == ""].reset_index(drop=True)
    log.info("read %s: %d stays (%d deaths within the horizon), dropped %s", path, len(kept),
             int(kept["event"].sum()), dropped or "none")
    return kept, dropped


class SurvivalDataset(Dataset):
    """One stay per item: its visits (only those its label needs) and its outcome."""

    def __init__(self, frame: pd.DataFrame):
        # Visits past the last state the label uses are never read: keep them out of batches.
        n_needed = frame["pre_visits"].to_numpy() + np.maximum(frame["event_bin"].to_numpy() - 1, 0)
        self.visits = [[torch.from_numpy(np.asarray(v, dtype=np.int64)) for v in visits[:n]]
                       for visits, n in zip(frame["visits"], n_needed)]
        self.lengths = np.array([len(v) for v in self.visits])
        self.labels = frame["event"].to_numpy()  # for samplers that balance by outcome
        self.columns = {c: frame[c].to_numpy() for c in ("stay_id", "subject_id", "pre_visits", "event_bin", "event",
                                                           "time_hours")}
        self.horizon_bins = int(frame["horizon_bins"].iloc[0]) if len(frame) else None

    def __len__(self) -> int:
        return len(self.visits)

    def __getitem__(self, i: int) -> dict:
        c = self.columns
        return {"visits": self.visits[i], "landmark": int(c["pre_visits"][i]) - 1, "event_bin": int(c["event_bin"][i]),
                "event": float(c["event"][i]), "time_hours": float(c["time_hours"][i]),
                "stay_id": int(c["stay_id"][i]), "subject_id": int(c["subject_id"][i])}


def collate_visits(items: Sequence[dict]) -> dict[str, torch.Tensor]:
    """Pad visits and codes into one batch (shapes in the module docstring)."""
    B = len(items)
    V = max(len(item["visits"]) for item in items)
    C = max([len(v) for item in items for v in item["visits"]] + [1])  # never 0: an all-empty batch
    visit_codes = torch.full((B, V, C), PAD_ID, dtype=torch.long)
    for b, item in enumerate(items):
        for v, codes in enumerate(item["visits"]):
            visit_codes[b, v, : len(codes)] = codes
    lengths = torch.tensor([len(item["visits"]) for item in items])
    return {
        "visit_codes": visit_codes,
        "visit_mask": visit_codes != PAD_ID,
        "sequence_mask": torch.arange(V)[None, :] < lengths[:, None],
        "landmark": torch.tensor([item["landmark"] for item in items], dtype=torch.long),
        "event_bin": torch.tensor([item["event_bin"] for item in items], dtype=torch.long),
        "event": torch.tensor([item["event"] for item in items], dtype=torch.float32),
        "time_hours": torch.tensor([item["time_hours"] for item in items], dtype=torch.float32),
        "stay_id": torch.tensor([item["stay_id"] for item in items], dtype=torch.long),
        "subject_id": torch.tensor([item["subject_id"] for item in items], dtype=torch.long),
    }
