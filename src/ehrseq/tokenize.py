"""Sequences from events: three views, one Parquet file per split and view.

- stays (token models, mortality): per ICU stay, `<bos>`, demographic tokens, the
  events *before the cutoff* in time order (most recent kept when truncated), `<eos>`.
  Each token carries its hours since ICU admission and the row of events.parquet it came
  from (`event_row`, -1 for special tokens), so an explanation can name the event.
- survival (survival_lstm): per ICU stay, a landmark at the cutoff: fixed time bins
  (`visit_hours`) of token ids before and after the cutoff, with the time to death or
  censoring after the cutoff (see `survival_sequences`).
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
    """Token view. `events`: rows of events.parquet sorted by stay, indexed by their row
    number (`event_row`); a subset (one split's stays) is fine."""
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


def horizon_bins(horizon_hours: float, visit_hours: float) -> int:
    """Number of visit bins in the survival horizon; the horizon must be a whole number of bins."""
    n = horizon_hours / visit_hours
    if visit_hours <= 0 or n < 1 or abs(n - round(n)) > 1e-9:
        raise ValueError(f"survival.horizon_hours={horizon_hours} must be a positive multiple of "
                         f"tokenize.visit_hours={visit_hours}")
    return int(round(n))


def cutoff_bins(hours_after_cutoff: np.ndarray, after_cutoff: np.ndarray, visit_hours: float) -> np.ndarray:
    """Each event's bin relative to the cutoff: -1 is the last pre-cutoff bin, 0 the first
    after it (a stay's visit position is this + its `pre_visits`). The `after_cutoff` flag,
    not float arithmetic, decides the side of the cutoff. NaN hours land in bin 0 / -1."""
    rel_bin = np.floor(np.nan_to_num(hours_after_cutoff) / visit_hours).astype(np.int64)
    return np.where(after_cutoff, np.maximum(rel_bin, 0), np.minimum(rel_bin, -1))


def survival_sequences(
    events: pd.DataFrame, cohort: pd.DataFrame, vocab: Vocab, visit_hours: float, horizon_hours: float
) -> tuple[pd.DataFrame, dict]:
    """Landmark view at the cutoff, in bins of `visit_hours` (w) on a clock that starts at
    the cutoff.

    Outcome: T = hours from the cutoff to in-hospital death (`event` 1) or to discharge
    (`event` 0), censored at `horizon_hours` (H = horizon / w bins), whichever comes first.
    Discrete time: bin k covers ((k-1)w, kw] after the cutoff. `event_bin` is
    ceil(T / w) for a death (at least 1) and floor(T / w) for a censored stay: the number
    of bins it is known to have survived completely (a stay discharged 3 h after the
    cutoff has survived none). `time_hours` keeps the continuous T for the metrics.

    Visits: the pre-cutoff events in P = ceil(observation window / w) bins ending at the
    cutoff (the state after the last of them is the landmark, `pre_visits` = P), then the
    post-cutoff bins 1 .. event_bin - 1: the state after post-cutoff bin j predicts bins
    j+1 .. and is at risk because T > j w. The bin holding the death is never an input,
    so no state sees an event of the bin it predicts (the old view let the death bin see
    events up to the death and started the clock at ICU admission). Empty bins are kept
    (empty visits) so that visit position = time. A code counts once per visit.
    Post-cutoff events carry their final values (a procedure's duration), which dynamic
    training states may see up to one event-duration early; the landmark state, the one
    evaluated, sees pre-cutoff events only, with values withheld as at the cutoff.

    Dropped and counted: no pre-cutoff event (`no_pre_cutoff_visit`), an outcome time
    before the cutoff (`censored_before_cutoff`, `event_before_cutoff`) or missing
    (`missing_outcome_time`). Deaths after the horizon are censored there (counted).
    """
    n_horizon = horizon_bins(horizon_hours, visit_hours)
    cutoff_hours = ((cohort["cutoff"] - cohort["intime"]).dt.total_seconds() / 3600.0).to_numpy()
    time = cohort["event_hours"].to_numpy(dtype=float) - cutoff_hours  # hours after the cutoff
    event = cohort["event"].to_numpy(np.int8).copy()
    after_horizon = (event == 1) & (time > horizon_hours)
    event[after_horizon] = 0
    time = np.minimum(time, horizon_hours)
    with np.errstate(invalid="ignore"):
        event_bin = np.where(event == 1, np.maximum(np.ceil(time / visit_hours - 1e-9), 1),
                             np.floor(time / visit_hours + 1e-9))
    pre_visits = np.ceil(cutoff_hours / visit_hours - 1e-9).astype(np.int64)

    starts, ends = _offsets(events["stay_id"].to_numpy(), cohort["stay_id"].to_numpy())
    token_ids = vocab.ids(vocab.event_tokens(events))
    n_ids = len(vocab)  # ids are below it: (visit, id) -> one sortable key, visit * n_ids + id
    # hours relative to the stay's cutoff (NaN for events of stays outside `cohort`)
    cutoff_of_stay = pd.Series(cutoff_hours, index=cohort["stay_id"].to_numpy())
    rel = (events["hours"] - events["stay_id"].map(cutoff_of_stay)).to_numpy(dtype=float)
    rel_bin = cutoff_bins(rel, events["after_cutoff"].to_numpy(bool), visit_hours)

    reasons = np.full(len(cohort), "", dtype=object)
    reasons[np.isnan(time)] = "missing_outcome_time"
    reasons[(reasons == "") & (time < 0) & (event == 0)] = "censored_before_cutoff"
    reasons[(reasons == "") & (time < 0) & (event == 1)] = "event_before_cutoff"
    rows, ignored_before_window = [], 0
    for i, (s, e) in enumerate(zip(starts, ends)):
        b, ids = rel_bin[s:e], token_ids[s:e]
        if reasons[i] == "" and not (b < 0).any():
            reasons[i] = "no_pre_cutoff_visit"
        if reasons[i]:
            continue
        n_pre, n_post = int(pre_visits[i]), max(int(event_bin[i]) - 1, 0)
        position = b + n_pre  # pre-cutoff bins 0 .. P-1, post-cutoff bin j at P + j - 1
        keep = (position >= 0) & (position < n_pre + n_post)
        ignored_before_window += int((position < 0).sum())
        # each visit's distinct ids, ascending: one sorted pass over (visit, id) keys
        key = np.unique(position[keep] * n_ids + ids[keep])  # int64
        cuts = np.searchsorted(key // n_ids, np.arange(1, n_pre + n_post))
        per_visit = np.split((key % n_ids).astype(np.int32), cuts) if n_pre + n_post else []
        rows.append({
            "stay_id": cohort["stay_id"].iloc[i], "subject_id": cohort["subject_id"].iloc[i],
            "visits": per_visit,
            "pre_visits": np.int32(n_pre), "event_bin": np.int32(event_bin[i]), "event": np.int8(event[i]),
            "time_hours": np.float32(time[i]), "horizon_bins": np.int32(n_horizon),
        })
    table = pd.DataFrame(rows, columns=["stay_id", "subject_id", "visits", "pre_visits", "event_bin", "event",
                                        "time_hours", "horizon_bins"])
    kept = reasons == ""
    dropped = pd.Series(reasons[~kept]).value_counts().to_dict()
    return table, {
        "stays": int(len(cohort)), "kept": int(kept.sum()), "dropped": {str(k): int(v) for k, v in dropped.items()},
        "events_within_horizon": int((event[kept] == 1).sum()),
        "deaths_after_horizon_censored": int(after_horizon[kept].sum()),
        "censored_before_first_bin": int(((event == 0) & (event_bin == 0))[kept].sum()),
        "events_before_first_pre_cutoff_bin_ignored": ignored_before_window,
    }


def patient_sequences(diagnoses: pd.DataFrame, vocab: Vocab) -> tuple[pd.DataFrame, dict]:
    """Per patient (ascending subject_id): admissions (visits) by admission time, ties in
    order of first appearance, each the ICD token ids in order of first appearance, once;
    the age at each admission and the days since the previous one (0 for the first, and
    where a time is missing). Gender and race come from the patient's first row.

    Vectorised over all rows (a per-patient groupby took 87% of the stage on the default
    data and does not finish at MIMIC-IV size)."""
    if diagnoses.empty:
        columns = ["subject_id", "gender", "race", "visits", "ages", "days_since_prev"]
        return pd.DataFrame(columns=columns), {"patients": 0}
    codes = group_icd(diagnoses["code"]) if vocab.icd_grouping else diagnoses["code"]
    rows = diagnoses.reset_index(drop=True).assign(token=vocab.ids(codes))
    rows = rows.loc[~rows.duplicated(["hadm_id", "token"])]  # a code once per admission, where it first appears
    admissions = (rows.drop_duplicates("hadm_id")  # an admission's first row: subject, time, age
                  .sort_values(["subject_id", "admittime"], kind="stable"))
    rank = pd.Series(np.arange(len(admissions)), index=admissions["hadm_id"].to_numpy())
    rows = rows.assign(admission=rows["hadm_id"].map(rank).to_numpy()).sort_values("admission", kind="stable")
    cuts = np.flatnonzero(np.diff(rows["admission"].to_numpy())) + 1
    visits = np.split(rows["token"].to_numpy(np.int32), cuts)  # [admissions] arrays, in admission order

    subjects = admissions["subject_id"].to_numpy()
    first = np.flatnonzero(np.r_[True, subjects[1:] != subjects[:-1]])  # each patient's first admission
    bounds = np.r_[first, len(admissions)]
    days = admissions["admittime"].diff().dt.total_seconds().to_numpy() / 86400.0
    days[first] = 0.0
    days = np.nan_to_num(days, nan=0.0).astype(np.float32)
    ages = admissions["age"].to_numpy(np.float32)
    people = diagnoses.drop_duplicates("subject_id").set_index("subject_id").loc[subjects[first]]
    gender, race = vocab.ids(gender_token(people["gender"])), vocab.ids(race_token(people["race"]))
    table = pd.DataFrame({
        "subject_id": subjects[first], "gender": gender, "race": race,
        "visits": [visits[a:b] for a, b in zip(bounds[:-1], bounds[1:])],
        "ages": [ages[a:b] for a, b in zip(bounds[:-1], bounds[1:])],
        "days_since_prev": [days[a:b] for a, b in zip(bounds[:-1], bounds[1:])],
    })
    return table, {"patients": len(table), "admissions": len(admissions)}


def write_sequences(path, table: pd.DataFrame) -> None:
    """Parquet with small row groups so a split can be streamed (`iter_batches`)."""
    with atomic_path(path) as tmp:
        pq.write_table(pa.Table.from_pandas(table, preserve_index=False), tmp, row_group_size=ROW_GROUP_SIZE)
