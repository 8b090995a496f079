"""The benchmarks README quotes still run: each script on tiny inputs, as `python -P
benchmarks/NAME.py ...` from another folder, and prints the line its figures come from.

Nothing here times anything (speed is measured by running the scripts themselves, README
*Benchmarks*); these only catch a script left behind by a change of the library it calls,
which scripts/aopc_ceiling.py was until a test ran it. explain.py needs a trained model: it
runs in tests/test_training.py's test of the explain reference scripts. default_run.py (a
whole `dvc repro`) is left out: the smoke run exercises what it calls.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from conftest import run_python

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def benchmark(cwd: Path, name: str, *args: str) -> str:
    return run_python(cwd, REPO / "benchmarks" / name, *args, timeout=600).stdout


@pytest.mark.parametrize("args, line", [
    (("--stays", "64", "--batches", "2", "--models", "lstm", "transformer", "gpt2", "--threads", "1"),
     r"gpt2\s+bucketed\s+attn drop 0\s+\d+\s+[\d.]+x"),
    (("--stays", "64", "--batches", "2", "--models", "survival_lstm", "--threads", "1"),
     r"survival_lstm\s+bucketed\s+packed\s+\d+\s+[\d.]+x"),
])
def test_train_benchmark(tmp_path, args, line):
    assert re.search(line, benchmark(tmp_path, "train.py", *args))


def test_extract_and_vocab_tokenize_benchmarks(tmp_path):
    out = benchmark(tmp_path, "extract.py", "--patients", "300", "--data-dir", str(tmp_path / "raw"),
                    "--memory-limit", "1GB", "--impl", "duckdb", "pandas", "same", "--keep", str(tmp_path / "out"))
    events = {impl: int(n.replace(",", "")) for impl, n in re.findall(r"^\s+300 (\w+) .* ([\d,]+)$", out, re.M)}
    assert set(events) == {"duckdb", "pandas", "same"} and events["same"] == events["pandas"] > 0
    out = benchmark(tmp_path, "vocab_tokenize.py", "--interim", str(tmp_path / "out" / "300"), "--baseline", "none")
    assert re.search(r"tokenize\s+this tree\s+[\d.]+\s+[\d.]+\s+[\d.]+", out)


@pytest.mark.parametrize("name, args, line", [
    ("embed.py", ("--synthetic", "200", "--sample", "32", "--repeat", "1"), r"warm/cold speedup [\d,]+x"),
    ("med2vec.py", ("--steps", "2", "--repeat", "1", "--vocab", "200"), r"speed-up matrix / rows: [\d.]+x"),
    ("stage_overhead.py", ("--repeat", "1", "--stays", "100", "--resamples", "20"),
     r"AUROC\s+[\d.]+\s+[\d.]+\s+[\d.]+x"),
    ("synthesize.py", ("300",), r'"n_patients": 300, "seconds"'),
])
def test_benchmark_prints_its_ratio(tmp_path, name, args, line):
    assert re.search(line, benchmark(tmp_path, name, *args))
