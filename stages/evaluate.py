"""DVC stage `evaluate@MODEL`: the trained model on the test split.

    python -P stages/evaluate.py MODEL

Writes reports/metrics/MODEL.json -- AUROC, AUPRC, Brier score and ECE with bootstrap
95% intervals that resample patients (`resample_unit`; subject_id from the cohort table,
since the stays of one patient are not independent); the oracle AUROC (the generator's
true risk on the same stays) and the model/oracle ratio when the synthetic truth exists;
perplexity and next-token accuracy of the pretrained model -- and ROC, PR and
calibration tables under reports/plots/MODEL/ for `dvc plots`.
"""
import argparse
import logging
from pathlib import Path

import pandas as pd

from ehrseq import metrics, paths
from ehrseq.io import atomic_path, setup_logging, write_json
from ehrseq.model_data import checkpoint_encoder, load_model_data, task_class
from ehrseq.params import load_params
from ehrseq.tasks import NextTokenTask
from ehrseq.torch_utils import pick_device
from ehrseq.training import load_trained_model, predict

log = logging.getLogger("ehrseq.stages.evaluate")

TRUTH = paths.STAY_RISK
COHORT = paths.COHORT  # subject_id of each stay: the bootstrap's unit


def oracle_metrics(stay_ids, y, prob, clusters, n_resamples: int, seed: int) -> dict:
    """AUROC of the true risk on the same stays, and the model's share of it (paired bootstrap)."""
    if not TRUTH.exists():
        reason = f"{TRUTH} not found (only the synthetic source records true risks)"
        return {"oracle_auroc": {"value": None, "reason": reason}, "auroc_vs_oracle": {"value": None, "reason": reason}}
    truth = pd.read_parquet(TRUTH, columns=["stay_id", "true_risk"]).set_index("stay_id")["true_risk"]
    missing = pd.Index(stay_ids).difference(truth.index)
    if len(missing):
        raise ValueError(f"{TRUTH}: column 'stay_id' lacks {len(missing)} test stays, e.g. {missing[0]}")
    risk = truth.loc[stay_ids].to_numpy()

    def ratio(y_, model, oracle):
        return metrics.auroc(y_, model) / metrics.auroc(y_, oracle)

    kw = {"clusters": clusters, "n_resamples": n_resamples, "seed": seed}
    return {"oracle_auroc": metrics.bootstrap(metrics.auroc, (y, risk), **kw),
            "auroc_vs_oracle": metrics.bootstrap(ratio, (y, prob, risk), **kw)}


def pretrain_metrics(path: Path, loader, device, n_resamples: int, seed: int) -> dict:
    model, _ = load_trained_model(path, device)
    p = predict(model, NextTokenTask(), loader, device)
    kw = {"clusters": metrics.patient_ids(p["stay_id"], COHORT), "n_resamples": n_resamples, "seed": seed}
    return {"perplexity": metrics.bootstrap(metrics.perplexity, (p["nll_sum"], p["n_tokens"]), **kw),
            "next_token_accuracy": metrics.bootstrap(metrics.token_accuracy, (p["n_correct"], p["n_tokens"]), **kw)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    args = parser.parse_args()
    setup_logging()
    params = load_params("evaluate")["evaluate"]
    device = pick_device()
    n_resamples, seed, n_bins = params["n_bootstrap"], params["seed"], params["calibration_bins"]
    model, checkpoint = load_trained_model(paths.checkpoint(args.model, "finetune"), device)
    data = load_model_data(args.model, ("test",), encoder=checkpoint_encoder(checkpoint))
    loader = data.loader("test", params["batch_size"], device, shuffle=False)
    p = predict(model, task_class(args.model)(**checkpoint["task_config"]), loader, device)
    y, prob = p["label"].astype(int), p["prob"]
    patients = metrics.patient_ids(p["stay_id"], COHORT)
    kw = {"clusters": patients, "n_resamples": n_resamples, "seed": seed}

    report = {
        "model": args.model, "split": "test", "stays": len(y), "deaths": int(y.sum()),
        "patients": len(set(patients)), "resample_unit": "patient", "best_epoch": checkpoint["epoch"],
        **metrics.binary_classification_metrics(y, prob, n_bins=n_bins, **kw),
        **oracle_metrics(p["stay_id"], y, prob, **kw),
    }
    pretrained = paths.checkpoint(args.model, "pretrain")
    if pretrained.exists():
        report["pretrain"] = pretrain_metrics(pretrained, loader, device, n_resamples, seed)
    write_json(paths.metrics_json(args.model), report)
    for name, table in metrics.classification_curves(y, prob, n_bins).items():
        with atomic_path(paths.plots_dir(args.model) / f"{name}.csv") as tmp:
            table.to_csv(tmp, index=False)
    log.info("%s on %d test stays: AUROC %s, oracle %s", args.model, len(y), report["auroc"]["value"],
             report["oracle_auroc"]["value"])


if __name__ == "__main__":
    main()
