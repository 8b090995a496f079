"""Patient-level code sequences and the code vocabulary (seed 002), fitted on train only.

A patient's sequence is every code of every admission, in time order:
- the event codes of each ICU stay (events.parquet), each code once per stay, at its
  first time: a creatinine drawn 30 times in a stay is one co-occurrence fact, not 30
  (Med2Vec's visits are sets of codes too). Events after the mortality cutoff are
  included: this is a patient-level code model, not a mortality model;
- the discharge diagnoses of each admission (diagnoses.parquet), at the admission's
  `dischtime`, when they are coded.

Discharge diagnoses may feed this patient-level code model; they must never feed a
model that predicts an in-hospital outcome from the observation window. Vectors fitted
here may initialise such a model's token table (`transfer`): they are fitted on train
patients only, so that is pretraining on the training split, and the downstream model's
inputs still never contain a diagnosis.

Vocabulary (the seed's recipe, with its bugs fixed): counts over train occurrences only;
codes seen fewer than `min_frequency` times map to `<unk>`, which exists exactly once
(index 0; the seed added it twice, once in the vocabulary and once more in the model);
every code keeps its system prefix (`LAB//50912`, `ICD10//I10`), so systems reusing a
number never collide and no system is guessed from a first letter; optional grouping of
ICD codes to their 3-character category (with or without dots, `ehrseq.icd`); the index
is ordered by count, then code (never a `set()` order).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ehrseq.icd import group_icd_series

log = logging.getLogger(__name__)

UNK = "<unk>"
UNK_INDEX = 0
SECONDS_PER_DAY = 86400.0


def check_prefixed(codes: pd.Series, source: str, column: str = "code") -> None:
    """Every code must read SYSTEM//CODE; otherwise name the file, column and an example."""
    text = codes.astype("string")
    bad = text.isna() | ~text.str.contains("//", regex=False).fillna(False) | text.str.startswith("//").fillna(False)
    if bad.any():
        raise ValueError(f"{source}: column {column!r} must hold codes prefixed by their system (SYSTEM//CODE); "
                         f"{int(bad.sum())} rows do not, e.g. {codes[bad].iloc[0]!r}")


def subjects_of(cohort: pd.DataFrame, splits: tuple[str, ...]) -> pd.Index:
    """Subjects whose (patient-level) split is in `splits`; a subject in two splits is an error."""
    pairs = cohort[["subject_id", "split"]].drop_duplicates()
    twice = pairs["subject_id"].duplicated()
    if twice.any():
        raise ValueError(f"cohort.parquet: column 'split' puts subject {pairs['subject_id'][twice].iloc[0]} "
                         "in several splits (splits must be by patient)")
    return pd.Index(pairs.loc[pairs["split"].isin(splits), "subject_id"])


def code_table(
    events: pd.DataFrame, diagnoses: pd.DataFrame, cohort: pd.DataFrame, splits: tuple[str, ...],
    icd_grouping: bool = False,
) -> tuple[pd.DataFrame, dict]:
    """One row per code occurrence of the patients of `splits`: subject_id, hadm_id, time,
    code, source (`event` | `diagnosis`), sorted by subject and time. Returns the table and
    what was read and collapsed."""
    check_prefixed(events["code"], "events.parquet")
    check_prefixed(diagnoses["code"], "diagnoses.parquet")
    subjects = subjects_of(cohort, splits)
    ev = events.loc[events["subject_id"].isin(subjects), ["subject_id", "hadm_id", "stay_id", "time", "code"]]
    dx = diagnoses.loc[diagnoses["subject_id"].isin(subjects), ["subject_id", "hadm_id", "dischtime", "code"]]
    dx = dx.rename(columns={"dischtime": "time"})
    no_time = dx["time"].isna()
    dx = dx[~no_time]
    if icd_grouping:
        ev = ev.assign(code=group_icd_series(ev["code"]))
        dx = dx.assign(code=group_icd_series(dx["code"]))
    # first occurrence of a code in its stay / admission
    ev_first = ev.sort_values(["stay_id", "time", "code"], kind="stable").drop_duplicates(["stay_id", "code"])
    dx_first = dx.drop_duplicates(["hadm_id", "code"])
    table = pd.concat([
        ev_first.drop(columns="stay_id").assign(source="event"), dx_first.assign(source="diagnosis"),
    ], ignore_index=True)
    # Codes at the same time (a lab panel, an admission's diagnoses) are ordered by a hash
    # of (subject, code): deterministic, and uninformative. Ordering them by code would put
    # ICD401x beside ICD402x, and a position-window model (gensim) would learn the
    # alphabet as "co-occurrence" (it raised gensim's ICD-chapter precision@10 on the default data
    # from 0.107, chance level 0.104, to 0.368).
    table["tiebreak"] = pd.util.hash_pandas_object(table[["subject_id", "code"]], index=False).to_numpy()
    table = table.sort_values(["subject_id", "time", "tiebreak"], kind="stable").drop(columns="tiebreak")
    table = table.reset_index(drop=True)
    stats = {
        "splits": list(splits), "patients": int(table["subject_id"].nunique()),
        "event_rows": len(ev), "event_repeats_within_stay": len(ev) - len(ev_first),
        "diagnosis_rows": len(dx) + int(no_time.sum()),
        "diagnosis_repeats_within_admission": len(dx) - len(dx_first),
        "dropped_diagnoses_without_dischtime": int(no_time.sum()),
        "occurrences": len(table),
    }
    return table, stats


@dataclass
class CodeVocab:
    codes: list[str]  # index -> code; codes[0] is <unk>
    counts: list[int]  # train occurrences (<unk>: those of every code below min_frequency)
    _index: dict[str, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not self.codes or self.codes[UNK_INDEX] != UNK or self.codes.count(UNK) != 1:
            raise ValueError(f"a code vocabulary holds {UNK!r} once, at index {UNK_INDEX}")
        self._index = {c: i for i, c in enumerate(self.codes)}

    def __len__(self) -> int:
        return len(self.codes)

    def ids(self, codes: pd.Series) -> np.ndarray:
        """Codes -> int64 indices; unknown codes -> <unk>."""
        return codes.map(self._index).fillna(UNK_INDEX).to_numpy(dtype=np.int64)

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame({"index": np.arange(len(self.codes)), "code": self.codes, "count": self.counts})

    @classmethod
    def from_frame(cls, frame: pd.DataFrame) -> CodeVocab:
        frame = frame.sort_values("index")
        return cls(frame["code"].tolist(), frame["count"].astype(int).tolist())


def fit_code_vocab(train_codes: pd.Series, min_frequency: int) -> tuple[CodeVocab, dict]:
    """Vocabulary of the train occurrences: codes with >= min_frequency, by count then code."""
    counts = train_codes.value_counts()
    kept = sorted(((c, int(n)) for c, n in counts.items() if n >= min_frequency), key=lambda cn: (-cn[1], cn[0]))
    rare = counts[counts < min_frequency]
    vocab = CodeVocab([UNK] + [c for c, _ in kept], [int(rare.sum())] + [n for _, n in kept])
    return vocab, {
        "distinct_train_codes": len(counts), "min_frequency": min_frequency, "size": len(vocab),
        "codes_below_min_frequency": len(rare), "occurrences_mapped_to_unk": int(rare.sum()),
    }


@dataclass
class SequenceArrays:
    """A code table as flat arrays, patients contiguous and time-sorted within each."""
    tokens: np.ndarray  # [N] int64 vocabulary indices
    days: np.ndarray  # [N] float64 days since the patient's first code
    patient: np.ndarray  # [N] int64 patient number 0..P-1


def sequence_arrays(table: pd.DataFrame, vocab: CodeVocab) -> SequenceArrays:
    first = table.groupby("subject_id", sort=False)["time"].transform("min")
    days = (table["time"] - first).dt.total_seconds().to_numpy(dtype=np.float64) / SECONDS_PER_DAY
    patient = pd.factorize(table["subject_id"], sort=False)[0].astype(np.int64)
    return SequenceArrays(vocab.ids(table["code"]), days, patient)


def patient_sentences(table: pd.DataFrame, vocab: CodeVocab) -> list[list[str]]:
    """Per patient, its codes as vocabulary strings (rare codes as `<unk>`), in time order."""
    known = np.asarray(vocab.codes, dtype=object)[vocab.ids(table["code"])]
    return [list(words) for words in pd.Series(known).groupby(table["subject_id"].to_numpy(), sort=False).agg(list)]
