"""Vocabulary: event codes (+ value bins), demographics, ICD codes and special tokens.

Fitted on the train split only: which codes exist, their counts, the `min_frequency`
cut and the per-code quantile bin edges all come from train stays, so nothing about
val/test leaks into the model's input space. A code first seen in test maps to `<unk>`.
Codes keep their system prefix (`LAB//50912`, `NDC//...`, `ICD9//4019`), so two systems
that reuse the same number never collide.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ehrseq.icd import group_icd_series
from ehrseq.schema import SPECIAL_TOKENS, UNK_ID

# Gaps between consecutive events at least this long get a time-gap token.
GAP_BOUNDS_HOURS = (1.0, 6.0, 24.0)
GAP_TOKENS = ("GAP//1-6h", "GAP//6-24h", "GAP//24h+")


def age_token(age: pd.Series) -> pd.Series:
    decade = (age.clip(lower=0) // 10 * 10).astype(int)
    return "AGE//" + decade.astype(str) + "-" + (decade + 9).astype(str)


def gender_token(gender: pd.Series) -> pd.Series:
    return "GENDER//" + gender.fillna("UNKNOWN").astype(str).str.upper()


def race_token(race: pd.Series) -> pd.Series:
    return "RACE//" + race.fillna("UNKNOWN").astype(str).str.upper().str.replace(" ", "_")


def group_icd(codes: pd.Series) -> pd.Series:
    """`ICD9//4019` -> `ICD9//401`, `ICD10//I10.9` -> `ICD10//I10`, `ICD9//E8889` -> `ICD9//E888`
    (the category; see `ehrseq.icd`); codes of other systems are left as they are."""
    return group_icd_series(codes)


@dataclass
class Vocab:
    tokens: list[str]
    counts: list[int]
    bin_edges: dict[str, np.ndarray] = field(default_factory=dict)  # code -> inner quantile edges
    binned_types: tuple[str, ...] = ("lab",)
    icd_grouping: bool = False
    _index: dict[str, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._index = {t: i for i, t in enumerate(self.tokens)}

    def __len__(self) -> int:
        return len(self.tokens)

    def ids(self, tokens: pd.Series) -> np.ndarray:
        """Token strings -> int32 ids, `<unk>` for anything not in the vocabulary."""
        return tokens.map(self._index).fillna(UNK_ID).to_numpy(dtype=np.int32)

    def event_tokens(self, events: pd.DataFrame) -> pd.Series:
        """One token string per event row: its code, plus a value bin for binned codes."""
        tokens = events["code"].astype(str).copy()
        binnable = events["event_type"].isin(self.binned_types) & events["value"].notna()
        binnable &= events["code"].isin(self.bin_edges.keys())
        binned = events.loc[binnable, ["code", "value"]]
        values, bins = binned["value"].to_numpy(), np.empty(len(binned), dtype=np.int64)
        for code, at in binned.groupby("code").indices.items():  # at: positions within `binned`
            bins[at] = np.searchsorted(self.bin_edges[code], values[at], side="right")
        # one assignment: a per-code one rewrote the whole column once per code
        tokens.loc[binnable] = binned["code"].astype(str) + "//Q" + pd.Series(bins + 1, index=binned.index).astype(str)
        return tokens

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame({"token": np.arange(len(self.tokens)), "str": self.tokens, "count": self.counts})

    def edges_frame(self) -> pd.DataFrame:
        return pd.DataFrame(
            [(code, i, float(e)) for code, edges in self.bin_edges.items() for i, e in enumerate(edges)],
            columns=["code", "edge_index", "edge"],
        )

    @classmethod
    def from_frames(cls, vocab: pd.DataFrame, edges: pd.DataFrame, binned_types, icd_grouping: bool) -> "Vocab":
        bin_edges = {c: g.sort_values("edge_index")["edge"].to_numpy() for c, g in edges.groupby("code")}
        return cls(vocab["str"].tolist(), vocab["count"].tolist(), bin_edges, tuple(binned_types), icd_grouping)


def fit_bin_edges(events: pd.DataFrame, binned_types, n_bins: int, min_values: int) -> dict[str, np.ndarray]:
    """Per-code inner quantile edges from (train) values; duplicate edges collapse, so a
    code with few distinct values gets fewer bins instead of empty ones."""
    if n_bins < 2:
        return {}
    rows = events[events["event_type"].isin(binned_types) & events["value"].notna()]
    qs = np.linspace(0, 1, n_bins + 1)[1:-1]
    edges = {}
    for code, values in rows.groupby("code")["value"]:
        if len(values) >= min_values:
            edges[code] = np.unique(np.quantile(values.to_numpy(), qs))
    return edges


def fit_vocab(
    train_events: pd.DataFrame,
    train_stays: pd.DataFrame,
    train_diagnoses: pd.DataFrame,
    min_frequency: int,
    value_bins: int,
    binned_types: tuple[str, ...] = ("lab",),
    min_values_for_bins: int = 20,
    icd_grouping: bool = False,
    time_gap_tokens: bool = False,
) -> tuple[Vocab, dict]:
    """Fit on train rows only; return the vocabulary and what the threshold dropped."""
    edges = fit_bin_edges(train_events, binned_types, value_bins, min_values_for_bins)
    draft = Vocab([], [], edges, tuple(binned_types), icd_grouping)
    icd = group_icd(train_diagnoses["code"]) if icd_grouping else train_diagnoses["code"]
    occurrences = pd.concat([
        draft.event_tokens(train_events),
        icd,
        age_token(train_stays["age"]), gender_token(train_stays["gender"]), race_token(train_stays["race"]),
    ], ignore_index=True)
    counts = occurrences.value_counts()
    # deterministic order: by count, then name
    kept = sorted(((t, int(n)) for t, n in counts.items() if n >= min_frequency), key=lambda tn: (-tn[1], tn[0]))
    extra = list(GAP_TOKENS) if time_gap_tokens else []
    tokens = list(SPECIAL_TOKENS) + extra + [t for t, _ in kept]
    token_counts = [0] * (len(SPECIAL_TOKENS) + len(extra)) + [n for _, n in kept]
    vocab = Vocab(tokens, token_counts, edges, tuple(binned_types), icd_grouping)
    dropped = counts[counts < min_frequency]
    return vocab, {
        "distinct_train_tokens": int(len(counts)),
        "dropped_below_min_frequency": int(len(dropped)),
        "dropped_occurrences": int(dropped.sum()),
        "binned_codes": len(edges),
    }


def coverage(vocab: Vocab, tokens: pd.Series) -> dict:
    """Share of token occurrences the vocabulary knows (1 - <unk> rate)."""
    if len(tokens) == 0:
        return {"occurrences": 0, "unk_rate": None, "coverage": None}
    unk = float((vocab.ids(tokens) == UNK_ID).mean())
    return {"occurrences": int(len(tokens)), "unk_rate": unk, "coverage": 1.0 - unk}
