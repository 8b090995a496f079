"""Sequences from events: three views, one Parquet file per split and view.

- stays (token models, mortality): per ICU stay, `<bos>`, demographic tokens, the
  events *before the cutoff* in time order (most recent kept when truncated), `<eos>`.
  Each token carries its hours since ICU admission and the row of events.parquet it came
  from (`event_row`, -1 for special tokens), so an explanation can name the event.
- survival (survival_lstm): per ICU stay, fixed time bins (`visit_hours`) over the whole
  stay up to death or discharge, each a list of token ids, with the event bin.
- patients (prompt_bart, med2vec): per patient, admissions as visits of ICD codes with
  demographics and days since the previous admission. Discharge diagnoses only ever
  reach these patient-level code models.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ehrseq.io import atomic_path
from ehrseq.schema import BOS_ID, EOS_ID
from ehrseq.vocab import GAP_BOUNDS_HOURS, GAP_TOKENS, Vocab, age_token, gender_token, group_icd, race_token

ROW_GROUP_SIZE = 1024  # rows per Parquet row group: readers can stream a split in chunks


def _offsets(sorted_keys: np.ndarray, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start/end positions of each key of `keys` within `sorted_keys` (empty if absent)."""
    return np.searchsorted(sorted_keys, keys, side="left"), np.searchsorted(sorted_keys, keys, side="right")


def _gap_token_ids(vocab: Vocab, hours: np.ndarray) -> np.ndarray:
    """Id of the gap token preceding each event (0 = none), from the previous event's time."""
    gaps = np.diff(hours, prepend=hours[:1]) if len(hours) else hours
    level = np.searchsorted(np.asarray(GAP_BOUNDS_HOURS), gaps, side="right")  # 0 = under 1 h
    ids = vocab.ids(pd.Series(list(GAP_TOKENS)))
    return np.where(level > 0, ids[np.maximum(level - 1, 0)], 0)


def stay_sequences(
    events: pd.DataFrame, cohort: pd.DataFrame, vocab: Vocab, max_length: int, time_gap_tokens: bool
) -> tuple[pd.DataFrame, dict]:
    """Token view. `events` must be the full events.parquet (row order = event_row)."""
    observed = events.loc[~events["after_cutoff"]]
    token_ids = vocab.ids(vocab.event_tokens(observed))
    rows = observed.index.to_numpy(dtype=np.int64)
    hours = observed["hours"].to_numpy(dtype=np.float32)
    starts, ends = _offsets(observed["stay_id"].to_numpy(), cohort["stay_id"].to_numpy())
    demo = np.stack([
        vocab.ids(age_token(cohort["age"])), vocab.ids(gender_token(cohort["gender"])),
        vocab.ids(race_token(cohort["race"])),
    ], axis=1)
    budget = max_length - 2 - demo.shape[1]  # room left for events after <bos>, demographics, <eos>
    if budget < 1:
        raise ValueError(f"tokenize.max_length={max_length} leaves no room for events")
    out_ids, out_hours, out_rows, truncated = [], [], [], 0
    for i, (s, e) in enumerate(zip(starts, ends)):
        ids, hrs, rws = token_ids[s:e], hours[s:e], rows[s:e]
        if time_gap_tokens and len(ids):
            gap = _gap_token_ids(vocab, hrs)
            has_gap = gap > 0
            # interleave: a gap token right before the event it precedes
            order = np.argsort(np.concatenate([np.arange(len(ids)), np.flatnonzero(has_gap) - 0.5]), kind="stable")
            ids = np.concatenate([ids, gap[has_gap]])[order]
            hrs = np.concatenate([hrs, hrs[has_gap]])[order]
            rws = np.concatenate([rws, np.full(has_gap.sum(), -1)])[order]
        if len(ids) > budget:  # keep the most recent events: they matter most at the cutoff
            truncated += 1
            ids, hrs, rws = ids[-budget:], hrs[-budget:], rws[-budget:]
        n_head = 1 + demo.shape[1]
        out_ids.append(np.concatenate([[BOS_ID], demo[i], ids, [EOS_ID]]).astype(np.int32))
        out_hours.append(np.concatenate([np.zeros(n_head), hrs, [hrs[-1] if len(hrs) else 0.0]]).astype(np.float32))
        out_rows.append(np.concatenate([np.full(n_head, -1), rws, [-1]]).astype(np.int64))
    table = pd.DataFrame({
        "stay_id": cohort["stay_id"].to_numpy(), "subject_id": cohort["subject_id"].to_numpy(),
        "input_ids": out_ids, "hours": out_hours, "event_row": out_rows,
        "mortality": cohort["mortality"].to_numpy(np.int8),
        "event_hours": cohort["event_hours"].to_numpy(np.float32), "event": cohort["event"].to_numpy(np.int8),
    })
    lengths = np.array([len(x) for x in out_ids])
    stats = {
        "stays": len(table), "truncated": truncated,
        "stays_without_observed_events": int((ends - starts == 0).sum()),
        "length_mean": float(lengths.mean()) if len(lengths) else None,
        "length_p95": float(np.percentile(lengths, 95)) if len(lengths) else None,
        "length_max": int(lengths.max()) if len(lengths) else None,
    }
    return table, stats


def survival_sequences(
    events: pd.DataFrame, cohort: pd.DataFrame, vocab: Vocab, visit_hours: float, max_visits: int
) -> tuple[pd.DataFrame, dict]:
    """Visit view over the whole stay: bins of `visit_hours` from ICU admission up to the
    death/censoring bin. Stays longer than `max_visits` bins are censored at the last bin."""
    token_ids = vocab.ids(vocab.event_tokens(events))
    bins = np.floor(events["hours"].to_numpy() / visit_hours).astype(np.int64)
    starts, ends = _offsets(events["stay_id"].to_numpy(), cohort["stay_id"].to_numpy())
    event_bin = np.floor(cohort["event_hours"].to_numpy() / visit_hours).astype(np.int64)
    event = cohort["event"].to_numpy(np.int8).copy()
    capped = event_bin >= max_visits
    event[capped] = 0
    event_bin = np.minimum(event_bin, max_visits - 1)
    visits = []
    for i, (s, e) in enumerate(zip(starts, ends)):
        n = event_bin[i] + 1
        b, ids = bins[s:e], token_ids[s:e]
        keep = b < n
        per_visit = [[] for _ in range(n)]
        for v, t in zip(b[keep], ids[keep]):
            per_visit[v].append(int(t))
        visits.append([sorted(set(v)) for v in per_visit])  # a code counts once per visit
    table = pd.DataFrame({
        "stay_id": cohort["stay_id"].to_numpy(), "subject_id": cohort["subject_id"].to_numpy(),
        "visits": visits, "event_bin": event_bin.astype(np.int32), "event": event,
    })
    return table, {"stays": len(table), "censored_at_max_visits": int(capped.sum())}


def patient_sequences(diagnoses: pd.DataFrame, vocab: Vocab) -> tuple[pd.DataFrame, dict]:
    """Per patient: admissions (visits) of ICD token ids, ages, days since the previous one."""
    if diagnoses.empty:
        return pd.DataFrame(columns=["subject_id", "gender", "race", "visits", "ages", "days_since_prev"]), {"patients": 0}
    codes = group_icd(diagnoses["code"]) if vocab.icd_grouping else diagnoses["code"]
    diagnoses = diagnoses.assign(token=vocab.ids(codes))
    rows = []
    for subject, g in diagnoses.groupby("subject_id", sort=True):
        adm = g.groupby("hadm_id", sort=False).agg(
            admittime=("admittime", "first"), age=("age", "first"), tokens=("token", lambda t: list(dict.fromkeys(t)))
        ).sort_values("admittime")
        days = adm["admittime"].diff().dt.total_seconds().fillna(0).to_numpy() / 86400.0
        rows.append({
            "subject_id": subject,
            "gender": vocab.ids(gender_token(g["gender"].iloc[:1]))[0],
            "race": vocab.ids(race_token(g["race"].iloc[:1]))[0],
            "visits": [np.asarray(t, dtype=np.int32) for t in adm["tokens"]],
            "ages": adm["age"].to_numpy(np.float32),
            "days_since_prev": days.astype(np.float32),
        })
    table = pd.DataFrame(rows)
    return table, {"patients": len(table), "admissions": int(sum(len(v) for v in table["visits"]))}


def write_sequences(path, table: pd.DataFrame) -> None:
    """Parquet with small row groups so a split can be streamed (`iter_batches`)."""
    with atomic_path(path) as tmp:
        pq.write_table(pa.Table.from_pandas(table, preserve_index=False), tmp, row_group_size=ROW_GROUP_SIZE)
