"""DVC stage `evaluate@MODEL`: the trained model on the test split.

    python -P stages/evaluate.py MODEL

survival_lstm: see `evaluate_survival` (survival metrics against the oracle, Kaplan-Meier
and Cox; plots by risk tertile). The others:
write reports/metrics/MODEL.json -- AUROC, AUPRC, Brier score and ECE with bootstrap
95% intervals that resample patients (`resample_unit`; subject_id from the cohort table,
since the stays of one patient are not independent); the oracle AUROC (the generator's
true risk on the same stays) and the model/oracle ratio when the synthetic truth exists;
perplexity and next-token accuracy of the pretrained model -- and ROC, PR and
calibration tables under reports/plots/MODEL/ for `dvc plots`.
prompt_bart is a generative model: its file holds test perplexities instead (see
`evaluate_prompt_bart`), and reports/plots/prompt_bart/perplexity.csv.
"""
import argparse
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd

from ehrseq import metrics, paths
from ehrseq.io import atomic_path, setup_logging, write_json
from ehrseq.model_data import SURVIVAL_MODELS, checkpoint_encoder, load_model_data, task_class
from ehrseq.oracle import oracle_metrics
from ehrseq.params import load_params
from ehrseq.survival_data import load_survival
from ehrseq.tasks import NextTokenTask, SurvivalTask
from ehrseq.torch_utils import pick_device
from ehrseq.training import load_trained_model, predict

log = logging.getLogger("ehrseq.stages.evaluate")

COHORT = paths.COHORT  # subject_id of each stay: the bootstrap's unit


def pretrain_metrics(path: Path, loader, device, n_resamples: int, seed: int) -> dict:
    model, _ = load_trained_model(path, device)
    p = predict(model, NextTokenTask(), loader, device)
    kw = {"clusters": metrics.patient_ids(p["stay_id"], COHORT), "n_resamples": n_resamples, "seed": seed}
    return {"perplexity": metrics.bootstrap(metrics.perplexity, (p["nll_sum"], p["n_tokens"]), **kw),
            "next_token_accuracy": metrics.bootstrap(metrics.token_accuracy, (p["n_correct"], p["n_tokens"]), **kw)}


def evaluate_survival(model_name: str, params: dict, survival: dict, visit_hours: float, device, start: float) -> None:
    """survival_lstm: landmark curves on test beside the oracle, Kaplan-Meier and Cox
    (reports/metrics/MODEL.json), and predicted vs Kaplan-Meier survival by risk tertile
    (reports/plots/MODEL/tertiles.{csv,png})."""
    # scikit-survival and matplotlib: seconds of imports the other models' evaluation skips
    from ehrseq.survival_eval import evaluate_curves, plot_tertiles, tertile_table

    model, checkpoint = load_trained_model(paths.checkpoint(model_name, "finetune"), device)
    data = load_model_data(model_name, ("test",))
    loader = data.loader("test", params["batch_size"], device, shuffle=False)
    p = predict(model, SurvivalTask(), loader, device)
    frames, dropped = {}, {}
    for split in ("train", "val", "test"):
        frames[split], dropped[split] = load_survival(paths.SURVIVAL_SEQUENCES / f"{split}.parquet")
    test = frames["test"].set_index("stay_id").loc[p["stay_id"]].reset_index()  # prediction order
    report, curves = evaluate_curves(
        model_curve=p["survival"], test=test, train=frames["train"], val=frames["val"],
        vocab_size=data.model_inputs["vocab_size"], visit_hours=visit_hours,
        truth_path=paths.STAY_SURVIVAL, auc_hours=survival["auc_hours"],
        tau_hours=survival["tau_hours"], cox=survival["cox"], n_resamples=survival["n_bootstrap"], seed=params["seed"])
    write_json(paths.metrics_json(model_name),
               {"model": model_name, "best_epoch": checkpoint["epoch"], **report, "dropped": dropped,
                "stage": f"evaluate@{model_name}", "seconds": round(time.time() - start, 1)})
    table = tertile_table(curves["model"], test["time_hours"].to_numpy(), test["event"].to_numpy(),
                          visit_hours * np.arange(curves["model"].shape[1]))
    with atomic_path(paths.tertile_plot(model_name, "csv")) as tmp:
        table.to_csv(tmp, index=False)
    with atomic_path(paths.tertile_plot(model_name, "png")) as tmp:
        plot_tertiles(table, tmp, f"{model_name} (test): predicted vs Kaplan-Meier by risk tertile")
    # The stage's shared plots (roc, pr, calibration), for in-hospital death within the horizon
    # against 1 - S(H). Discharge ends the risk of an in-hospital death, so this label is fully
    # observed; the survival curve treats discharge as censoring, so its calibration here shows
    # how far that assumption moves the risk.
    died, risk = test["event"].to_numpy(int), 1.0 - p["survival"][:, -1]
    for name, curve_table in metrics.classification_curves(died, risk, params["calibration_bins"]).items():
        with atomic_path(paths.plots_dir(model_name) / f"{name}.csv") as tmp:
            curve_table.to_csv(tmp, index=False)
    m = report["metrics"]
    log.info("%s on %d test stays: Antolini C %s (oracle %s, Cox %s); IBS %s (Cox %s)", model_name, len(test),
             m["model"]["antolini_c"]["value"], m["oracle"]["antolini_c"]["value"], m["cox"]["antolini_c"]["value"],
             m["model"]["integrated_brier_score"]["value"], m["cox"]["integrated_brier_score"]["value"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    args = parser.parse_args()
    start = time.time()
    setup_logging()
    params = load_params("evaluate")["evaluate"]
    device = pick_device()
    n_resamples, seed, n_bins = params["n_bootstrap"], params["seed"], params["calibration_bins"]
    if args.model in SURVIVAL_MODELS:
        all_params = load_params("evaluate", "survival", "tokenize")
        evaluate_survival(args.model, params, all_params["survival"], all_params["tokenize"]["visit_hours"], device,
                          start)
        return
    if args.model == "prompt_bart":
        evaluate_prompt_bart(paths.checkpoint(args.model, "denoise"), params, device, start)
        return

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
        **oracle_metrics(paths.STAY_RISK, p["stay_id"], y, prob, **kw),
    }
    pretrained = paths.checkpoint(args.model, "pretrain")
    if pretrained.exists():
        report["pretrain"] = pretrain_metrics(pretrained, loader, device, n_resamples, seed)
    report.update(stage=f"evaluate@{args.model}", seconds=round(time.time() - start, 1))
    write_json(paths.metrics_json(args.model), report)
    for name, table in metrics.classification_curves(y, prob, n_bins).items():
        with atomic_path(paths.plots_dir(args.model) / f"{name}.csv") as tmp:
            table.to_csv(tmp, index=False)
    log.info("%s on %d test stays: AUROC %s, oracle %s", args.model, len(y), report["auroc"]["value"],
             report["oracle_auroc"]["value"])


def evaluate_prompt_bart(path: Path, params: dict, device, start: float) -> None:
    """Test perplexities of prompt_bart and of the independent-codes baseline on the same targets.

    lpl (longitudinal): each visit k >= 1 given visits < k; mpl (cross-type): each code
    type of a visit given everything else. The baseline's NLL is that of the same code
    sets under independent codes (`independent_nll_by_type`). Per code type, a patient's
    perplexity is exp(mean NLL of its targets of that type); the median over patients (as PromptEHR
    reports) gets a bootstrap interval over patients. Also the denoising loss under the
    training corruption (fixed seed), the number the loop early-stopped on.
    """
    from ehrseq.data import token_loader
    from ehrseq.patient_visits import (
        CODE_TYPES,
        Corruption,
        DemographicEncoder,
        PatientDataset,
        PatientVocab,
        collate_patients,
        independent_nll_by_type,
        load_patients,
        patient_examples,
    )
    from ehrseq.tasks import PromptBartTask

    model, checkpoint = load_trained_model(path, device)
    meta = checkpoint["metadata"]
    vocab, demo = PatientVocab.from_dict(meta["vocab"]), DemographicEncoder(**meta["demographics"])
    patients, data_stats = load_patients(paths.INTERIM)
    test = patients.split("test")
    encoded, enc_stats = vocab.encode(test)
    task = PromptBartTask(**checkpoint["task_config"])
    kw = {"n_resamples": params["n_bootstrap"], "seed": params["seed"]}
    report = {"model": "prompt_bart", "split": "test", "best_epoch": checkpoint["epoch"], "data": data_stats,
              "test_encoding": enc_stats, "resample_unit": "patient"}
    rows = []
    for view in ("fixed", "longitudinal", "cross_type"):
        examples, ex_stats = patient_examples(encoded, test.demographics, demo, meta["model_config"]["max_length"],
                                              view, Corruption(**meta["corruption"]), seed=params["seed"])
        loader = token_loader(PatientDataset(examples), params["batch_size"], device=device, shuffle=False,
                              collate_fn=collate_patients)
        p = predict(model, task, loader, device)
        if view == "fixed":
            report["denoising"] = {**ex_stats, "perplexity": metrics.bootstrap(
                metrics.perplexity, (p["nll_sum"], p["n_tokens"]), clusters=p["subject_id"], **kw)}
            continue
        # the baseline scores the very same targets
        batch = collate_patients(examples)
        base_by_type = independent_nll_by_type(vocab, batch["labels"].numpy(), batch["score_type"].numpy())  # [N, K]
        name = {"longitudinal": "lpl", "cross_type": "mpl"}[view]
        report[name] = {"examples": ex_stats["examples"]}
        for t, code_type in enumerate(CODE_TYPES):
            frame = pd.DataFrame({"subject_id": p["subject_id"], "model": p["nll_by_type"][:, t],
                                  "baseline": base_by_type[:, t], "n": p["n_by_type"][:, t]})
            per_patient = frame.groupby("subject_id")[["model", "baseline", "n"]].sum()
            per_patient = per_patient[per_patient["n"] > 0]
            if per_patient.empty:
                report[name][code_type] = {"value": None, "reason": f"no test targets of type {code_type}"}
                continue
            entry = {"patients": len(per_patient), "targets": int(per_patient["n"].sum())}
            for source in ("model", "baseline"):
                ppl = np.exp(per_patient[source] / per_patient["n"]).to_numpy()
                entry[source] = metrics.bootstrap(np.median, (ppl,), clusters=None, **kw)  # a row a patient
                rows.append({"mode": name, "code_type": code_type, "source": source,
                             "median_perplexity": entry[source]["value"]})
            entry["beats_baseline"] = entry["model"]["value"] < entry["baseline"]["value"]
            report[name][code_type] = entry
    report.update(stage="evaluate@prompt_bart", seconds=round(time.time() - start, 1))
    write_json(paths.metrics_json("prompt_bart"), report)
    with atomic_path(paths.PROMPT_BART_PERPLEXITY) as tmp:
        pd.DataFrame(rows).to_csv(tmp, index=False)
    log.info("prompt_bart test: denoising perplexity %.3f; %s", report["denoising"]["perplexity"]["value"],
             {(r["mode"], r["code_type"], r["source"]): round(r["median_perplexity"], 2) for r in rows})


if __name__ == "__main__":
    main()
