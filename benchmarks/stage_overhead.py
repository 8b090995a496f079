"""Fixed costs every model stage pays: the bootstrap's metric calls and the imports.

    python benchmarks/stage_overhead.py [--stays 772] [--resamples 1000] [--repeat 3]

1. Bootstrap metrics. `evaluate@MODEL` computes AUROC, AUPRC (and the model/oracle AUROC
   ratio: two AUROCs) on 1,000 patient resamples of the test split; explain and generate
   bootstrap AUROCs too. `metrics.auroc`/`auprc` read the curve points directly; sklearn's
   `roc_auc_score`/`average_precision_score` (what they called before) validate their
   input on every call. Prints seconds per 1,000 calls of each and the largest difference.
2. Imports. Each stage is a new process. Prints the CPU seconds of importing the modules
   every train/evaluate/explain stage imports (data, tasks, loop), in a fresh interpreter,
   against the same plus transformers, pycox and scikit-survival, which they imported
   before these load only where used (median of --repeat runs each).
"""
import argparse
import resource
import subprocess
import sys
import time

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score

from ehrseq import metrics

STAGE_IMPORTS = "import ehrseq.model_data, ehrseq.training, ehrseq.tasks, ehrseq.metrics"
# what the embeddings package and the survival metrics imported at the top before
HEAVY = ("from transformers import AutoConfig, AutoModel, AutoTokenizer; from pycox.evaluation import EvalSurv; "
         "from sksurv.linear_model import CoxnetSurvivalAnalysis; import sksurv.metrics, sksurv.nonparametric")


def per_1000_calls(fn, resamples) -> float:
    start = time.perf_counter()
    for y, p in resamples:
        fn(y, p)
    return (time.perf_counter() - start) / len(resamples) * 1000


def import_cpu_seconds(code: str) -> float:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run([sys.executable, "-c", code], check=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stays", type=int, default=772, help="test stays (the default test split has 772)")
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3, help="import measurements per variant")
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


if __name__ == "__main__":
    main()
