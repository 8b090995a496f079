"""Step and static features for `clinical_lf`: events + cohort + text embeddings -> tensors.

Per stay, the model sees its pre-cutoff events (the most recent `max_events`), oldest
first. Each event is one step:

    [ event-kind one-hot (5) | text embedding (D) | hours before cutoff, standardized (1) ]

and each stay has one static vector: one-hot categoricals (`schema.STATIC_CATEGORICAL`)
and standardized age. Everything fitted (time and age scalers, category lists, the
train-mean step used as the attribution baseline) is fitted on the TRAIN split only and
kept in a small `FeatureEncoder` that round-trips through JSON, so a checkpoint carries
exactly the encoding its model was trained with.

A stay with no pre-cutoff event is kept with zero steps: the model then predicts from its
static features alone (see `models/clinical_lf.py`), instead of the stay silently
vanishing from evaluation.
"""
from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from ehrseq.io import atomic_path
from ehrseq.schema import EVENT_TYPES, SPLITS, STATIC_CATEGORICAL, STATIC_NUMERIC

log = logging.getLogger(__name__)

MISSING = "<missing>"  # a null categorical is its own category (missingness is informative in the ICU)
EVENT_INPUT_COLUMNS = ("stay_id", "time", "event_type", "text", "after_cutoff")
COHORT_INPUT_COLUMNS = ("stay_id", "cutoff", "split", *STATIC_CATEGORICAL, *STATIC_NUMERIC)


def _require_columns(df: pd.DataFrame, columns: tuple[str, ...], name: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{name} lacks columns {missing}; it has {list(df.columns)}")


def _scale(values: np.ndarray) -> tuple[float, float]:
    """Mean and std for standardization; a constant column keeps std 1 (no division by 0)."""
    mean = float(values.mean()) if len(values) else 0.0
    std = float(values.std()) if len(values) else 1.0
    return mean, (std if std > 0 else 1.0)


# ------------------------------------------------------------------ event selection


def text_rows(texts: pd.Series, embedding_texts: pd.DataFrame, event_rows: np.ndarray) -> np.ndarray:
    """Row of vectors.npy for each event text (`embedding_texts`: texts.parquet, columns text, row)."""
    rows = pd.Index(embedding_texts["text"]).get_indexer(texts)
    if (rows < 0).any():
        bad = int(np.flatnonzero(rows < 0)[0])
        raise KeyError(
            f"{int((rows < 0).sum())} event texts have no embedding in texts.parquet (re-run the embed "
            f"stage?), e.g. events.parquet row {int(event_rows[bad])}: text={texts.iloc[bad]!r}"
        )
    return embedding_texts["row"].to_numpy()[rows].astype(np.int64)


def select_events(events: pd.DataFrame, cohort: pd.DataFrame, max_events: int) -> pd.DataFrame:
    """Pre-cutoff events of cohort stays, the most recent `max_events` per stay, oldest first.

    Returns stay_id, event_row (row index into events.parquet, to name an event later),
    kind (index into EVENT_TYPES), text, hours_before_cutoff (> 0).
    """
    _require_columns(events, EVENT_INPUT_COLUMNS, "events.parquet")
    _require_columns(cohort, ("stay_id", "cutoff"), "cohort.parquet")
    if max_events < 1:
        raise ValueError(f"max_events must be >= 1, got {max_events}")
    if cohort["stay_id"].duplicated().any():
        duplicate = cohort.loc[cohort["stay_id"].duplicated(), "stay_id"].iloc[0]
        raise ValueError(f"cohort.parquet has duplicate stay_id, e.g. {duplicate}")
    ev = events[list(EVENT_INPUT_COLUMNS)].reset_index(drop=True).rename_axis("event_row").reset_index()
    if ev["after_cutoff"].isna().any():
        row = ev.loc[ev["after_cutoff"].isna(), "event_row"].iloc[0]
        raise ValueError(f"events.parquet column after_cutoff has nulls, e.g. row {row}")
    ev = ev[~ev["after_cutoff"].astype(bool) & ev["stay_id"].isin(cohort["stay_id"])]
    kind = pd.Index(EVENT_TYPES).get_indexer(ev["event_type"])
    if (kind < 0).any():
        bad = ev.iloc[int(np.flatnonzero(kind < 0)[0])]
        raise ValueError(
            f"events.parquet column event_type has {bad['event_type']!r} (row {bad['event_row']}); "
            f"expected one of {EVENT_TYPES}"
        )
    cutoff = ev["stay_id"].map(cohort.set_index("stay_id")["cutoff"])
    hours = (cutoff - ev["time"]).dt.total_seconds().to_numpy() / 3600.0
    if not (hours > 0).all():
        bad = ev.iloc[int(np.flatnonzero(~(hours > 0))[0])]
        raise ValueError(
            f"events.parquet row {bad['event_row']} (stay {bad['stay_id']}, time {bad['time']}) has "
            f"after_cutoff=False but is not before the stay's cutoff {cutoff.loc[bad.name]}"
        )
    ev = ev.assign(kind=kind, hours_before_cutoff=hours)
    # Sorted by stay then time (the contract); a stable sort makes that true even if it was not.
    ev = ev.sort_values(["stay_id", "time", "event_row"], kind="stable")
    ev = ev.groupby("stay_id", sort=False).tail(max_events)
    return ev[["stay_id", "event_row", "kind", "text", "hours_before_cutoff"]].reset_index(drop=True)


# ---------------------------------------------------------------- fitted encoder


@dataclass
class FeatureEncoder:
    """Everything fitted on the train split, and the feature layout it implies."""

    max_events: int
    embedding_dim: int
    time_mean: float
    time_std: float
    age_mean: float
    age_std: float
    categories: dict[str, list[str]]  # column -> train categories, in one-hot order
    step_mean: list[float]  # train-mean step vector [F]: the attribution baseline
    static_mean: list[float]  # train-mean static vector [S]

    @property
    def step_dim(self) -> int:
        return len(EVENT_TYPES) + self.embedding_dim + 1

    @property
    def step_groups(self) -> dict[str, slice]:
        """Step feature columns of each group: event kind, text embedding, time."""
        k, d = len(EVENT_TYPES), self.embedding_dim
        return {"kind": slice(0, k), "text": slice(k, k + d), "time": slice(k + d, k + d + 1)}

    @property
    def static_names(self) -> list[str]:
        return [f"{col}={cat}" for col in STATIC_CATEGORICAL for cat in self.categories[col]] + list(STATIC_NUMERIC)

    @property
    def static_groups(self) -> dict[str, list[int]]:
        """Static columns of each source feature (a categorical's one-hot block, or age)."""
        groups, start = {}, 0
        for col in STATIC_CATEGORICAL:
            groups[col] = list(range(start, start + len(self.categories[col])))
            start += len(self.categories[col])
        for col in STATIC_NUMERIC:
            groups[col] = [start]
            start += 1
        return groups

    @property
    def static_dim(self) -> int:
        return len(self.static_names)

    def scale_time(self, hours_before_cutoff: np.ndarray) -> np.ndarray:
        return ((hours_before_cutoff - self.time_mean) / self.time_std).astype(np.float32)

    def encode_static(self, cohort: pd.DataFrame) -> np.ndarray:
        """float32 [N, S]; a category unseen in train encodes as all zeros."""
        _require_columns(cohort, ("stay_id", *STATIC_CATEGORICAL, *STATIC_NUMERIC), "cohort.parquet")
        blocks = []
        for col in STATIC_CATEGORICAL:
            values = cohort[col].astype("string").fillna(MISSING).to_numpy()
            cats = np.array(self.categories[col], dtype=object)
            blocks.append((values[:, None] == cats[None, :]).astype(np.float32))
        age = cohort["age"].to_numpy(dtype=float, na_value=np.nan)
        if np.isnan(age).any():
            stay = cohort["stay_id"].to_numpy()[np.isnan(age)][0]
            raise ValueError(f"cohort.parquet column age is null, e.g. stay_id {stay}")
        blocks.append(((age - self.age_mean) / self.age_std).astype(np.float32)[:, None])
        return np.concatenate(blocks, axis=1)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "FeatureEncoder":
        return cls(**d)

    def save(self, path: str | Path) -> None:
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(self.to_dict()) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "FeatureEncoder":
        return cls.from_dict(json.loads(Path(path).read_text()))


def _check_cohort(cohort: pd.DataFrame) -> None:
    _require_columns(cohort, COHORT_INPUT_COLUMNS, "cohort.parquet")
    bad = ~cohort["split"].isin(SPLITS)
    if bad.any():
        row = cohort[bad].iloc[0]
        raise ValueError(
            f"cohort.parquet column split has {row['split']!r} (stay_id {row['stay_id']}); expected {SPLITS}")


def fit_encoder(
    events: pd.DataFrame, cohort: pd.DataFrame, embedding_texts: pd.DataFrame, vectors: np.ndarray, max_events: int
) -> FeatureEncoder:
    """Fit scalers, categories and the baseline step on the TRAIN split only."""
    _check_cohort(cohort)
    train = cohort[cohort["split"] == "train"]
    if train.empty:
        raise ValueError("cohort.parquet has no train stays to fit the feature encoder on")
    sel = select_events(events, train, max_events)
    hours = sel["hours_before_cutoff"].to_numpy()
    time_mean, time_std = _scale(hours)
    age_mean, age_std = _scale(train["age"].to_numpy(dtype=float, na_value=np.nan))
    categories = {
        col: sorted(train[col].astype("string").fillna(MISSING).unique().tolist()) for col in STATIC_CATEGORICAL
    }
    kind_share = np.bincount(sel["kind"].to_numpy(), minlength=len(EVENT_TYPES)) / max(len(sel), 1)
    rows = text_rows(sel["text"], embedding_texts, sel["event_row"].to_numpy())
    text_mean = vectors[rows].mean(axis=0) if len(rows) else np.zeros(vectors.shape[1])
    encoder = FeatureEncoder(
        max_events=max_events, embedding_dim=int(vectors.shape[1]), time_mean=time_mean, time_std=time_std,
        age_mean=age_mean, age_std=age_std, categories=categories, step_mean=[], static_mean=[],
    )
    time_mean_scaled = float(encoder.scale_time(hours).mean()) if len(hours) else 0.0  # 0 up to rounding
    encoder.step_mean = [*map(float, kind_share), *map(float, text_mean), time_mean_scaled]
    encoder.static_mean = encoder.encode_static(train).mean(axis=0).astype(float).tolist()
    log.info("fitted features on %d train stays, %d events: step dim %d, static dim %d",
             len(train), len(sel), encoder.step_dim, encoder.static_dim)
    return encoder


# ------------------------------------------------------------ dataset and collate


class ClinicalLFDataset(Dataset):
    """One item per stay. Steps are assembled on access from compact per-event arrays and
    one shared embedding matrix, so a split never holds [N, T, D] floats in memory."""

    def __init__(self, stays: list[dict[str, np.ndarray]], vectors: np.ndarray):
        self.stays = stays
        self.vectors = vectors

    def __len__(self) -> int:
        return len(self.stays)

    @property
    def lengths(self) -> np.ndarray:
        """Events per stay, for length-bucketed batching."""
        return np.array([len(s["kind"]) for s in self.stays])

    @property
    def labels(self) -> np.ndarray:
        return np.array([s["label"] for s in self.stays])

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        s = self.stays[i]
        kind = np.eye(len(EVENT_TYPES), dtype=np.float32)[s["kind"]]  # [T, 5]
        text = self.vectors[s["text_row"]].astype(np.float32)  # [T, D]
        steps = np.concatenate([kind, text, s["time"][:, None]], axis=1)  # [T, F]
        return {
            "steps": torch.from_numpy(steps),
            "static": torch.from_numpy(s["static"]),
            "kind": torch.from_numpy(s["kind"]),
            "event_row": torch.from_numpy(s["event_row"]),
            "hours_before_cutoff": torch.from_numpy(s["hours_before_cutoff"]),
            "label": torch.tensor(s["label"], dtype=torch.float32),
            "stay_id": torch.tensor(s["stay_id"], dtype=torch.int64),
        }


def build_dataset(
    events: pd.DataFrame, cohort: pd.DataFrame, embedding_texts: pd.DataFrame, vectors: np.ndarray,
    encoder: FeatureEncoder, split: str, label: str = "mortality",
) -> ClinicalLFDataset:
    """The stays of one split, encoded with a fitted `encoder`."""
    _check_cohort(cohort)
    _require_columns(cohort, (label,), "cohort.parquet")
    if vectors.shape[1] != encoder.embedding_dim:
        raise ValueError(
            f"text embeddings have dim {vectors.shape[1]}; the encoder was fitted on {encoder.embedding_dim}")
    stays = cohort[cohort["split"] == split].reset_index(drop=True)
    if stays[label].isna().any():
        example = stays.loc[stays[label].isna(), "stay_id"].iloc[0]
        raise ValueError(f"cohort.parquet column {label} is null, e.g. stay_id {example}")
    sel = select_events(events, stays, encoder.max_events)
    # copies: pandas hands out read-only views, which torch.from_numpy would share
    event_row = sel["event_row"].to_numpy(np.int64, copy=True)
    text_row = text_rows(sel["text"], embedding_texts, event_row)
    kind = sel["kind"].to_numpy(np.int64, copy=True)
    hours = sel["hours_before_cutoff"].to_numpy(np.float32, copy=True)
    time = encoder.scale_time(hours)
    static = encoder.encode_static(stays)
    # select_events keeps stays contiguous: slice each stay's events out of the flat arrays.
    stay_ids = sel["stay_id"].to_numpy()
    bounds = dict(zip(*np.unique(stay_ids, return_index=True)))
    counts = dict(zip(*np.unique(stay_ids, return_counts=True)))
    items = []
    for i, stay_id in enumerate(stays["stay_id"].to_numpy()):
        start = bounds.get(stay_id, 0)
        part = slice(start, start + counts.get(stay_id, 0))
        items.append({
            "stay_id": int(stay_id), "label": float(stays.loc[i, label]), "static": static[i],
            "kind": kind[part], "text_row": text_row[part], "time": time[part],
            "hours_before_cutoff": hours[part], "event_row": event_row[part],
        })
    n_empty = sum(len(s["kind"]) == 0 for s in items)
    if n_empty:
        log.warning("%s: %d of %d stays have no pre-cutoff event (predicted from static features alone)",
                    split, n_empty, len(items))
    return ClinicalLFDataset(items, vectors)


def collate(items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Right-pad to the longest stay (at least one step, so an all-empty batch has a shape).

    steps [B, T, F], static [B, S], padding_mask [B, T] (True = padding), kind and
    event_row [B, T] (-1 at padding), hours_before_cutoff [B, T] (0 at padding), label
    [B], stay_id [B].
    """
    B = len(items)
    T = max(1, max(len(it["kind"]) for it in items))
    F = items[0]["steps"].shape[1]
    out = {
        "steps": torch.zeros(B, T, F),
        "padding_mask": torch.ones(B, T, dtype=torch.bool),
        "kind": torch.full((B, T), -1, dtype=torch.int64),
        "event_row": torch.full((B, T), -1, dtype=torch.int64),
        "hours_before_cutoff": torch.zeros(B, T),
    }
    for b, it in enumerate(items):
        n = len(it["kind"])
        out["steps"][b, :n] = it["steps"]
        out["padding_mask"][b, :n] = False
        out["kind"][b, :n] = it["kind"]
        out["event_row"][b, :n] = it["event_row"]
        out["hours_before_cutoff"][b, :n] = it["hours_before_cutoff"]
    out["static"] = torch.stack([it["static"] for it in items])  # [B, S]
    out["label"] = torch.stack([it["label"] for it in items])  # [B]
    out["stay_id"] = torch.stack([it["stay_id"] for it in items])  # [B]
    return out
