"""Source tables as typed DuckDB tables, read once from csv, csv.gz or parquet files.

Every source (MIMIC-IV, MIMIC-III, the synthetic generator) goes through this one layer,
so file discovery, case-insensitive column names, type checks and the handling of
missing optional tables live in one place. Source SQL then sees clean lower-case tables
with real types.

Timestamps are parsed with explicit formats, never guessed: a spreadsheet that rewrote
`2150-10-23 21:09:00` as `10/23/50 21:09` must stop the run with the file, column and an
example value, not turn into a silently wrong year.
"""
from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import duckdb

log = logging.getLogger(__name__)

# Formats MIMIC uses (MIMIC-IV: seconds; some exports: fractional seconds or minutes;
# date-only columns such as chartdate, dob).
TIMESTAMP_FORMATS = ["%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M:%S.%f", "%Y-%m-%d %H:%M", "%Y-%m-%d"]
_EXTENSIONS = (".csv.gz", ".csv", ".parquet")


class SourceDataError(ValueError):
    """Input data that cannot be read correctly; the message names file, column and value."""


@dataclass(frozen=True)
class TableSpec:
    """One source table: its file stem, the columns we read and their types.

    `columns` maps lower-case column name -> DuckDB type (BIGINT, DOUBLE, VARCHAR,
    TIMESTAMP). Columns listed in `optional_columns` may be absent from a file (they
    read as NULL); any other absent column is an error.
    """

    name: str
    stem: str
    columns: dict[str, str]
    required: bool = False
    optional_columns: frozenset[str] = field(default_factory=frozenset)


def find_table_file(root: Path, stem: str) -> Path | None:
    """`stem` may contain a sub-folder (`hosp/labevents`); names match in any case."""
    folder = root / Path(stem).parent
    base = Path(stem).name.lower()
    if not folder.is_dir():
        return None
    candidates = {p.name.lower(): p for p in folder.iterdir() if p.is_file()}
    for ext in _EXTENSIONS:
        if base + ext in candidates:
            return candidates[base + ext]
    return None


def _reader(path: Path) -> str:
    quoted = str(path).replace("'", "''")
    if path.name.lower().endswith(".parquet"):
        return f"read_parquet('{quoted}')"
    # all_varchar: we type every column ourselves; DuckDB's type sniffing would guess
    # date formats (the silent-wrong-year trap) and differ between files.
    return f"read_csv('{quoted}', header=true, all_varchar=true, quote='\"', escape='\"')"


def _typed_expression(column: str, sql_type: str, source_type: str) -> str:
    ref = f'"{column}"'
    if sql_type == "TIMESTAMP":
        if source_type.startswith("TIMESTAMP") or source_type == "DATE":
            return f"CAST({ref} AS TIMESTAMP)"
        formats = ", ".join(f"'{f}'" for f in TIMESTAMP_FORMATS)
        return f"try_strptime(NULLIF(TRIM(CAST({ref} AS VARCHAR)), ''), [{formats}])"
    if sql_type == "VARCHAR":
        return f"NULLIF(TRIM(CAST({ref} AS VARCHAR)), '')"
    return f"TRY_CAST(NULLIF(TRIM(CAST({ref} AS VARCHAR)), '') AS {sql_type})"


def register_tables(
    con: duckdb.DuckDBPyConnection, root: str | Path, specs: list[TableSpec], workers: int = 1
) -> dict[str, dict]:
    """Load one typed table per table found under `root`; validate its columns.

    Returns per table: the file read (or None when missing) and the number of rows.
    A missing required table or column, or a value that does not parse as its type,
    raises SourceDataError. A missing optional table becomes an empty view and a warning.
    Up to `workers` files are read at once (each on its own cursor): decompressing a
    csv.gz is sequential, so reading labevents beside the other tables keeps two cores busy.
    """
    root = Path(root)
    # a cursor starts in the default database: the tables go where `con` works (extract's
    # compressed `work` database)
    database = con.execute("SELECT current_database()").fetchall()[0][0]
    if not root.is_dir():
        raise SourceDataError(f"source folder {root} does not exist")
    report: dict[str, dict] = {}
    found: list[tuple[TableSpec, Path]] = []
    for spec in specs:
        path = find_table_file(root, spec.stem)
        if path is None:
            if spec.required:
                raise SourceDataError(
                    f"required table {spec.stem} not found under {root} "
                    f"(looked for {', '.join(Path(spec.stem).name + e for e in _EXTENSIONS)}, any case)"
                )
            log.warning("optional table %s not found under %s: treated as empty", spec.stem, root)
            _register_empty(con, spec)
            report[spec.name] = {"file": None, "rows": 0}
        else:
            found.append((spec, path))

    def load(item: tuple[TableSpec, Path]) -> int:
        spec, path = item
        cursor = con.cursor()
        try:
            cursor.execute(f"USE {database}")
            reader = _reader(path)
            described = cursor.execute(f"DESCRIBE SELECT * FROM {reader}").fetchall()
            actual = {row[0].lower(): (row[0], row[1]) for row in described}
            _check_columns(spec, path, actual)
            rows = _load_typed_csv(cursor, spec, path, actual)
            if rows is None:
                rows = _load_table(cursor, spec, path, reader, actual)
        finally:
            cursor.close()
        log.info("read %s: %d rows", path, rows)
        return rows

    # largest files first, so the big one never starts last; results and errors in spec order
    by_size = sorted(found, key=lambda item: -item[1].stat().st_size)
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        futures = {item[0].name: pool.submit(load, item) for item in by_size}
    for spec, path in found:
        report[spec.name] = {"file": str(path), "rows": futures[spec.name].result()}
    return {spec.name: report[spec.name] for spec in specs}


def _check_columns(spec: TableSpec, path: Path, actual: dict) -> None:
    for column in spec.columns:
        if column not in actual and column not in spec.optional_columns:
            raise SourceDataError(
                f"{path}: column '{column}' is missing (columns present: {', '.join(sorted(actual))})"
            )


def _load_typed_csv(con, spec: TableSpec, path: Path, actual: dict) -> int | None:
    """The fast path for a csv(.gz): DuckDB's CSV reader parses every typed column itself.

    Parsing while reading (in parallel for plain csv) avoids materialising every value as
    text first and a second pass per column. The reader parses timestamps as ISO 8601
    (DuckDB's cast: `2150-10-23 21:09:00`, fractional seconds, date only), never
    guessing a day/month order, and raises on the first value it cannot parse. Then
    this returns None and `_load_table` reads the file the careful way: other accepted
    formats, or an error naming file, column and an example value. Returns the row count.
    """
    if path.name.lower().endswith(".parquet"):
        return None
    types = {actual[c][0]: t for c, t in spec.columns.items() if c in actual and t != "VARCHAR"}
    select = []
    for column, sql_type in spec.columns.items():
        if column not in actual:
            select.append(f"CAST(NULL AS {sql_type}) AS {column}")
        elif sql_type == "VARCHAR":
            select.append(f"NULLIF(TRIM(\"{actual[column][0]}\"), '') AS {column}")
        else:
            select.append(f"\"{actual[column][0]}\" AS {column}")
    quoted = str(path).replace("'", "''")
    type_map = "{" + ", ".join(f"'{k}': '{t}'" for k, t in types.items()) + "}"
    try:
        return con.execute(
            f"""CREATE OR REPLACE TABLE {spec.name} AS SELECT {', '.join(select)}
                FROM read_csv('{quoted}', header=true, all_varchar=true, types={type_map}, quote='"', escape='"')"""
        ).fetchall()[0][0]
    except duckdb.Error as error:
        log.info("%s: the typed reader stopped (%s); reading it value by value", path, str(error).splitlines()[0])
        return None


def _load_table(con, spec: TableSpec, path: Path, reader: str, actual: dict) -> int:
    """Read the file ONCE into a typed table, checking every value on the way.

    A view over a gzipped CSV would be decompressed and parsed again by every query
    that touches it (validation, row count, each join). The connection's database is a
    scratch database (see `extract`) that spills to disk beyond DuckDB's `memory_limit`,
    so memory stays under it. Each typed column that is not VARCHAR gets a
    `__bad_<column>` twin holding the raw text wherever parsing failed; the twins are
    checked and dropped before anyone reads the table.
    """
    typed, checked = [], []
    for column, sql_type in spec.columns.items():
        if column not in actual:  # optional (checked by _check_columns)
            typed.append(f"CAST(NULL AS {sql_type}) AS {column}")
            continue
        original, source_type = actual[column]
        typed.append(f"{_typed_expression(original, sql_type, source_type)} AS {column}")
        if sql_type != "VARCHAR":
            typed.append(f"NULLIF(TRIM(CAST(\"{original}\" AS VARCHAR)), '') AS __raw_{column}")
            checked.append((column, sql_type))
    bad = [f"CASE WHEN __raw_{c} IS NOT NULL AND {c} IS NULL THEN __raw_{c} END AS __bad_{c}" for c, _ in checked]
    outer = ", ".join([*spec.columns, *bad])
    con.execute(
        f"CREATE OR REPLACE TABLE {spec.name} AS SELECT {outer} FROM (SELECT {', '.join(typed)} FROM {reader})"
    ).fetchall()
    if checked:
        exprs = ", ".join(f"count(__bad_{c}), min(__bad_{c})" for c, _ in checked)
        values = con.execute(f"SELECT {exprs} FROM {spec.name}").fetchall()[0]
        for i, (column, sql_type) in enumerate(checked):
            n_bad, example = values[2 * i], values[2 * i + 1]
            if n_bad:
                expected = (
                    f"a timestamp in one of the formats {TIMESTAMP_FORMATS}"
                    if sql_type == "TIMESTAMP" else f"a value of type {sql_type}"
                )
                raise SourceDataError(
                    f"{path}: column '{column}' has {n_bad} value(s) that are not {expected}; "
                    f"example: {example!r}. Was the file re-saved by a spreadsheet? "
                    "Restore the original export."
                )
        for column, _ in checked:
            con.execute(f"ALTER TABLE {spec.name} DROP COLUMN __bad_{column}").fetchall()
    return con.execute(f"SELECT count(*) FROM {spec.name}").fetchall()[0][0]


def _register_empty(con: duckdb.DuckDBPyConnection, spec: TableSpec) -> None:
    cols = ", ".join(f"CAST(NULL AS {t}) AS {c}" for c, t in spec.columns.items())
    con.execute(f"CREATE OR REPLACE VIEW {spec.name} AS SELECT {cols} WHERE false").fetchall()
