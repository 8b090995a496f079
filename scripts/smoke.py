"""Helpers of scripts/smoke.sh: apply the smoke overrides, compare a run with the baseline.

    python scripts/smoke.py apply-params OVERRIDES PARAMS   # deep-merge; an unknown key is an error
    python scripts/smoke.py compare BASELINE_DIR RUN_DIR     # exit 1 beyond tolerance

Tolerance, and why: every stage is seeded and CPU runs are bit-identical on one machine,
so on the machine that wrote the baseline every value matches exactly. Another CPU picks
other oneDNN/SIMD kernels; measured on the full default data that moves AUROC by about
0.002, and a few hundred patients trained one epoch amplify it. So:
- integers (stays, deaths, events, drops by reason) must match exactly: the data path is
  deterministic on any machine, and a changed count is a real change;
- floats must match within ABS_TOL + REL_TOL * |baseline|;
- run-time fields (seconds, rates per second, torch's thread count) and bootstrap
  resample counts are not compared.
A metric present in the baseline but missing from the run (or the reverse) is a failure:
a stage stopped reporting something, or a new one was added without updating the baseline.
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import yaml

ABS_TOL = 0.03
REL_TOL = 0.05
IGNORED = ("seconds", "per_second", "n_resamples", "texts_per_s", "cache_hits", "encoded", "torch_threads")


def apply_params(overrides_path: str, params_path: str) -> None:
    params = yaml.safe_load(Path(params_path).read_text())
    overrides = yaml.safe_load(Path(overrides_path).read_text())

    def merge(base: dict, new: dict, where: str) -> None:
        for key, value in new.items():
            if key not in base:
                raise SystemExit(f"{overrides_path}: {where}{key} is not a key of {params_path}")
            if isinstance(value, dict) and isinstance(base[key], dict):
                merge(base[key], value, f"{where}{key}.")
            else:
                base[key] = value

    merge(params, overrides, "")
    Path(params_path).write_text(yaml.safe_dump(params, sort_keys=False))


def leaves(data, prefix: str = ""):
    if isinstance(data, dict):
        for key, value in data.items():
            yield from leaves(value, f"{prefix}{key}.")
    elif isinstance(data, list):
        for i, value in enumerate(data):
            yield from leaves(value, f"{prefix}{i}.")
    else:
        yield prefix.rstrip("."), data


def comparable(metrics: dict) -> dict:
    """A metrics file's leaves by dotted key, less its run-time fields (IGNORED): what two
    runs of the same code and data must agree on."""
    return {key: value for key, value in leaves(metrics) if not any(word in key for word in IGNORED)}


def compare(baseline_dir: str, run_dir: str) -> int:
    problems, checked = [], 0
    baseline_files = sorted(Path(baseline_dir).glob("*.json"))
    if not baseline_files:
        print(f"smoke: no baseline metrics in {baseline_dir}; run `bash scripts/smoke.sh --update` and commit them")
        return 1
    run_names = {p.name for p in Path(run_dir).glob("*.json")}
    for extra in sorted(run_names - {p.name for p in baseline_files}):
        problems.append(f"{extra}: written by this run, absent from the baseline")
    for path in baseline_files:
        run_path = Path(run_dir) / path.name
        if not run_path.exists():
            problems.append(f"{path.name}: in the baseline, not written by this run")
            continue
        base = comparable(json.loads(path.read_text()))
        new = comparable(json.loads(run_path.read_text()))
        for key in sorted(set(base) | set(new)):
            if key not in new or key not in base:
                problems.append(f"{path.name}: {key} {'missing from the run' if key not in new else 'new in the run'}")
                continue
            b, n = base[key], new[key]
            checked += 1
            numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (b, n))
            if not numbers:
                if b != n:
                    problems.append(f"{path.name}: {key} {b!r} -> {n!r}")
            elif isinstance(b, int) and isinstance(n, int):
                if b != n:
                    problems.append(f"{path.name}: {key} {b} -> {n} (counts must match exactly)")
            elif not math.isclose(n, b, rel_tol=REL_TOL, abs_tol=ABS_TOL):
                problems.append(f"{path.name}: {key} {b:.6g} -> {n:.6g} (tolerance {ABS_TOL} + {REL_TOL} x |baseline|)")
    print(f"smoke: compared {checked} values of {len(baseline_files)} metrics files with the baseline")
    for line in problems:
        print(f"  FAIL {line}")
    return 1 if problems else 0


if __name__ == "__main__":
    command, *args = sys.argv[1:]
    if command == "apply-params":
        apply_params(*args)
    elif command == "compare":
        sys.exit(compare(*args))
    else:
        raise SystemExit(f"unknown command {command!r}; use apply-params or compare")
