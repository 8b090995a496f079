"""How much do the headline numbers move with the training seed alone?

    python scripts/seed_spread.py [--seeds 0 1 2 3] [--models lstm transformer gpt2 clinical_lf]

Retrains each model once per extra seed (`train.MODEL.seed`; data, split and vocabulary
fixed) and evaluates it on the test split, in a temporary directory: the workspace's
params, models and metrics are never touched. It needs the outputs of a finished
`dvc repro` (`bash scripts/run.sh`), which it reads in place; the committed run
(reports/metrics/MODEL.json, seed `train.MODEL.seed` of params.yaml) is one of the seeds.
Retraining that seed too (`--seeds 0 1 2`, with 0 the committed seed) doubles as a
reproducibility check: the new metrics file is compared with the committed one.
Writes reports/seed_spread.json (per model and metric: the value of every seed, mean,
sample standard deviation, min, max; models not run keep their entries) and prints a table; README quotes it beside the
results. Costs one `train@MODEL` + `evaluate@MODEL` per model and extra seed.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml
from smoke import comparable  # scripts/, beside this file

from ehrseq.report import dig

REPO = Path(__file__).resolve().parent.parent
# (metrics-file key, label): the headline of reports/summary.md, and AUPRC
METRICS = (("auroc", "test AUROC"), ("auroc_vs_oracle", "model / oracle AUROC"), ("auprc", "test AUPRC"))


def run_seed(work: Path, model: str, seed: int) -> dict:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["train"][model]["seed"] = seed
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    for stage in ("train", "evaluate"):
        subprocess.run([sys.executable, "-P", str(REPO / "stages" / f"{stage}.py"), model],
                       cwd=work, env=env, check=True)
    return json.loads((work / "reports" / "metrics" / f"{model}.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2], help="seeds to train besides the committed one")
    parser.add_argument("--models", nargs="+", default=["lstm", "transformer", "gpt2", "clinical_lf"])
    parser.add_argument("--out", default=str(REPO / "reports" / "seed_spread.json"))
    args = parser.parse_args()
    if not (REPO / "data" / "processed" / "sequences").exists():
        raise SystemExit(f"{REPO / 'data/processed/sequences'} is missing: run `bash scripts/run.sh` first")

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    out = Path(args.out)
    result = json.loads(out.read_text()) if out.exists() else {"models": {}}  # other models' entries stay
    with tempfile.TemporaryDirectory(prefix="ehrseq-seeds-") as tmp:
        work = Path(tmp)
        (work / "data").symlink_to(REPO / "data")  # read only: train and evaluate write models/, reports/
        for model in args.models:
            committed_seed = params["train"][model]["seed"]
            committed_path = REPO / "reports" / "metrics" / f"{model}.json"
            if not committed_path.exists():
                raise SystemExit(f"{committed_path} is missing: run `bash scripts/run.sh` first")
            committed = json.loads(committed_path.read_text())
            runs = {committed_seed: committed}
            for seed in args.seeds:
                runs[seed] = run_seed(work, model, seed)
                if seed == committed_seed:  # every value but the run-time fields (seconds, threads)
                    same = comparable(runs[seed]) == comparable(committed)
                    print(f"{model} seed {seed}: {'identical to' if same else 'DIFFERS from'} {committed_path}")
            values = {label: [dig(m, f"{key}.value") for m in runs.values()] for key, label in METRICS}
            result["models"][model] = {"seeds": list(runs)} | {
                label: {"per_seed": v, "mean": statistics.fmean(v), "sd": statistics.stdev(v),
                        "min": min(v), "max": max(v)}
                for label, v in values.items() if None not in v and len(v) > 1}
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {out}")
    print("| model | metric | mean | sd | min | max |\n|---|---|---|---|---|---|")
    for model in args.models:
        rows = result["models"][model]
        for label, s in rows.items():
            if label == "seeds":
                continue
            print(f"| {model} | {label} | {s['mean']:.3f} | {s['sd']:.3f} | {s['min']:.3f} | {s['max']:.3f} |")


if __name__ == "__main__":
    main()
