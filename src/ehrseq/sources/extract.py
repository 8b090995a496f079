"""Extraction: a MIMIC-style folder -> events.parquet + cohort.parquet, all in DuckDB SQL.

The source files (csv, csv.gz or parquet) are read once into a scratch DuckDB database.
Per-source SQL (`sql/<source>/canonical.sql`) only renames columns into one canonical
shape per event kind and states what is particular to the source (which column says when
a result became known); event codes and texts, stay selection, labels, attachment of
events to stays, and every drop with its reason are shared (`sql/common/`), so MIMIC-IV,
MIMIC-III and the synthetic data obey the same rules and spell events the same way.

Events sit at their start time, but some values are known only later (a procedure's
duration and an infusion's amount at its end, a lab value and a culture's organism when
the result is stored). An event that starts before the cutoff and becomes known at or
after it is written as it looked at its start (value withheld, lab or culture "pending"),
so nothing before the cutoff carries information from after it;
`events.values_withheld_at_cutoff` in extract.json counts these per event kind. A
date-only event (MIMIC-III prescriptions) is known at the end of its day: one dated on the
cutoff's day is placed at the cutoff, after it (`events.date_only_moved_after_cutoff`).
"""
from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources
from pathlib import Path

import duckdb
import pandas as pd
import pyarrow.parquet as pq
from tqdm import tqdm

from ehrseq.cohort import assign_splits
from ehrseq.io import atomic_path, write_parquet
from ehrseq.schema import EVENT_COLUMNS, EVENT_TYPES, SPLITS
from ehrseq.sources import mimic3, mimic4
from ehrseq.sources.tables import register_tables

log = logging.getLogger(__name__)

# source name -> its module (TABLES, SQL_DIR, LAB_RESULT_TIME, INGREDIENT_SYSTEMS). The synthetic generator
# writes MIMIC-IV tables, so it goes through the MIMIC-IV path.
SOURCES = {"mimic4": mimic4, "synthetic": mimic4, "mimic3": mimic3}

COHORT_COLUMNS = [
    "subject_id", "hadm_id", "stay_id", "intime", "outtime", "cutoff",
    "age", "gender", "race", "admission_type", "insurance", "marital_status", "first_careunit",
    "mortality", "event_hours", "event", "split",
]


def _run_sql_file(con: duckdb.DuckDBPyConnection, relative: str, params: dict | None = None) -> None:
    """Run every statement of a packaged SQL file, split by DuckDB's own parser (a `;`
    inside a string or comment never splits a statement); each gets the parameters it names."""
    text = resources.files("ehrseq.sources").joinpath("sql", relative).read_text()
    params = params or {}
    for statement in duckdb.extract_statements(text):
        con.execute(statement, {name: params[name] for name in statement.named_parameters}).fetchall()


def load_source(con: duckdb.DuckDBPyConnection, source: str, path: str | Path,
                observation_hours: float, min_age: float, workers: int = 1) -> dict[str, dict]:
    """Read the source tables into `con` (`workers` files at once) and build
    `src_events`, `src_stays`, `src_diagnoses` (per-source canonical views) and
    `cohort_all` (every ICU stay with its cutoff, labels and exclusion reason).
    Returns the per-table read report."""
    tables = register_tables(con, path, SOURCES[source].TABLES, workers)
    _run_sql_file(con, f"{SOURCES[source].SQL_DIR}/canonical.sql")
    _run_sql_file(con, "common/source_events.sql")
    _run_sql_file(con, "common/cohort.sql", {"observation_hours": float(observation_hours), "min_age": float(min_age)})
    return tables


@contextmanager
def scratch_database(scratch: str | Path, threads: int | None = None,
                     memory_limit: str | None = None) -> Iterator[duckdb.DuckDBPyConnection]:
    """The extraction's DuckDB connection, working in a compressed in-memory database that
    spills to `scratch` beyond `memory_limit`.

    Every source file is read and parsed once into a table (a view over a csv.gz would be
    decompressed again by every query). In memory, not in a database file: a file would
    write every table, then read it back, which cost 2.2 of 14 CPU seconds at 10k patients
    (issue 15). Compressed (`work`): tables are stored uncompressed (about 80 bytes a source
    row, 145 a classified row) until a CHECKPOINT compresses them, 8x on the synthetic data;
    without it the tables outgrew the memory limit at 300k patients and spilled 11 GB (5.4x
    the csv.gz input). Temporary tables live in DuckDB's separate, uncompressed `temp`
    catalog: only small ones are."""
    with duckdb.connect(":memory:") as con:
        con.execute(f"SET temp_directory = '{scratch}'")
        con.execute("ATTACH ':memory:' AS work (COMPRESS)")
        con.execute("USE work")
        # Every output is ordered explicitly (ORDER BY), so DuckDB need not keep the row
        # order of intermediate tables: that lets it build them in parallel, with less memory.
        con.execute("SET preserve_insertion_order = false")
        if threads:
            con.execute(f"SET threads = {int(threads)}")
        if memory_limit:
            con.execute(f"SET memory_limit = '{memory_limit}'")
        yield con


def extract(
    source: str,
    path: str | Path,
    events_path: str | Path,
    cohort_path: str | Path,
    diagnoses_path: str | Path,
    observation_hours: float,
    min_age: float,
    split_fractions: dict[str, float],
    seed: int,
    threads: int | None = None,
    memory_limit: str | None = None,
    rows_per_part: int | None = None,
) -> dict:
    """Run the extraction and write both outputs atomically; return the metrics dict.

    `rows_per_part`: how many events are sorted at once when events.parquet is written
    (None: sized from DuckDB's free memory, see `_write_events`); its rows, their order and
    its schema are the same for any value."""
    if source not in SOURCES:
        raise ValueError(f"data.source must be one of {sorted(SOURCES)}, got {source!r}")
    Path(events_path).parent.mkdir(parents=True, exist_ok=True)
    # Deleted when the extraction ends, crash or not.
    with tempfile.TemporaryDirectory(prefix=".extract-", dir=Path(events_path).parent) as scratch, \
            scratch_database(scratch, threads, memory_limit) as con:
        tables = load_source(con, source, path, observation_hours, min_age, workers=threads or 1)
        con.execute("CHECKPOINT").fetchall()  # compress the source tables (see scratch_database)
        _run_sql_file(con, "common/events.sql")
        source_counts = _source_counts(con)
        row_counts = _store_event_rows(con)
        # Past the attachment nothing reads the per-source-row tables (only the stay, patient
        # and diagnosis tables): free them for the de-duplication and the sort, which then
        # spill less (issue 15).
        _drop_tables(con, [n for n in tables if n not in ("patients", "admissions", "icustays", "diagnoses_icd")])
        _run_sql_file(con, "common/collapse.sql")

        cohort = con.execute(
            """SELECT subject_id, hadm_id, stay_id, intime, outtime, cutoff, age, gender, race,
                      admission_type, insurance, marital_status, first_careunit,
                      CAST(died AS TINYINT) AS mortality, end_hours AS event_hours,
                      CAST(died AS TINYINT) AS event
               FROM cohort_all WHERE exclusion IS NULL ORDER BY stay_id"""
        ).df()
        cohort["split"] = assign_splits(cohort, split_fractions, seed)
        cohort = cohort[COHORT_COLUMNS]
        write_parquet(cohort_path, cohort)
        metrics = _metrics(con, source, observation_hours, tables, cohort, source_counts, row_counts)
        _drop_tables(con, ["shared_stays"])

        _write_events(con, events_path, scratch, metrics["events"]["kept_total"], rows_per_part)
        diagnoses = _write_diagnoses(con, cohort, diagnoses_path)
        metrics["diagnoses"] = {
            "read": tables["diagnoses_icd"]["rows"],
            "kept": len(diagnoses),
            "dropped": {
                "orphan_or_missing_code": tables["diagnoses_icd"]["rows"] - diagnoses.attrs["resolved"],
                "patient_not_in_cohort": diagnoses.attrs["resolved"] - len(diagnoses),
            },
        }
        return metrics


# Memory budgeted for sorting one event (keys and payload, strings included). Measured
# (issue 15): at 300k synthetic patients a range of 52.6M events spilled 3 GB with 10.5 GB
# of DuckDB's memory free, so the sort needs about 260 bytes an event; 400 leaves room
# for the COPY's buffers and for events longer than the synthetic ones.
SORT_BYTES_PER_EVENT = 400
# The file's schema does not depend on the data: code and text stay optional (nullable)
# parquet columns, as value, unit and flag are. DuckDB writes a column as `required` when
# its statistics show no NULL, which holds for every kept event; the CASE hides that (the
# planner does not fold it), so files written before and after the kept-only event_rows
# (issue 15) have the same schema.
EVENT_COLUMNS_SQL = """s.subject_id, s.hadm_id, e.stay_id, e.placed_time AS time,
       date_diff('microsecond', s.intime, e.placed_time) / 3.6e9 AS hours,
       e.event_type, CASE WHEN e.stay_id IS NOT NULL THEN e.code END AS code,
       CASE WHEN e.stay_id IS NOT NULL THEN e.text END AS text, e.value, e.unit, e.flag,
       e.placed_time >= s.cutoff AS after_cutoff"""


def _write_events(con, events_path, scratch, events: int, rows_per_part: int | None) -> None:
    """events.parquet: every kept event in (stay, placed time, kind, content) order, written
    atomically. Its rows, their order and its schema do not depend on `rows_per_part`.

    One sort of all events outgrew the memory limit at 300k patients and spilled 2.8-3.8
    GB (issue 15). So when there are more than `rows_per_part` events (None: DuckDB's
    free memory now over SORT_BYTES_PER_EVENT), the stays are cut into contiguous stay_id
    ranges of at most `rows_per_part` events (a larger stay alone), each range is sorted
    and written to a part file in `scratch`, and one COPY streams the parts into the file
    in order: UNION ALL keeps the order of its inputs (DuckDB's documented order
    preservation, with preserve_insertion_order on for that COPY).

    Three traps. The parquet writer marks a column required when its input's statistics
    show no NULL; a part file's statistics are its actual NULL counts, not the tables'
    (code, text and after_cutoff have none in the data): each column the parts declare
    optional is passed through a CASE the planner does not fold, so the schema is one
    sort's. A range is selected by joining a table of its stays (`range_stays`), not by
    a constant filter on stay_id: the planner proves such a filter false on the small
    `collapsed` table for ranges outside its stays, replaces that branch of events_kept
    by an empty result without statistics, and the part's stay_id, time, hours and
    event_type come out optional (the parts are checked to agree). And the bytes differ
    from one sort's: DuckDB merges a part's last, short batch into the next row group
    instead of cutting every 122,880 rows, so a few row groups are larger (same rows,
    same order, same schema).
    """
    kind_order = " ".join(f"WHEN '{k}' THEN {i}" for i, k in enumerate(EVENT_TYPES))

    def sorted_events(stays: str) -> str:
        return f"""SELECT {EVENT_COLUMNS_SQL}
                   FROM events_kept e JOIN {stays} s USING (stay_id)
                   ORDER BY e.stay_id, e.placed_time, CASE e.event_type {kind_order} END,
                            e.code, e.text, e.value, e.unit, e.flag"""

    if rows_per_part is None:
        free = _free_memory(con)
        rows_per_part = max(1, free // SORT_BYTES_PER_EVENT)
        log.info("%.2f GB of DuckDB's memory free for sorting: %d events a range", free / 1e9, rows_per_part)
    ranges = _stay_ranges(con, rows_per_part) if events > rows_per_part else []
    log.info("writing %d events in %d stay range(s) of at most %d events", events, max(1, len(ranges)), rows_per_part)
    with atomic_path(events_path) as tmp:
        if not ranges:
            con.execute(f"COPY ({sorted_events('event_stays')}) TO '{tmp}' (FORMAT parquet)").fetchall()
            return
        parts = []
        for i, (first, last) in enumerate(tqdm(ranges, desc="sort events by stay range", unit="range", disable=None)):
            parts.append(Path(scratch) / f"events-{i:05d}.parquet")
            con.execute("CREATE OR REPLACE TEMP TABLE range_stays AS FROM event_stays "
                        "WHERE stay_id BETWEEN $first AND $last", {"first": first, "last": last}).fetchall()
            con.execute(f"COPY ({sorted_events('range_stays')}) TO '{parts[-1]}' (FORMAT parquet)").fetchall()
        _drop_tables(con, ["range_stays"])
        optional = {part: [f.name for f in pq.read_schema(part) if f.nullable] for part in parts}
        odd = next((part for part in parts if optional[part] != optional[parts[0]]), None)
        if odd is not None:  # the schema would then depend on where the ranges fall
            raise RuntimeError(f"event part files disagree on their optional columns: {optional[parts[0]]} in "
                               f"{parts[0].name}, {optional[odd]} in {odd.name}")
        columns = ", ".join(f"CASE WHEN stay_id IS NOT NULL THEN {c} END AS {c}" if c in optional[parts[0]] else c
                            for c in EVENT_COLUMNS)
        union = " UNION ALL ".join(f"SELECT * FROM read_parquet('{p}')" for p in parts)
        con.execute("SET preserve_insertion_order = true")
        try:
            con.execute(f"COPY (SELECT {columns} FROM ({union})) TO '{tmp}' (FORMAT parquet)").fetchall()
        finally:
            con.execute("SET preserve_insertion_order = false")
        for part in parts:
            part.unlink()


def _free_memory(con) -> int:
    """Bytes DuckDB may still use: its memory limit minus what its buffers hold now."""
    limit, used = con.execute(
        """SELECT (SELECT value FROM duckdb_settings() WHERE name = 'memory_limit'),
                  (SELECT sum(memory_usage_bytes) FROM duckdb_memory())"""
    ).fetchall()[0]
    return max(0, _parse_bytes(limit) - int(used or 0))


def _parse_bytes(text: str) -> int:
    """DuckDB's spelling of a size ('11.1 GiB', '5.0 GB', '512.0 MiB') -> bytes."""
    number, unit = text.split()
    scale = {"bytes": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
             "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40}
    return int(float(number) * scale[unit])


def _stay_ranges(con, rows_per_part: int) -> list[tuple[int, int]]:
    """Contiguous (first, last) stay_id ranges covering every kept event, each holding at
    most `rows_per_part` events unless one stay alone has more."""
    ranges: list[tuple[int, int]] = []
    size = 0
    for stay, n in con.execute("SELECT stay_id, count(*) FROM events_kept GROUP BY ALL ORDER BY stay_id").fetchall():
        if ranges and size + n <= rows_per_part:
            ranges[-1], size = (ranges[-1][0], stay), size + n
        else:
            ranges.append((stay, stay))
            size = n
    return ranges


def _store_event_rows(con) -> list[tuple]:
    """event_rows = the kept rows of classified_events (events.sql); returns the source rows
    per (kind, drop reason or None, charting system) with their counts.

    Dropped rows are only counted (an aggregate over the attachment, which spells no
    content), never stored: about half of the source rows fall outside every stay (issue
    15). Labs are stored first, then labevents is emptied (it stays a table, so the views
    over it still bind) before the other kinds are attached; each query reads only its
    kinds' tables (the planner drops the union's other sources). The tables live in the
    compressed in-memory database (see `extract`): CHECKPOINT compresses what was just
    written, so the uncompressed form of only one part is held at a time."""
    counts = con.execute(
        "SELECT event_type, reason, system, count(*) FROM classified_events GROUP BY ALL ORDER BY ALL"
    ).fetchall()
    kept = "SELECT * EXCLUDE (reason, system) FROM classified_events WHERE reason IS NULL"
    con.execute(f"CREATE OR REPLACE TABLE event_rows AS {kept} AND event_type = 'lab'").fetchall()
    con.execute("CHECKPOINT").fetchall()
    if con.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name = 'labevents'").fetchall()[0][0]:
        con.execute("CREATE OR REPLACE TABLE labevents AS FROM labevents LIMIT 0").fetchall()
    con.execute(f"INSERT INTO event_rows {kept} AND event_type <> 'lab'").fetchall()
    con.execute("CHECKPOINT").fetchall()
    return counts


def _drop_tables(con, names) -> None:
    """Drop those of `names` that are tables (a missing optional source table is an empty view)."""
    existing = {r[0] for r in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()}
    for name in names:
        if name in existing:
            con.execute(f"DROP TABLE {name}").fetchall()


def _write_diagnoses(con, cohort: pd.DataFrame, path) -> pd.DataFrame:
    """Diagnoses of the cohort's patients (all their admissions), with the patient's split."""
    resolved = con.execute("SELECT count(*) FROM src_diagnoses").fetchall()[0][0]
    splits = cohort.groupby("subject_id")["split"].first().reset_index()
    con.register("subject_splits", splits)
    diagnoses = con.execute(
        """SELECT d.*, s.split FROM src_diagnoses d JOIN subject_splits s USING (subject_id)
           ORDER BY d.subject_id, d.admittime, d.hadm_id, d.seq_num, d.code"""
    ).df()
    con.unregister("subject_splits")
    write_parquet(path, diagnoses)
    diagnoses.attrs["resolved"] = resolved
    return diagnoses


def _event_counts(con, row_counts: list[tuple]) -> tuple[dict[str, dict[str, int]], dict[str, dict[str, int]],
                                                      dict[str, int]]:
    """Per kind: kept events and how many of them are withheld, moved to the cutoff or
    after it; dropped source rows per reason; kept source rows per charting system.

    Of the kept source rows that collapse into one event (collapse.sql), a row is a
    `duplicate` when an identical copy (same content, shown in full or withheld alike)
    survives, and `merged_when_withheld` when it differs from the survivor only in what
    is withheld. Per kind: distinct copies = groups with a copy shown in full + distinct
    withheld contents; duplicates = rows - distinct copies; merged = distinct copies - events.
    """
    kept = {name: {k: 0 for k in EVENT_TYPES} for name in ("events", "withheld", "moved", "after_cutoff")}
    dropped: dict[str, dict[str, int]] = {}
    systems: dict[str, int] = {}
    for kind, reason, system, n in row_counts:  # every source row, counted by _store_event_rows
        if reason is not None:
            dropped.setdefault(reason, {k: 0 for k in EVENT_TYPES})[kind] += n
        elif kind == "ingredient":
            systems[system] = systems.get(system, 0) + n
    withheld_copies = dict(con.execute(
        """SELECT event_type, count(*) FROM (
               SELECT DISTINCT stay_id, time, event_type, code, text, value, unit, flag,
                      full_code, full_text, full_value, full_flag
               FROM event_rows WHERE withheld)
           GROUP BY ALL"""
    ).fetchall())
    for kind, events, rows, plain, withheld, moved, after in con.execute(
        """SELECT event_type, count(*), sum(source_rows), count(*) FILTER (WHERE has_plain),
                  count(*) FILTER (WHERE withheld), count(*) FILTER (WHERE moved_to_cutoff),
                  count(*) FILTER (WHERE after_cutoff)
           FROM events_kept GROUP BY ALL"""
    ).fetchall():
        for name, n in (("events", events), ("withheld", withheld), ("moved", moved), ("after_cutoff", after)):
            kept[name][kind] = n
        copies = plain + withheld_copies.get(kind, 0)
        for reason, n in (("duplicate", rows - copies), ("merged_when_withheld", copies - events)):
            if n:
                dropped.setdefault(reason, {k: 0 for k in EVENT_TYPES})[kind] = n
    return kept, dropped, systems


def _source_counts(con) -> dict:
    """What the metrics need from the source tables (read before they are dropped): culture
    results, and ingredient rows per charting system."""
    return {
        "micro_results": con.execute("SELECT count(*) FROM src_cultures").fetchall()[0][0],
        "ingredient_rows": dict(con.execute("SELECT system, count(*) FROM src_ingredients GROUP BY ALL").fetchall()),
    }


def _metrics(con, source: str, observation_hours: float, tables: dict, cohort: pd.DataFrame,
             source_counts: dict, row_counts: list[tuple]) -> dict:
    kept_counts, dropped, kept_by_system = _event_counts(con, row_counts)
    kept, withheld, moved = kept_counts["events"], kept_counts["withheld"], kept_counts["moved"]
    micro_results = source_counts["micro_results"]
    micro_table = next((n for n in ("microbiologyevents",) if n in tables), None)
    after_cutoff = sum(kept_counts["after_cutoff"].values())
    systems = {system: {"read": 0, "kept": 0} for system in SOURCES[source].INGREDIENT_SYSTEMS}
    for system, n in source_counts["ingredient_rows"].items():
        systems[system]["read"] = n
    for system, n in kept_by_system.items():
        systems[system]["kept"] = n
    stays = dict(con.execute(
        "SELECT coalesce(exclusion, 'kept'), count(*) FROM cohort_all GROUP BY ALL"
    ).fetchall())
    splits = {}
    for name in SPLITS:
        part = cohort[cohort["split"] == name]
        splits[name] = {
            "stays": len(part), "patients": int(part["subject_id"].nunique()),
            "deaths": int(part["mortality"].sum()),
            "mortality_rate": float(part["mortality"].mean()) if len(part) else None,
        }
    missing = sorted(name for name, t in tables.items() if t["file"] is None)
    return {
        "source": source,
        "observation_hours": observation_hours,
        "tables_read": {name: t["rows"] for name, t in tables.items()},
        "missing_tables": missing,
        "events": {
            "kept": kept,
            "kept_total": sum(kept.values()),
            "after_cutoff": after_cutoff,
            # kept events before the cutoff shown without their later-known value/result
            "values_withheld_at_cutoff": withheld,
            "values_withheld_at_cutoff_total": sum(withheld.values()),
            "lab_result_time": SOURCES[source].LAB_RESULT_TIME,
            # date-only events dated on the cutoff's day: known only at the day's end, so
            # placed at the cutoff (after it) instead of at the day's start
            "date_only_moved_after_cutoff": moved,
            # source rows per charting system (MIMIC-III: MetaVision and CareVue), and
            # how many of them fall in cohort stays (before duplicates are removed)
            "ingredient_rows_by_system": systems,
            "dropped": dropped,
            "dropped_total": sum(sum(d.values()) for d in dropped.values()),
            "microbiology_susceptibility_rows_merged": (
                tables[micro_table]["rows"] - micro_results if micro_table else 0
            ),
        },
        "stays": {
            "read": sum(stays.values()),
            "kept": stays.pop("kept", 0),
            "excluded": stays,
        },
        "patients": int(cohort["subject_id"].nunique()),
        "mortality_rate": float(cohort["mortality"].mean()) if len(cohort) else None,
        "splits": splits,
    }
