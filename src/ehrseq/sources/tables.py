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
    con: duckdb.DuckDBPyConnection, root: str | Path, specs: list[TableSpec]
) -> dict[str, dict]:
    """Load one typed temp table per table found under `root`; validate its columns.

    Returns per table: the file read (or None when missing) and the number of rows.
    A missing required table or column, or a value that does not parse as its type,
    raises SourceDataError. A missing optional table becomes an empty view and a warning.
    """
    root = Path(root)
    if not root.is_dir():
        raise SourceDataError(f"source folder {root} does not exist")
    report: dict[str, dict] = {}
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
            continue
        reader = _reader(path)
        described = con.execute(f"DESCRIBE SELECT * FROM {reader}").fetchall()
        actual = {row[0].lower(): (row[0], row[1]) for row in described}
        rows = _load_table(con, spec, path, reader, actual)
        log.info("read %s: %d rows", path, rows)
        report[spec.name] = {"file": str(path), "rows": rows}
    return report


def _load_table(con, spec: TableSpec, path: Path, reader: str, actual: dict) -> int:
    """Read the file ONCE into a typed table, checking every value on the way.

    A view over a gzipped CSV would be decompressed and parsed again by every query
    that touches it (validation, row count, each join). The connection's database is a
    scratch file (see `extract`), so the table is stored compressed on disk and memory
    stays under DuckDB's `memory_limit`. Each typed column that is not VARCHAR gets a
    `__bad_<column>` twin holding the raw text wherever parsing failed; the twins are
    checked and dropped before anyone reads the table.
    """
    typed, checked = [], []
    for column, sql_type in spec.columns.items():
        if column not in actual:
            if column in spec.optional_columns:
                typed.append(f"CAST(NULL AS {sql_type}) AS {column}")
                continue
            raise SourceDataError(
                f"{path}: column '{column}' is missing (columns present: {', '.join(sorted(actual))})"
            )
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
