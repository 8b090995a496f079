"""The extract stage's outputs pinned to a committed reference: same rows, same order, same counts.

Speed work on the extraction SQL (issue 15) must change how the result is computed, never
the result. tests/data/extract_reference.json holds, for the MIMIC-III demo and for a
300-patient synthetic run, a fingerprint of every file the stage writes
(data/interim/events.parquet, cohort.parquet, diagnoses.parquet, truth/*.parquet: row
count, column types and a SHA-256 over the per-row hashes in row order, so a reordered,
added, lost or altered row changes it) and the full extract.json counts (`seconds` aside).
The reference was produced by the extraction of commit 5e3212a, before the speed work.

The trap: a fingerprint cannot say which row differs. When this fails, diff the outputs of
both commits (`python tests/test_extract_reference.py OUT` writes them to OUT and prints
the fingerprint); only regenerate the reference (`--write`) for an intended change of the
output, and say why in the commit.
"""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import pandas as pd
import pytest

from conftest import DEMO
from ehrseq.sources.extract import extract
from ehrseq.sources.truth import export_truth

REFERENCE = Path(__file__).parent / "data" / "extract_reference.json"
SPLIT = {"train": 0.7, "val": 0.15, "test": 0.15}
# name -> (data.source, how to get the source folder)
CASES = {"mimic3_demo": "mimic3", "synthetic_300_seed1": "synthetic"}


def source_folder(case: str, scratch: Path) -> Path:
    if case == "mimic3_demo":
        if not DEMO.is_dir():
            pytest.skip(f"MIMIC-III demo not found at {DEMO}")
        return DEMO
    from ehrseq.sources.synthetic import generate

    generate(scratch / "raw", n_patients=300, seed=1)
    return scratch / "raw"


def run_stage(source: str, path: Path, out: Path, threads: int) -> dict:
    """What stages/extract.py does with the default cohort params, into `out`."""
    metrics = extract(source, path, out / "events.parquet", out / "cohort.parquet", out / "diagnoses.parquet",
                      observation_hours=48, min_age=18, split_fractions=SPLIT, seed=0, threads=threads)
    metrics["truth"] = export_truth(source, path, out / "events.parquet", out / "truth", out / "diagnoses.parquet")
    return metrics


def fingerprint(out: Path, metrics: dict) -> dict:
    files = {}
    for path in sorted(out.rglob("*.parquet")):
        df = pd.read_parquet(path)
        row_hashes = pd.util.hash_pandas_object(df, index=False).to_numpy()  # [rows], order-sensitive digest
        files[str(path.relative_to(out))] = {
            "rows": len(df),
            "columns": {c: str(t) for c, t in df.dtypes.items()},
            "sha256": hashlib.sha256(row_hashes.tobytes()).hexdigest(),
        }
    return {"files": files, "metrics": json.loads(json.dumps(metrics))}


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("case", list(CASES))
def test_outputs_match_the_reference(case, threads, tmp_path):
    want = json.loads(REFERENCE.read_text())[case]
    path = source_folder(case, tmp_path)
    got = fingerprint(tmp_path / "out", run_stage(CASES[case], path, tmp_path / "out", threads))
    assert got["metrics"] == want["metrics"]
    assert sorted(got["files"]) == sorted(want["files"])
    for name, expected in want["files"].items():
        assert got["files"][name] == expected, name


if __name__ == "__main__":  # python tests/test_extract_reference.py OUT [--write]
    import tempfile

    root = Path(sys.argv[1])
    result = {}
    for case, source in CASES.items():
        with tempfile.TemporaryDirectory() as tmp:
            path = source_folder(case, Path(tmp))
            result[case] = fingerprint(root / case, run_stage(source, path, root / case, threads=2))
    print(json.dumps({c: r["files"] for c, r in result.items()}, indent=1))
    if "--write" in sys.argv:
        REFERENCE.write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
