"""The vocab and tokenize stages, this tree against an earlier commit, on the same extraction.

    python benchmarks/vocab_tokenize.py --interim data/interim                  # the default data, vs main
    python benchmarks/vocab_tokenize.py --interim /tmp/x300k --baseline none    # this tree only (MIMIC-IV size)

`--interim` is a folder with extract's events.parquet, cohort.parquet and diagnoses.parquet.
Each stage runs as its own process (`python -P stages/STAGE.py`, with the params.yaml of
the tree that runs) in a temporary workspace whose data/interim links to that folder, so
wall time, CPU time (all threads) and peak RSS are the stage's own. The outputs of both
trees are compared byte for byte. Wall time on a shared machine depends on the load; CPU
seconds are printed beside it.
"""
from __future__ import annotations

import argparse
import filecmp
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STAGES = ("vocab", "tokenize")


def tree_at(revision: str, into: Path) -> Path:
    """src/, stages/ and params.yaml of `revision`, extracted into `into`."""
    archive = subprocess.run(["git", "-C", str(REPO), "archive", revision, "src", "stages", "params.yaml"],
                             capture_output=True, check=True).stdout
    into.mkdir(parents=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def run_stage(tree: Path, stage: str, workspace: Path) -> dict:
    """One stage of `tree` in `workspace`: wall s, CPU s and peak RSS of its process. Called
    in a fresh process per stage (main), so the children's peak RSS is this stage's."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-P", str(tree / "stages" / f"{stage}.py")], cwd=workspace, check=True,
                   env={"PYTHONPATH": str(tree / "src"), "PATH": "/usr/bin:/bin"}, capture_output=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return {"seconds": time.perf_counter() - start, "cpu_seconds": cpu, "peak_rss_gb": after.ru_maxrss / 2**20}


def workspace_for(tree: Path, interim: Path, root: Path) -> Path:
    ws = root / "ws"
    (ws / "data").mkdir(parents=True)
    (ws / "data" / "interim").symlink_to(interim.resolve())
    shutil.copy(tree / "params.yaml", ws / "params.yaml")
    return ws


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--interim", type=Path, default=REPO / "data" / "interim")
    parser.add_argument("--baseline", default="main", help="git revision to compare with, or 'none'")
    parser.add_argument("--measure", nargs=3, metavar=("TREE", "STAGE", "WORKSPACE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(run_stage(Path(args.measure[0]), args.measure[1], Path(args.measure[2]))))
        return
    with tempfile.TemporaryDirectory() as tmp:
        trees = {"this tree": REPO}
        if args.baseline != "none":
            trees[args.baseline] = tree_at(args.baseline, Path(tmp) / "baseline")
        results, outputs = {}, {}
        for name, tree in trees.items():
            ws = workspace_for(tree, args.interim, Path(tmp) / name.replace(" ", "_"))
            for stage in STAGES:
                proc = subprocess.run([sys.executable, __file__, "--measure", str(tree), stage, str(ws)],
                                      capture_output=True, text=True, check=True)
                results[name, stage] = json.loads(proc.stdout.strip().splitlines()[-1])
                print(f"{name}, {stage}: {results[name, stage]}", flush=True)
            outputs[name] = ws / "data" / "processed"
        print(f"\n{'stage':9} {'tree':12} {'wall s':>8} {'cpu s':>8} {'peak RSS GB':>12}")
        for (name, stage), r in results.items():
            print(f"{stage:9} {name:12} {r['seconds']:8.1f} {r['cpu_seconds']:8.1f} {r['peak_rss_gb']:12.2f}")
        if len(trees) == 2:
            new, old = trees
            for stage in STAGES:
                a, b = results[new, stage], results[old, stage]
                print(f"{stage}: {b['seconds'] / a['seconds']:.2f}x wall, "
                      f"{b['cpu_seconds'] / a['cpu_seconds']:.2f}x CPU faster than {old}")
            files = sorted(p.relative_to(outputs[new]) for p in outputs[new].rglob("*") if p.is_file())
            differ = [str(f) for f in files if not filecmp.cmp(outputs[new] / f, outputs[old] / f, shallow=False)]
            verdict = "all identical" if not differ else "DIFFERENT: " + ", ".join(differ)
            print(f"outputs: {len(files)} files, {verdict}")


if __name__ == "__main__":
    main()
