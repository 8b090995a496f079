"""Where the time of a whole `dvc repro` goes, under the default params or a profile of overrides.

    python benchmarks/default_run.py [--params OVERRIDES.yaml] [--keep DIR] [STAGE ...]

Copies this tree (tracked and untracked, not ignored, files, as scripts/smoke.sh does) to a
temporary folder, applies OVERRIDES to its params.yaml (`scripts/smoke.py apply-params`:
unknown keys are an error), runs `dvc repro` there from scratch (of the STAGEs and what they
need, if named; else of everything) and prints:
- the wall seconds of the whole run;
- the stages' own seconds (every metrics file's `seconds`, as the report's run-cost table),
  summed by part: training, explain, evaluate, generate, the rest;
- what lies outside the stages' clocks: process starts, imports, DVC's hashing and lock;
- each mortality model's test AUROC [95% interval] and model/oracle ratio beside this tree's
  committed ones (reports/metrics/), since a cheaper profile is worth only what it keeps.

The embedding cache is the machine's (embed.cache_dir: null), so embed is warm if any run of
this machine has encoded the texts; pass `--params` a file setting `embed: {cache_dir: ...}`
to an empty folder for a cold run. Run it on an otherwise idle machine: two torch threads
collapse when another process holds a core (see README, Benchmarks).
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ehrseq.report import cost_row, load_metrics

ROOT = Path(__file__).resolve().parents[1]
MORTALITY = ("lstm", "transformer", "gpt2", "clinical_lf", "logreg")
PARTS = (("training", ("train@", "train_med2vec")), ("explain", ("explain",)),
         ("evaluate", ("evaluate",)), ("generate", ("generate",)))


def part_of(stage: str) -> str:
    return next((part for part, prefixes in PARTS if stage.startswith(prefixes)), "other stages")


def interval(entry) -> str:
    if not isinstance(entry, dict) or entry.get("value") is None:
        return "n/a"
    return f"{entry['value']:.3f} [{entry['ci_low']:.3f}, {entry['ci_high']:.3f}]"


def auroc_cell(metrics: dict) -> str:
    return f"{interval(metrics.get('auroc'))}, / oracle {interval(metrics.get('auroc_vs_oracle'))}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", help="YAML overrides of params.yaml (shaped like it, only the keys changed)")
    parser.add_argument("--keep", help="run in this folder and keep it (default: a temporary one, removed)")
    parser.add_argument("stages", nargs="*", help="dvc repro only these stages and their upstream (default: all)")
    args = parser.parse_args()

    work = Path(args.keep or tempfile.mkdtemp(prefix="ehrseq-run-"))
    work.mkdir(parents=True, exist_ok=True)
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, check=True,
                           capture_output=True).stdout.decode().split("\0")
    for name in filter(None, files):
        if (ROOT / name).is_file():
            (work / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, work / name)
    shutil.rmtree(work / "reports" / "metrics", ignore_errors=True)  # the committed run's, not this one's
    if args.params:
        subprocess.run([sys.executable, str(ROOT / "scripts" / "smoke.py"), "apply-params",
                        str(Path(args.params).resolve()), "params.yaml"], cwd=work, check=True)
    env = {**os.environ, "PYTHONPATH": str(work / "src")}  # the copy's code, whatever the venv points at
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"],
                ["git", "-c", "user.name=bench", "-c", "user.email=bench@localhost", "commit", "-qm", "run"]):
        subprocess.run(cmd, cwd=work, check=True, env=env)
    start = time.time()
    subprocess.run(["dvc", "repro", *args.stages], cwd=work, check=True, env=env)
    wall = time.time() - start

    metrics = load_metrics(work / "reports" / "metrics")
    by_part: dict[str, float] = {}
    for name, m in metrics.items():
        if (row := cost_row(name, m)) is not None:  # [stage, whole seconds, parts]
            by_part[part_of(row[0])] = by_part.get(part_of(row[0]), 0.0) + float(row[1])
    inside = sum(by_part.values())
    print(f"\n`dvc repro {' '.join(args.stages) or '(every stage)'}`{' under ' + args.params if args.params else ''}: "
          f"{wall:.0f} s wall ({wall / 60:.1f} min)")
    for part, seconds in sorted(by_part.items(), key=lambda kv: -kv[1]):
        print(f"  {part:<14} {seconds:7.0f} s")
    print(f"  {'stages, all':<14} {inside:7.0f} s\n  {'outside them':<14} {wall - inside:7.0f} s "
          "(process starts, imports, DVC)")
    committed = load_metrics(ROOT / "reports" / "metrics")
    print("\ntest AUROC [95% CI], / oracle [95% CI]: this run | committed run")
    for model in MORTALITY:
        if model in metrics:
            print(f"  {model:<12} {auroc_cell(metrics[model])} | {auroc_cell(committed.get(model, {}))}")
    if not args.keep:
        shutil.rmtree(work)
    else:
        print(f"\noutputs kept in {work}")
    json.dump({"wall_seconds": round(wall, 1), "stage_seconds_by_part": by_part}, sys.stdout)
    print()


if __name__ == "__main__":
    main()
