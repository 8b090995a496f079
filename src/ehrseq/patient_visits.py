"""Patient-level visit sequences for prompt_bart: visits of typed codes, demographics,
vocabulary, the corruptions the encoder sees, and the evaluation views.

A patient is a list of visits (one per hospital admission, in admission order); a visit
is a list of blocks `(type_index, code ids)` in the fixed `CODE_TYPES` order, empty types
left out, codes sorted by id. As tokens:

    [BOS, <v>, <diag>, d1, d2, <med>, m1, </v>, <v>, <diag>, d3, </v>, END]

END is the model's `eos_token_id`, so generation stops on it. Code ids are ordered by
type, then train frequency; inside a block codes are sorted by id, so a visit has one
canonical spelling (the sampler enforces increasing ids and cannot repeat a code).

Code types (whichever a source has): diagnoses (discharge ICD codes of the admission,
data/interim/diagnoses.parquet), medications (prescription events), procedures and
abnormal labs (lab events flagged `abnormal`) of the admission's ICU stays in
events.parquet. Only stays in cohort.parquet have events, so an admission outside the
cohort contributes diagnoses only.

Traps this module exists to avoid (the seed had each of them):
- the vocabulary is fitted on the train split only (`PatientVocab.fit`); a val/test code
  unknown to it is dropped and counted, never mapped to a shared id;
- the encoder input is a corrupted copy (`corrupt`): fed the labels unchanged, a BART
  learns to copy and its perplexity means nothing;
- the visit-closing token is `</v>`, END is `eos_token_id`.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import Dataset

# ------------------------------------------------------------------ token layout

CODE_TYPES = ("diagnosis", "medication", "procedure", "lab")  # block order inside a visit
TYPE_TOKENS = ("<diag>", "<med>", "<proc>", "<lab>")
SPECIAL_TOKENS = ("<pad>", "<bos>", "<end>", "<mask>", "<v>", "</v>")
PAD_ID, BOS_ID, END_ID, MASK_ID, VISIT_ID, VISIT_END_ID = range(len(SPECIAL_TOKENS))
FIRST_TYPE_ID = len(SPECIAL_TOKENS)  # type tokens follow the specials; codes follow them
FIRST_CODE_ID = FIRST_TYPE_ID + len(CODE_TYPES)

# events.parquet rows that become codes: event_type -> code type (labs only when abnormal)
EVENT_CODE_TYPES = {"prescription": "medication", "procedure": "procedure", "lab": "lab"}

# ------------------------------------------------------------------ demographics

AGE_CAP = 90.0  # ages over 89 are capped (MIMIC-IV caps them, MIMIC-III shifts them to ~300)
GENDERS = ("F", "M", "other")
RACE_GROUPS = ("white", "black", "hispanic", "asian", "other", "unknown")
# MIMIC-III `ethnicity` and MIMIC-IV `race` values -> 6 groups. A value not in this table
# maps to `other` and is counted (`unmapped_race`), never a crash.
RACE_TABLE = {
    **dict.fromkeys([
        "WHITE", "WHITE - RUSSIAN", "WHITE - OTHER EUROPEAN", "WHITE - BRAZILIAN", "WHITE - EASTERN EUROPEAN",
        "PORTUGUESE",
    ], "white"),
    **dict.fromkeys([
        "BLACK/AFRICAN AMERICAN", "BLACK/CAPE VERDEAN", "BLACK/HAITIAN", "BLACK/AFRICAN", "BLACK/CARIBBEAN ISLAND",
    ], "black"),
    **dict.fromkeys([
        "HISPANIC OR LATINO", "HISPANIC/LATINO - PUERTO RICAN", "HISPANIC/LATINO - DOMINICAN",
        "HISPANIC/LATINO - GUATEMALAN", "HISPANIC/LATINO - CUBAN", "HISPANIC/LATINO - SALVADORAN",
        "HISPANIC/LATINO - CENTRAL AMERICAN (OTHER)", "HISPANIC/LATINO - CENTRAL AMERICAN",
        "HISPANIC/LATINO - MEXICAN", "HISPANIC/LATINO - COLOMBIAN", "HISPANIC/LATINO - COLUMBIAN",
        "HISPANIC/LATINO - HONDURAN", "SOUTH AMERICAN",
    ], "hispanic"),
    **dict.fromkeys([
        "ASIAN", "ASIAN - CHINESE", "ASIAN - ASIAN INDIAN", "ASIAN - VIETNAMESE", "ASIAN - FILIPINO",
        "ASIAN - CAMBODIAN", "ASIAN - OTHER", "ASIAN - KOREAN", "ASIAN - JAPANESE", "ASIAN - THAI",
        "ASIAN - SOUTH EAST ASIAN",
    ], "asian"),
    **dict.fromkeys([
        "OTHER", "MULTI RACE ETHNICITY", "MULTIPLE RACE/ETHNICITY", "MIDDLE EASTERN", "CARIBBEAN ISLAND",
        "AMERICAN INDIAN/ALASKA NATIVE", "AMERICAN INDIAN/ALASKA NATIVE FEDERALLY RECOGNIZED TRIBE",
        "NATIVE HAWAIIAN OR OTHER PACIFIC ISLANDER",
    ], "other"),
    **dict.fromkeys([
        "UNKNOWN", "UNKNOWN/NOT SPECIFIED", "UNABLE TO OBTAIN", "PATIENT DECLINED TO ANSWER",
    ], "unknown"),
}


def race_group(race: pd.Series) -> tuple[pd.Series, int]:
    """Raw race/ethnicity -> one of RACE_GROUPS; missing -> `unknown`; unmapped -> `other` (counted)."""
    key = race.astype("string").str.strip().str.upper()
    group = key.map(RACE_TABLE)
    unmapped = group.isna() & key.notna()
    group = group.where(~unmapped, "other").fillna("unknown")
    return group.astype(str), int(unmapped.sum())


def gender_group(gender: pd.Series) -> tuple[pd.Series, int]:
    key = gender.astype("string").str.strip().str.upper().str[:1]
    known = key.isin(["F", "M"])
    return key.where(known, "other").fillna("other").astype(str), int((~known).sum())


def cap_age(age: pd.Series) -> pd.Series:
    return age.astype(float).clip(upper=AGE_CAP)


# ------------------------------------------------------------------ building patients


@dataclass
class Patients:
    """One row per patient (`demographics`) and one per (patient, visit, code) (`codes`).

    demographics: subject_id, split, age (at first admission, capped), gender, race (groups)
    codes:        subject_id, visit (0-based admission index), code_type, code (string)
    The synthetic patients of the generate stage have the same two frames.
    """
    demographics: pd.DataFrame
    codes: pd.DataFrame

    def split(self, name: str) -> Patients:
        demo = self.demographics[self.demographics["split"] == name]
        return Patients(demo.reset_index(drop=True), self.codes[self.codes["subject_id"].isin(demo["subject_id"])])


def build_patients(cohort: pd.DataFrame, diagnoses: pd.DataFrame, events: pd.DataFrame) -> tuple[Patients, dict]:
    """Visits and demographics of every cohort patient; drops counted by reason.

    Demographics come from cohort.parquet (the first stay's gender and race; age of the
    earliest admission, from diagnoses or cohort). A patient without a visit code or
    without an age is dropped and counted.
    """
    _require(cohort, ("subject_id", "hadm_id", "stay_id", "intime", "age", "gender", "race", "split"), "cohort.parquet")
    _require(diagnoses, ("subject_id", "hadm_id", "admittime", "age", "code"), "diagnoses.parquet")
    _require(events, ("hadm_id", "stay_id", "event_type", "code", "flag"), "events.parquet")
    stats: dict[str, Any] = {"cohort_patients": int(cohort["subject_id"].nunique())}

    # admissions: time and age from diagnoses, else from the first cohort stay
    adm = pd.concat([
        diagnoses[["subject_id", "hadm_id", "admittime", "age"]].rename(columns={"admittime": "time"}),
        cohort[["subject_id", "hadm_id", "intime", "age"]].rename(columns={"intime": "time"}),
    ]).sort_values("time", kind="stable").drop_duplicates("hadm_id")
    adm = adm[adm["subject_id"].isin(cohort["subject_id"])]
    stats["diagnosis_rows_not_in_cohort"] = int((~diagnoses["subject_id"].isin(cohort["subject_id"])).sum())

    stay_events = events[events["stay_id"].isin(cohort["stay_id"]) & events["event_type"].isin(EVENT_CODE_TYPES)]
    stay_events = stay_events[(stay_events["event_type"] != "lab") | (stay_events["flag"] == "abnormal")]
    codes = pd.concat([
        diagnoses[["hadm_id", "code"]].assign(code_type="diagnosis"),
        stay_events[["hadm_id", "code"]].assign(code_type=stay_events["event_type"].map(EVENT_CODE_TYPES)),
    ]).drop_duplicates()
    # visit index among the patient's admissions that hold a code, in time order
    visits = adm[adm["hadm_id"].isin(codes["hadm_id"])].assign(visit=lambda a: a.groupby("subject_id").cumcount())
    codes = codes.merge(visits[["subject_id", "hadm_id", "visit"]], on="hadm_id", how="inner")
    codes["visit"] = codes["visit"].astype(np.int32)
    codes = codes.sort_values(["subject_id", "visit", "code_type", "code"], kind="stable")

    first = cohort.sort_values("intime", kind="stable").drop_duplicates("subject_id")
    gender, unknown_gender = gender_group(first["gender"])
    race, unmapped_race = race_group(first["race"])
    first_age = adm.groupby("subject_id")["age"].first()  # adm is in time order
    demo = pd.DataFrame({
        "subject_id": first["subject_id"].to_numpy(), "split": first["split"].astype(str).to_numpy(),
        "age": cap_age(first["subject_id"].map(first_age)).to_numpy(), "gender": gender.to_numpy(),
        "race": race.to_numpy(),
    })
    no_age = demo["age"].isna()
    no_visits = ~demo["subject_id"].isin(codes["subject_id"])
    stats.update({
        "dropped_no_demographics": int(no_age.sum()), "dropped_no_visits": int((no_visits & ~no_age).sum()),
        "age_capped_at_90": int((demo["age"] >= AGE_CAP).sum()),
        "gender_other": unknown_gender, "race_unmapped_to_other": unmapped_race,
    })
    demo = demo[~no_age & ~no_visits].sort_values("subject_id").reset_index(drop=True)
    codes = codes[codes["subject_id"].isin(demo["subject_id"])]
    codes = codes[["subject_id", "visit", "code_type", "code"]].reset_index(drop=True)
    stats.update({
        "patients": len(demo), "visits": int(codes.groupby("subject_id")["visit"].nunique().sum()),
        "codes_per_type": {t: int((codes["code_type"] == t).sum()) for t in CODE_TYPES},
        "patients_per_split": demo["split"].value_counts().to_dict(),
    })
    return Patients(demo, codes), stats


def _require(frame: pd.DataFrame, columns: Sequence[str], name: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{name}: missing column(s) {missing}; has {list(frame.columns)}")


# ------------------------------------------------------------------ vocabulary

Visit = list[tuple[int, np.ndarray]]  # [(type index, sorted code ids)]


@dataclass
class PatientVocab:
    """Codes of the train split, with their type; ids: specials, type tokens, then codes
    by type (CODE_TYPES order) and descending train count.

    `visit_counts[i]` is the number of train visits holding code i, `blocks[t]` the number
    of train visits with a type-t block: the independent-codes baseline reads both.
    """
    codes: list[str]
    code_types: list[int]  # type index of each code
    visit_counts: list[int]
    blocks: list[int]
    n_visits: int
    _index: dict[tuple[int, str], int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._index = {(t, c): FIRST_CODE_ID + i for i, (t, c) in enumerate(zip(self.code_types, self.codes))}

    def __len__(self) -> int:
        return FIRST_CODE_ID + len(self.codes)

    @classmethod
    def fit(cls, train: Patients) -> PatientVocab:
        codes = train.codes.assign(type_index=train.codes["code_type"].map(CODE_TYPES.index))
        counts = codes.groupby(["type_index", "code"]).size().rename("n").reset_index()
        counts = counts.sort_values(["type_index", "n", "code"], ascending=[True, False, True], kind="stable")
        visits = codes.drop_duplicates(["subject_id", "visit"])
        blocks = codes.drop_duplicates(["subject_id", "visit", "type_index"])["type_index"].value_counts()
        return cls(counts["code"].tolist(), counts["type_index"].astype(int).tolist(), counts["n"].astype(int).tolist(),
                   [int(blocks.get(t, 0)) for t in range(len(CODE_TYPES))], len(visits))

    def to_dict(self) -> dict[str, Any]:
        return {"codes": self.codes, "code_types": self.code_types, "visit_counts": self.visit_counts,
                "blocks": self.blocks, "n_visits": self.n_visits}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PatientVocab:
        return cls(list(d["codes"]), [int(t) for t in d["code_types"]], [int(n) for n in d["visit_counts"]],
                   [int(b) for b in d["blocks"]], int(d["n_visits"]))

    def token_types(self) -> np.ndarray:
        """Type index of every token id: codes their type, everything else -1. [V]"""
        out = np.full(len(self), -1, dtype=np.int64)
        out[FIRST_CODE_ID:] = self.code_types
        return out

    def token_names(self) -> list[str]:
        return [*SPECIAL_TOKENS, *TYPE_TOKENS, *self.codes]

    def encode(self, patients: Patients) -> tuple[dict[int, list[Visit]], dict]:
        """subject_id -> visits of ids; codes unknown to the vocabulary are dropped and counted."""
        codes = patients.codes
        type_index = codes["code_type"].map(CODE_TYPES.index).to_numpy()
        ids = np.array([self._index.get(k, -1) for k in zip(type_index, codes["code"])], dtype=np.int64)
        known = ids >= 0
        frame = pd.DataFrame({"subject_id": codes["subject_id"].to_numpy()[known],
                              "visit": codes["visit"].to_numpy()[known], "t": type_index[known], "id": ids[known]})
        frame = frame.sort_values(["subject_id", "visit", "t", "id"], kind="stable")
        keys = frame[["subject_id", "visit", "t"]].to_numpy()
        ids_sorted = frame["id"].to_numpy()
        starts = np.flatnonzero(np.r_[True, (keys[1:] != keys[:-1]).any(axis=1)])  # first row of each block
        ends = np.r_[starts[1:], len(keys)]
        encoded: dict[int, list[Visit]] = {}
        last_visit = None
        for s, e in zip(starts, ends):
            subject, visit, t = (int(x) for x in keys[s])
            if (subject, visit) != last_visit:
                encoded.setdefault(subject, []).append([])
                last_visit = (subject, visit)
            encoded[subject][-1].append((t, ids_sorted[s:e]))
        n_missing = int((~patients.demographics["subject_id"].isin(encoded)).sum())
        return encoded, {"codes_unknown_to_vocab": int((~known).sum()), "code_rows": len(known),
                         "patients_without_known_codes": n_missing}


# ------------------------------------------------------------------ sequences


def visit_tokens(visit: Visit) -> list[int]:
    out = [VISIT_ID]
    for t, ids in visit:
        out.append(FIRST_TYPE_ID + t)
        out.extend(int(i) for i in ids)
    out.append(VISIT_END_ID)
    return out


def sequence(visits: Sequence[Visit]) -> list[int]:
    """[BOS, <v> ... </v>, ..., END]"""
    return [BOS_ID, *(tok for v in visits for tok in visit_tokens(v)), END_ID]


def n_codes(visits: Sequence[Visit]) -> int:
    return sum(len(ids) for v in visits for _, ids in v)


def truncate(visits: list[Visit], max_length: int) -> list[Visit]:
    """The most recent visits whose sequence fits in `max_length` tokens (at least the last one,
    cut to fit)."""
    kept, length = [], 2  # BOS, END
    for v in reversed(visits):
        n = len(visit_tokens(v))
        if length + n > max_length:
            break
        kept.append(v)
        length += n
    if not kept:  # one visit longer than the budget: keep the first codes of each block in turn
        budget, visit = max_length - 4, []
        for t, ids in visits[-1]:
            take = min(len(ids), budget - 1)
            if take < 1:
                break
            visit.append((t, ids[:take]))
            budget -= take + 1
        kept = [visit]
    return kept[::-1]


@dataclass
class Corruption:
    """How the encoder copy is corrupted (rates of `train.prompt_bart.corruption`).

    Per patient, one of four modes:
    - full masking (prob `full_mask_rate`): `[BOS, <mask>, END]`, what the generator
      starts from. Its own rate, the same for every patient: were it the k = 0 case of
      future masking, one-visit patients would get it more often than others and the
      decoder would learn too few visits per patient from a blank encoder.
    - future masking (prob `future_rate`, patients with 2+ visits; others get token
      noise): visits from a random index k >= 1 on are replaced by one <mask>. This is
      the longitudinal task: the decoder rebuilds visit k from visits < k.
    - type masking (prob `type_rate`): one random (visit, code type) block becomes
      `<type> <mask>`; the cross-type task. The other blocks get token noise.
    - token noise only (otherwise), on every block: codes shuffled (prob `shuffle_rate`
      per block, the order inside a visit carries nothing), each code masked (prob
      `mask_rate`), and a span of Poisson(`infill_lambda`) codes replaced by one <mask>
      (prob `infill_rate` per block; a span of 0 inserts a <mask>, as in BART).
    """
    mask_rate: float  # no defaults: params.yaml is their one home
    infill_rate: float
    infill_lambda: float
    shuffle_rate: float
    future_rate: float
    type_rate: float
    full_mask_rate: float

    def __post_init__(self) -> None:
        for name in ("mask_rate", "infill_rate", "shuffle_rate", "future_rate", "type_rate", "full_mask_rate"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"corruption.{name} must be in [0, 1], got {getattr(self, name)}")
        total = self.full_mask_rate + self.future_rate + self.type_rate
        if total > 1:
            raise ValueError(f"corruption.full_mask_rate + future_rate + type_rate must be <= 1, got {total}")

    def _noise(self, ids: np.ndarray, rng: np.random.Generator) -> list[int]:
        ids = rng.permutation(ids) if rng.random() < self.shuffle_rate else ids.copy()
        ids = np.where(rng.random(len(ids)) < self.mask_rate, MASK_ID, ids)
        out = [int(i) for i in ids]
        if rng.random() < self.infill_rate:
            span = min(int(rng.poisson(self.infill_lambda)), len(out))
            start = int(rng.integers(0, len(out) - span + 1))
            out[start:start + span] = [MASK_ID]
        return out

    def __call__(self, visits: Sequence[Visit], rng: np.random.Generator) -> list[int]:
        """Encoder ids for one patient: [BOS, corrupted visits, END]."""
        mode = rng.random()
        if mode < self.full_mask_rate:
            return [BOS_ID, MASK_ID, END_ID]
        mode -= self.full_mask_rate
        if mode < self.future_rate and len(visits) > 1:
            k = int(rng.integers(1, len(visits)))
            return [BOS_ID, *(tok for v in visits[:k] for tok in visit_tokens(v)), MASK_ID, END_ID]
        masked = None
        if self.future_rate <= mode < self.future_rate + self.type_rate:
            blocks = [(vi, bi) for vi, v in enumerate(visits) for bi in range(len(v))]
            masked = blocks[int(rng.integers(0, len(blocks)))]
        out = [BOS_ID]
        for vi, visit in enumerate(visits):
            out.append(VISIT_ID)
            for bi, (t, ids) in enumerate(visit):
                out.append(FIRST_TYPE_ID + t)
                out.extend([MASK_ID] if (vi, bi) == masked else self._noise(ids, rng))
            out.append(VISIT_END_ID)
        out.append(END_ID)
        return out


# ------------------------------------------------------------------ evaluation views


def longitudinal_examples(visits: list[Visit]) -> list[tuple[list[int], list[int], list[int]]]:
    """The lpl view: for each visit k >= 1, (encoder ids, decoder sequence, score types).

    The encoder sees visits < k and one <mask>; the decoder sequence runs up to the end of
    visit k; `score types[j]` is the code type whose perplexity target j (the token at
    decoder position j + 1) counts for: the codes of a type-t block of visit k and the
    token ending the block; -1 elsewhere.
    """
    out = []
    for k in range(1, len(visits)):
        prefix = [BOS_ID, *(tok for v in visits[:k] for tok in visit_tokens(v))]
        target, types = _scored_visit(visits[k], lambda bi: True)
        out.append((prefix + [MASK_ID, END_ID], prefix + target, [-1] * (len(prefix) - 1) + types))
    return out


def cross_type_examples(visits: list[Visit]) -> list[tuple[list[int], list[int], list[int]]]:
    """The mpl view: for every block of every visit, the full sequence with that block as
    `<type> <mask>` in the encoder; the block's codes and its closing token are scored."""
    out = []
    full = sequence(visits)
    for vi, visit in enumerate(visits):
        head = [BOS_ID, *(tok for v in visits[:vi] for tok in visit_tokens(v))]
        tail = [tok for v in visits[vi + 1:] for tok in visit_tokens(v)] + [END_ID]
        for bi, (t, _) in enumerate(visit):
            encoder = [VISIT_ID]
            for bj, (tj, ids) in enumerate(visit):
                encoder += [FIRST_TYPE_ID + tj, *([MASK_ID] if bj == bi else [int(i) for i in ids])]
            encoder.append(VISIT_END_ID)
            _, types = _scored_visit(visit, lambda b, masked=bi: b == masked)
            out.append((head + encoder + tail, full, [-1] * (len(head) - 1) + types + [-1] * len(tail)))
    return out


def _scored_visit(visit: Visit, scored) -> tuple[list[int], list[int]]:
    """Tokens of a visit and, per token, the code type it counts for as a *target*: the codes
    of a scored block and the token that closes it (the next type token or </v>); -1 else."""
    tokens, types = [VISIT_ID], [-1]
    previous = -1  # the type of the block the next token closes, if that block is scored
    for bi, (t, ids) in enumerate(visit):
        tokens.append(FIRST_TYPE_ID + t)
        types.append(previous)
        previous = t if scored(bi) else -1
        tokens.extend(int(i) for i in ids)
        types.extend([previous] * len(ids))
    tokens.append(VISIT_END_ID)
    types.append(previous)
    return tokens, types


# ------------------------------------------------------------------ torch data

NUMERIC_FEATURES = ("age",)
CATEGORICAL_FEATURES = {"gender": GENDERS, "race": RACE_GROUPS}


@dataclass
class DemographicEncoder:
    """Age standardised with train mean/std; gender and race as category indices."""
    age_mean: float
    age_std: float

    @classmethod
    def fit(cls, train_demographics: pd.DataFrame) -> DemographicEncoder:
        age = train_demographics["age"].to_numpy(float)
        return cls(float(age.mean()), float(age.std()) or 1.0)

    def to_dict(self) -> dict[str, float]:
        return {"age_mean": self.age_mean, "age_std": self.age_std}

    def numeric(self, demographics: pd.DataFrame) -> np.ndarray:
        return ((demographics[["age"]].to_numpy(float) - self.age_mean) / self.age_std).astype(np.float32)  # [N, 1]

    @staticmethod
    def categorical(demographics: pd.DataFrame) -> np.ndarray:
        cols = []
        for name, values in CATEGORICAL_FEATURES.items():
            index = demographics[name].map({v: i for i, v in enumerate(values)})
            if index.isna().any():
                bad = demographics.loc[index.isna(), name].iloc[0]
                raise ValueError(f"demographics column {name!r} must be one of {values}; found {bad!r}")
            cols.append(index.to_numpy(np.int64))
        return np.stack(cols, axis=1)  # [N, 2]

    @staticmethod
    def cardinalities() -> list[int]:
        return [len(v) for v in CATEGORICAL_FEATURES.values()]


class PatientDataset(Dataset):
    """One item per patient (training: a fresh corruption each time it is read, drawn from
    numpy's global RNG, which `fit` seeds and restores on resume) or per evaluation example.

    Items: encoder ids, decoder sequence, score types (-1: not a target that counts for a
    code type; training scores every target), demographics, subject id.
    """

    def __init__(self, examples: list[dict[str, Any]], corruption: Corruption | None = None):
        self.examples = examples
        self.corruption = corruption
        self.lengths = np.array([len(e["sequence"]) for e in examples])

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> dict[str, Any]:
        e = self.examples[i]
        if self.corruption is not None:
            e = {**e, "encoder": self.corruption(e["visits"], np.random.default_rng(np.random.randint(2**31)))}
        return e


def patient_examples(encoded: dict[int, list[Visit]], demographics: pd.DataFrame, encoder: DemographicEncoder,
                     max_length: int, view: str = "train", corruption: Corruption | None = None,
                     seed: int = 0) -> tuple[list[dict[str, Any]], dict]:
    """Examples of one split. view: `train` (sequence, visits; corrupted when read),
    `fixed` (corrupted once with `seed`: a validation set whose loss means the same every
    epoch), `longitudinal` or `cross_type` (the evaluation views)."""
    demographics = demographics[demographics["subject_id"].isin(encoded)]
    x_num, x_cat = encoder.numeric(demographics), encoder.categorical(demographics)
    rng = np.random.default_rng(seed)
    examples, truncated = [], 0
    for row, subject in enumerate(demographics["subject_id"].to_numpy()):
        visits = encoded[int(subject)]
        kept = truncate(visits, max_length)
        truncated += n_codes(kept) < n_codes(visits)
        base = {"subject_id": int(subject), "x_num": x_num[row], "x_cat": x_cat[row]}
        if view in ("train", "fixed"):
            seq = sequence(kept)
            ex = {**base, "visits": kept, "sequence": seq, "types": [-2] * (len(seq) - 1)}  # -2: every target
            if view == "fixed":
                if corruption is None:
                    raise ValueError("the fixed view needs a corruption")
                ex["encoder"] = corruption(kept, rng)
            examples.append(ex)
        elif view in ("longitudinal", "cross_type"):
            make = longitudinal_examples if view == "longitudinal" else cross_type_examples
            for enc, seq, types in make(kept):
                examples.append({**base, "encoder": enc, "sequence": seq, "types": types})
        else:
            raise ValueError(f"view must be train, fixed, longitudinal or cross_type, got {view!r}")
    return examples, {"patients": len(demographics), "truncated_patients": int(truncated), "examples": len(examples)}


def collate_patients(items: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Right-padded batch:
        input_ids, attention_mask                  [B, S]  encoder (corrupted copy)
        decoder_input_ids, decoder_attention_mask  [B, T]  sequence[:-1]
        labels                                     [B, T]  sequence[1:], PAD on padding
        score_type                                 [B, T]  code type a target is scored for; -2 all, -1 none
        x_num [B, 1], x_cat [B, 2], subject_id [B]
    """
    enc = [torch.tensor(it["encoder"], dtype=torch.long) for it in items]
    seq = [torch.tensor(it["sequence"], dtype=torch.long) for it in items]
    types = [torch.tensor(it["types"], dtype=torch.long) for it in items]
    input_ids = pad_sequence(enc, batch_first=True, padding_value=PAD_ID)
    dec_in = pad_sequence([s[:-1] for s in seq], batch_first=True, padding_value=PAD_ID)
    labels = pad_sequence([s[1:] for s in seq], batch_first=True, padding_value=PAD_ID)
    score_type = pad_sequence(types, batch_first=True, padding_value=-1)
    dec_len = torch.tensor([len(s) - 1 for s in seq])
    return {
        "input_ids": input_ids, "attention_mask": input_ids != PAD_ID,
        "decoder_input_ids": dec_in,
        "decoder_attention_mask": torch.arange(dec_in.shape[1])[None, :] < dec_len[:, None],
        "labels": labels, "score_type": score_type,
        "x_num": torch.from_numpy(np.stack([it["x_num"] for it in items])),
        "x_cat": torch.from_numpy(np.stack([it["x_cat"] for it in items])),
        "subject_id": torch.tensor([it["subject_id"] for it in items], dtype=torch.long),
    }


def independent_nll_by_type(vocab: PatientVocab, labels: np.ndarray, score_type: np.ndarray) -> np.ndarray:
    """NLL of each example's scored blocks under the independent-codes baseline. [N, K]

    The baseline draws every code c of a visit independently with its train visit
    prevalence p_c, so a type-t block with code set S has probability
        P(S | block present) = prod_{c in S} p_c * prod_{c of type t not in S} (1 - p_c)
                               / (1 - prod_{c of type t} (1 - p_c)),
    a probability of the *set*. prompt_bart spells a set in one canonical order (sorted
    ids), so its sequence probability is a set probability too and the two perplexities
    (NLL over the block's codes + closing token) compare like with like; a unigram over
    orderings would waste log(|S|!) nats on orders and flatter the model.
    labels, score_type: [N, T] (decoder targets and the code type each is scored for; the
    type-t targets of one example are one block).
    """
    p = np.clip(np.asarray(vocab.visit_counts, dtype=float) / max(vocab.n_visits, 1), 1e-6, 1 - 1e-6)
    types = np.asarray(vocab.code_types)
    gain = np.zeros(len(vocab))  # log p_c - log(1 - p_c): what a present code adds to the all-absent case
    gain[FIRST_CODE_ID:] = np.log(p) - np.log1p(-p)
    out = np.zeros((labels.shape[0], len(CODE_TYPES)))
    for t in range(len(CODE_TYPES)):
        in_type = types == t
        if not in_type.any():
            continue
        all_absent = np.log1p(-p[in_type]).sum()
        log_nonempty = np.log(-np.expm1(all_absent))
        scored = score_type == t  # [N, T]
        present = (gain[labels] * (scored & (labels >= FIRST_CODE_ID))).sum(axis=1)  # [N]
        out[:, t] = np.where(scored.any(axis=1), -(present + all_absent - log_nonempty), 0.0)
    return out


def load_patients(interim_dir) -> tuple[Patients, dict]:
    """`build_patients` on data/interim (reading only the columns it needs)."""
    from pathlib import Path

    interim = Path(interim_dir)
    cohort = pd.read_parquet(interim / "cohort.parquet",
                             columns=["subject_id", "hadm_id", "stay_id", "intime", "age", "gender", "race", "split"])
    diagnoses = pd.read_parquet(interim / "diagnoses.parquet",
                                columns=["subject_id", "hadm_id", "admittime", "age", "code"])
    events = pd.read_parquet(interim / "events.parquet", columns=["hadm_id", "stay_id", "event_type", "code", "flag"])
    return build_patients(cohort, diagnoses, events)


def build_model_inputs(vocab: PatientVocab) -> dict[str, Any]:
    """Constructor arguments of `PromptBart` that the data fixes."""
    return {"vocab_size": len(vocab), "n_numeric": len(NUMERIC_FEATURES),
            "cat_cardinalities": DemographicEncoder.cardinalities(),
            "pad_token_id": PAD_ID, "bos_token_id": BOS_ID, "eos_token_id": END_ID}
