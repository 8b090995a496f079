"""Extraction throughput, peak memory and scratch disk: DuckDB SQL vs a straightforward pandas version.

    python benchmarks/extract.py                           # 10,000 and 100,000 synthetic patients
    python benchmarks/extract.py --patients 2000
    python benchmarks/extract.py --data-dir /tmp/bench     # keep the generated data for the next run
    python benchmarks/extract.py --memory-limit 4GB        # DuckDB's memory_limit (data.memory_limit)
    python benchmarks/extract.py --patients 300000 --impl duckdb --keep OUT   # DuckDB's outputs kept in OUT
    python benchmarks/extract.py --impl read pandas       # the floor: DuckDB only reading the files
    python benchmarks/extract.py --impl same pandas       # equal work: the pandas reference's, in DuckDB SQL

Each measurement runs in a fresh subprocess so its peak RSS and CPU time are its own.
The pandas version does the same work the SQL does for the event tables (read, parse
times, attach labs/microbiology to stays by subject and time window, the others by stay
or admission, keep cohort stays, drop duplicates), without the bad-input checks, the
withholding of late values, the texts and the cohort/diagnoses outputs; `same` does
exactly its work in DuckDB SQL (the same events, kind by kind). Wall time on a shared
machine depends on the load; CPU seconds (all threads) are printed beside it. Scratch
disk is the peak size of the outputs and DuckDB's spill files, polled every 0.2 s.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

SPLIT = {"train": 0.7, "val": 0.15, "test": 0.15}


def run_duckdb(src: str, out: str, memory_limit: str) -> dict:
    from ehrseq.sources.extract import extract

    m = extract("synthetic", src, f"{out}/events.parquet", f"{out}/cohort.parquet", f"{out}/diagnoses.parquet",
                observation_hours=48, min_age=18, split_fractions=SPLIT, seed=0, threads=2, memory_limit=memory_limit)
    return {"events": m["events"]["kept_total"], "rows_read": sum(m["tables_read"].values())}


def run_read(src: str, out: str, memory_limit: str) -> dict:
    """Only what every DuckDB extraction pays first: reading and typing the source files into
    extract's scratch database, two files at a time (`register_tables`, as `extract` calls it)."""
    from ehrseq.sources.extract import SOURCES, scratch_database
    from ehrseq.sources.tables import register_tables

    with scratch_database(out, threads=2, memory_limit=memory_limit) as con:
        tables = register_tables(con, src, SOURCES["synthetic"].TABLES, workers=2)
    return {"events": 0, "rows_read": sum(t["rows"] for t in tables.values())}


def run_pandas(src: str, out: str, memory_limit: str) -> dict:  # no memory limit: pandas has none
    import pandas as pd

    root = Path(src)
    read = lambda stem, cols, times: pd.read_csv(root / f"{stem}.csv.gz", usecols=cols, parse_dates=times)
    rows_read = 0
    stays = read("icu/icustays", ["subject_id", "hadm_id", "stay_id", "intime", "outtime"], ["intime", "outtime"])
    adm = read("hosp/admissions", ["hadm_id", "deathtime"], ["deathtime"])
    pat = read("hosp/patients", ["subject_id", "anchor_age", "anchor_year"], [])
    rows_read += len(stays) + len(adm) + len(pat)
    stays = stays.merge(adm, on="hadm_id").merge(pat, on="subject_id")
    stays["age"] = stays["anchor_age"] + stays["intime"].dt.year - stays["anchor_year"]
    stays["cutoff"] = stays["intime"] + pd.Timedelta(hours=48)
    cohort = stays[(stays["age"] >= 18) & (stays["outtime"] >= stays["cutoff"])
                   & ~(stays["deathtime"] < stays["cutoff"])]
    window = cohort[["subject_id", "hadm_id", "stay_id", "intime", "outtime", "cutoff"]]

    def by_window(df):  # labs/micro: subject + time within the stay
        m = df.merge(window.drop(columns="hadm_id"), on="subject_id")
        return m[(m["time"] >= m["intime"]) & (m["time"] <= m["outtime"])]

    def by_stay(df):
        m = df.merge(window.drop(columns=["subject_id", "hadm_id"]), on="stay_id")
        return m[(m["time"] >= m["intime"]) & (m["time"] <= m["outtime"])]

    parts = []
    labs = read("hosp/labevents", ["subject_id", "itemid", "charttime", "valuenum"], ["charttime"])
    rows_read += len(labs)
    labs = labs.rename(columns={"charttime": "time", "valuenum": "value"})
    parts.append(by_window(labs.assign(code="LAB//" + labs["itemid"].astype(str))))
    micro = read("hosp/microbiologyevents", ["subject_id", "charttime", "spec_itemid", "org_itemid"], ["charttime"])
    rows_read += len(micro)
    micro = micro.drop_duplicates().rename(columns={"charttime": "time"})
    parts.append(by_window(micro.assign(
        # most cultures grow no organism: a missing org_itemid must still spell a code (astype(str)
        # keeps it missing, and the missing codes of a stay and time would collapse into one event)
        code="MICRO//" + micro["spec_itemid"].astype(str) + "//"
        + micro["org_itemid"].astype("Int64").astype(str).fillna(""))))
    rx = read("hosp/prescriptions", ["hadm_id", "starttime", "ndc"], ["starttime"])
    rows_read += len(rx)
    m = rx.rename(columns={"starttime": "time"}).merge(window.drop(columns="subject_id"), on="hadm_id")
    m = m[(m["time"] >= m["intime"]) & (m["time"] <= m["outtime"])]
    parts.append(m.assign(code="NDC//" + m["ndc"].astype(str)))
    for stem, amount in (("icu/procedureevents", "value"), ("icu/ingredientevents", "amount")):
        df = read(stem, ["stay_id", "starttime", "itemid", amount], ["starttime"])
        rows_read += len(df)
        df = df.rename(columns={"starttime": "time", amount: "value"})
        parts.append(by_stay(df.assign(code="ITEM//" + df["itemid"].astype(str))))
    events = pd.concat([p[["stay_id", "time", "code"] + (["value"] if "value" in p else [])] for p in parts])
    events = events.drop_duplicates().sort_values(["stay_id", "time", "code"])
    events.to_parquet(f"{out}/events.parquet")
    return {"events": len(events), "rows_read": rows_read}


def run_duckdb_same(src: str, out: str, memory_limit: str) -> dict:
    """The pandas reference's work, no more, in DuckDB SQL: the same columns of the same
    files, the same cohort rule and joins, DISTINCT and one sort. It tells the engine's
    speed on equal work apart from what `extract` does beyond the reference."""
    import duckdb

    con = duckdb.connect(config={"threads": 2, "memory_limit": memory_limit, "temp_directory": f"{out}/spill"})
    csv = lambda stem: f"read_csv('{src}/{stem}.csv.gz')"  # noqa: E731
    con.execute(f"""
        CREATE TEMP TABLE win AS
        SELECT s.subject_id, s.hadm_id, s.stay_id, s.intime, s.outtime
        FROM {csv("icu/icustays")} s JOIN {csv("hosp/admissions")} a ON a.hadm_id = s.hadm_id
             JOIN {csv("hosp/patients")} p ON p.subject_id = s.subject_id
        WHERE p.anchor_age + year(s.intime) - p.anchor_year >= 18 AND s.outtime >= s.intime + INTERVAL 48 HOUR
          AND NOT coalesce(a.deathtime < s.intime + INTERVAL 48 HOUR, false)""")

    def part(select: str, source: str, key: str, time: str) -> str:  # events inside a cohort stay
        return (f"SELECT w.stay_id, e.{time} AS time, {select} FROM {source} e JOIN win w ON e.{key} = w.{key} "
                f"WHERE e.{time} BETWEEN w.intime AND w.outtime")

    micro = f"(SELECT DISTINCT subject_id, charttime, spec_itemid, org_itemid FROM {csv('hosp/microbiologyevents')})"
    parts = [
        part("'LAB//' || e.itemid AS code, e.valuenum AS value", csv("hosp/labevents"), "subject_id", "charttime"),
        part("concat('MICRO//', e.spec_itemid, '//', e.org_itemid), NULL", micro, "subject_id", "charttime"),
        part("'NDC//' || e.ndc, NULL", csv("hosp/prescriptions"), "hadm_id", "starttime"),
        part("'ITEM//' || e.itemid, e.value", csv("icu/procedureevents"), "stay_id", "starttime"),
        part("'ITEM//' || e.itemid, e.amount", csv("icu/ingredientevents"), "stay_id", "starttime"),
    ]
    con.execute(f"COPY (SELECT DISTINCT * FROM ({' UNION ALL '.join(parts)}) ORDER BY stay_id, time, code) "
                f"TO '{out}/events.parquet' (FORMAT parquet)")
    events = con.execute(f"SELECT count(*) FROM '{out}/events.parquet'").fetchall()[0][0]
    return {"events": events, "rows_read": None}  # read inside the joins: not counted apart


def _tree_bytes(root: Path) -> int:
    total = 0
    for p in root.rglob("*"):
        try:
            total += p.stat().st_size if p.is_file() else 0
        except FileNotFoundError:  # a spill file removed while we walk
            pass
    return total


IMPLS = {"duckdb": run_duckdb, "read": run_read, "pandas": run_pandas, "same": run_duckdb_same}


def measure(impl: str, src: str, memory_limit: str, keep: str = "") -> dict:
    """Run one implementation in this process (called in a subprocess by main); `keep`: write
    the outputs there and leave them (for the later stages), else into a temporary folder."""
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
    with (contextlib.nullcontext(keep) if keep else tempfile.TemporaryDirectory(dir=Path(src).parent)) as out:
        peak = [0]
        done = threading.Event()

        def poll() -> None:  # outputs and spill files all live under `out`
            while not done.wait(0.2):
                peak[0] = max(peak[0], _tree_bytes(Path(out)))

        watcher = threading.Thread(target=poll, daemon=True)
        watcher.start()
        start = time.perf_counter()
        result = IMPLS[impl](src, out, memory_limit)
        result["seconds"] = time.perf_counter() - start
        done.set()
        watcher.join()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    result["cpu_seconds"] = usage.ru_utime + usage.ru_stime
    result["peak_rss_mb"] = usage.ru_maxrss / 1024
    result["peak_disk_mb"] = peak[0] / 2**20
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--patients", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--data-dir", type=Path,
                        help="generate into (and reuse from) DIR/synthetic_<n> instead of a temp dir")
    parser.add_argument("--memory-limit", default="8GB", help="DuckDB memory_limit (default: params.yaml's 8GB)")
    parser.add_argument("--impl", nargs="+", default=["duckdb", "pandas"], choices=list(IMPLS),
                        help="read: DuckDB reading the source files only, the floor of any DuckDB extraction; "
                             "same: the pandas reference's work in DuckDB SQL")
    parser.add_argument("--keep", type=Path,
                        help="DuckDB writes events/cohort/diagnoses.parquet into KEEP/<n> and leaves them there")
    parser.add_argument("--measure", nargs=4, metavar=("IMPL", "SRC", "MEMORY_LIMIT", "KEEP"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(*args.measure)))
        return
    from ehrseq.sources.synthetic import generate

    rows = []
    for n in args.patients:
        with tempfile.TemporaryDirectory() as tmp:
            src = (args.data_dir or Path(tmp)) / f"synthetic_{n}"
            if not (src / "icu" / "icustays.csv.gz").exists():
                t = time.perf_counter()
                generate(src, n_patients=n, seed=0)
                print(f"generated {n:,} patients in {time.perf_counter() - t:.0f} s", flush=True)
            input_mb = sum(p.stat().st_size for p in src.rglob("*.csv.gz") if "truth" not in p.parts) / 2**20
            results = {}
            for impl in args.impl:
                keep = str(args.keep / str(n)) if args.keep and impl == "duckdb" else ""
                proc = subprocess.run([sys.executable, __file__, "--measure", impl, str(src), args.memory_limit, keep],
                                      capture_output=True, text=True, check=True)
                results[impl] = json.loads(proc.stdout.strip().splitlines()[-1])
                print(f"{n:,} patients, {impl}: {json.dumps(results[impl])}", flush=True)
            rows.append((n, input_mb, results))

    print(f"\nDuckDB memory_limit {args.memory_limit}")
    print(f"{'patients':>9} {'impl':7} {'wall s':>8} {'cpu s':>7} {'source rows/s':>14} {'peak RSS MB':>12} "
          f"{'peak disk MB':>13} {'csv.gz MB':>10} {'events':>11}")
    for n, input_mb, results in rows:
        for impl, r in results.items():
            rate = f"{r['rows_read'] / r['seconds']:14,.0f}" if r["rows_read"] else f"{'-':>14}"
            print(f"{n:>9,} {impl:7} {r['seconds']:8.1f} {r['cpu_seconds']:7.1f} {rate} "
                  f"{r['peak_rss_mb']:12,.0f} {r['peak_disk_mb']:13,.0f} {input_mb:10,.0f} {r['events']:11,}")
        if "read" in results and "pandas" in results:
            r, p = results["read"], results["pandas"]
            print(f"{'':>9} reading alone: {r['seconds'] / p['seconds']:.0%} of pandas' whole run (wall), "
                  f"{r['cpu_seconds'] / p['cpu_seconds']:.0%} of its CPU; a 2x faster extraction has "
                  f"{p['seconds'] / 2 - r['seconds']:.1f} s wall left after reading")
        if "same" in results and "pandas" in results:
            s, p = results["same"], results["pandas"]
            print(f"{'':>9} the reference's work, DuckDB vs pandas: {p['seconds'] / s['seconds']:.2f}x faster (wall), "
                  f"{p['cpu_seconds'] / s['cpu_seconds']:.2f}x less CPU, {p['peak_rss_mb'] / s['peak_rss_mb']:.2f}x "
                  f"less peak RSS; {s['events']:,} events against pandas' {p['events']:,}")
        if "duckdb" not in results or "pandas" not in results:
            continue
        d, p = results["duckdb"], results["pandas"]
        print(f"{'':>9} duckdb vs pandas: {p['seconds'] / d['seconds']:.2f}x faster (wall), "
              f"{p['cpu_seconds'] / d['cpu_seconds']:.2f}x less CPU, {p['peak_rss_mb'] / d['peak_rss_mb']:.2f}x less "
              f"peak RSS; duckdb scratch+outputs at the peak {d['peak_disk_mb'] / input_mb:.1f}x the csv.gz input")


if __name__ == "__main__":
    main()
