"""Fixed costs every model stage pays: the bootstrap's metric calls and the imports.

    python benchmarks/stage_overhead.py [--stays 772] [--resamples 1000] [--repeat 3] [--against TREE]

1. Bootstrap metrics. `evaluate@MODEL` computes AUROC, AUPRC (and the model/oracle AUROC
   ratio: two AUROCs) on 1,000 patient resamples of the test split; explain and generate
   bootstrap AUROCs too. `metrics.auroc`/`auprc` read the curve points directly; sklearn's
   `roc_auc_score`/`average_precision_score` (what they called before) validate their
   input on every call. Prints seconds per 1,000 calls of each and the largest difference.
2. Imports. Each stage is a new process. Prints the CPU seconds of importing the modules
   every train/evaluate/explain stage imports (data, tasks, loop), in a fresh interpreter,
   against the same plus transformers, pycox and scikit-survival, which they imported
   before these load only where used (median of --repeat runs each).
3. With --against TREE (another checkout, e.g. /work/main): the CPU seconds of importing
   each stage module (`stages/NAME.py` as DVC runs it, `python -P`, without calling
   `main()`) in a fresh interpreter, this tree's against TREE's (each with its own `src`
   first on the path; median of --repeat runs), and over one `dvc repro`: each script
   times the stages of this tree's dvc.yaml that run it (train: one per model).
"""
import argparse
import os
import re
import resource
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import yaml
from sklearn.metrics import average_precision_score, roc_auc_score

from ehrseq import metrics

STAGE_IMPORTS = "import ehrseq.model_data, ehrseq.training, ehrseq.tasks, ehrseq.metrics"
# what the embeddings package and the survival metrics imported at the top before
HEAVY = ("from transformers import AutoConfig, AutoModel, AutoTokenizer; from pycox.evaluation import EvalSurv; "
         "from sksurv.linear_model import CoxnetSurvivalAnalysis; import sksurv.metrics, sksurv.nonparametric")
ROOT = Path(__file__).resolve().parents[1]
STAGE_IMPORT = ("import importlib.util; spec = importlib.util.spec_from_file_location('stage', 'stages/{}.py'); "
                "spec.loader.exec_module(importlib.util.module_from_spec(spec))")


def per_1000_calls(fn, resamples) -> float:
    start = time.perf_counter()
    for y, p in resamples:
        fn(y, p)
    return (time.perf_counter() - start) / len(resamples) * 1000


def import_cpu_seconds(code: str, tree: Path | None = None) -> float:
    """CPU seconds of `python -P -c code`; in `tree` with its `src` first on the path, if given."""
    env = {**os.environ, "PYTHONPATH": str(tree / "src")} if tree else None
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run([sys.executable, "-P", "-c", code], check=True, cwd=tree, env=env)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)


def stage_runs(tree: Path) -> Counter:
    """stages/NAME.py's NAME -> how many stages of the tree's dvc.yaml run it (a `foreach`: one per item)."""
    dvc = yaml.safe_load((tree / "dvc.yaml").read_text())
    lists = {key: value for entry in dvc["vars"] if isinstance(entry, dict) for key, value in entry.items()}
    runs = Counter()
    for stage in dvc["stages"].values():
        script = re.search(r"stages/(\w+)\.py", stage.get("do", stage)["cmd"]).group(1)
        runs[script] += len(lists[stage["foreach"].strip("${}")]) if "foreach" in stage else 1
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stays", type=int, default=772, help="test stays (the default test split has 772)")
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3, help="import measurements per variant")
    parser.add_argument("--against", type=Path, help="another tree: each stage module's imports in both")
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    y = (rng.random(args.stays) < 0.13).astype(int)
    p = np.round(np.clip(0.1 + 0.3 * y + rng.normal(0, 0.2, args.stays), 0, 1), 3)  # rounded: ties
    idx = [rng.integers(0, args.stays, args.stays) for _ in range(args.resamples)]
    resamples = [(y[i], p[i]) for i in idx]
    print(f"bootstrap metrics: {args.resamples} resamples of {args.stays} stays")
    print(f"{'metric':<8} {'ehrseq ms/call':>15} {'sklearn ms/call':>16} {'ratio':>7} {'max |diff|':>11}")
    for name, ours, theirs in (("AUROC", metrics.auroc, roc_auc_score),
                               ("AUPRC", metrics.auprc, average_precision_score)):
        t_ours, t_theirs = per_1000_calls(ours, resamples), per_1000_calls(theirs, resamples)
        diff = max(abs(ours(a, b) - theirs(a, b)) for a, b in resamples)
        print(f"{name:<8} {t_ours:>15.3f} {t_theirs:>16.3f} {t_theirs / t_ours:>6.1f}x {diff:>11.1e}")

    print(f"\nimports of a model stage, CPU seconds in a fresh interpreter (median of {args.repeat})")
    now = np.median([import_cpu_seconds(STAGE_IMPORTS) for _ in range(args.repeat)])
    before = np.median([import_cpu_seconds(f"{STAGE_IMPORTS}; {HEAVY}") for _ in range(args.repeat)])
    print(f"now (heavy libraries where used): {now:.2f} s; with transformers, pycox, sksurv as before: "
          f"{before:.2f} s; {before - now:.2f} s saved per stage ({before / now:.2f}x)")
    if args.against:
        compare_stage_imports(args.against.resolve(), args.repeat)


def compare_stage_imports(other: Path, repeat: int) -> None:
    print(f"\nimporting each stage module, CPU seconds in a fresh interpreter (median of {repeat}):"
          f"\nthis tree {ROOT} against {other}")
    print(f"{'stage':<17} {'runs':>4} {'this tree':>10} {'against':>8} {'ratio':>6}")
    runs = stage_runs(ROOT)
    totals = np.zeros(2)
    for name in sorted(runs):
        seconds = np.array([np.median([import_cpu_seconds(STAGE_IMPORT.format(name), tree) for _ in range(repeat)])
                            for tree in (ROOT, other)])
        totals += runs[name] * seconds
        print(f"{name:<17} {runs[name]:>4} {seconds[0]:>10.2f} {seconds[1]:>8.2f} {seconds[1] / seconds[0]:>5.2f}x")
    print(f"one dvc repro ({sum(runs.values())} stages): {totals[0]:.1f} s against {totals[1]:.1f} s, "
          f"{totals[1] - totals[0]:.1f} s saved ({totals[1] / totals[0]:.2f}x)")


if __name__ == "__main__":
    main()
