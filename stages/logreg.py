"""DVC stage `logreg`: the classical mortality baseline (see `ehrseq.baseline`).

    python -P stages/logreg.py

Reads params `logreg`, the token sequences and vocab; writes reports/metrics/logreg.json
in the same form as `evaluate@MODEL` (AUROC, AUPRC, Brier, ECE with intervals, oracle
ratio on synthetic data) and reports/plots/logreg/{roc,pr,calibration}.csv.
"""
import logging
import time

from ehrseq import metrics
from ehrseq.baseline import bag_of_codes, fit_logreg
from ehrseq.io import atomic_path, setup_logging, write_json
from ehrseq.oracle import oracle_metrics
from ehrseq.params import load_params
from ehrseq.paths import COHORT, SEQUENCES, STAY_RISK, VOCAB, metrics_json, plots_dir
from ehrseq.sequences import load_sequences, read_vocab_size

log = logging.getLogger("ehrseq.stages.logreg")

def main() -> None:
    setup_logging()
    params = load_params("logreg", "evaluate")
    p, e = params["logreg"], params["evaluate"]
    start = time.time()
    vocab_size = read_vocab_size(VOCAB)
    splits = {s: load_sequences(SEQUENCES / f"{s}.parquet", vocab_size) for s in ("train", "val", "test")}
    x = {s: bag_of_codes(f["input_ids"], vocab_size) for s, f in splits.items()}
    y = {s: f["mortality"].to_numpy(int) for s, f in splits.items()}
    model, tuning = fit_logreg(x["train"], y["train"], x["val"], y["val"], p["c_grid"], p["seed"])
    prob = model.predict_proba(x["test"])[:, 1]
    kw = {"clusters": metrics.patient_ids(splits["test"]["stay_id"], COHORT), "n_resamples": e["n_bootstrap"],
          "seed": e["seed"]}
    report = {
        "model": "logreg", "split": "test", "stays": len(prob), "deaths": int(y["test"].sum()), **tuning,
        "resample_unit": "patient",
        **metrics.binary_classification_metrics(y["test"], prob, n_bins=e["calibration_bins"], **kw),
        **oracle_metrics(STAY_RISK, splits["test"]["stay_id"].to_numpy(), y["test"], prob, **kw),
        "seconds": time.time() - start,
    }
    write_json(metrics_json("logreg"), report)
    for name, table in metrics.classification_curves(y["test"], prob, e["calibration_bins"]).items():
        with atomic_path(plots_dir("logreg") / f"{name}.csv") as tmp:
            table.to_csv(tmp, index=False)
    log.info("logreg (C=%g) on %d test stays: AUROC %.4f", tuning["chosen_C"], len(prob), report["auroc"]["value"])

if __name__ == "__main__":
    main()
