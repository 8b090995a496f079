"""DVC stage `explain@MODEL`: why a mortality model predicts what it does on the test
split, and whether to believe it.

    python -P stages/explain.py MODEL

Reads params `explain` (and `vocab`, `tokenize.visit_hours` for survival_lstm, to name the
events behind its visit codes), models/MODEL/finetune/{best,last}.pt (clinical_lf: with
the feature encoder fitted at training time), the test split (token models: sequences
with each token's event_row; survival_lstm: the landmark view's pre-cutoff visits), events
and cohort (to name events) and, on synthetic data, the planted events (and companions
when recorded) of data/interim/truth/. Writes reports/explain/MODEL/ (tables, PNG plots,
attention npz; see `ehrseq.explain.run`) as a whole, atomically, and
reports/metrics/explain_MODEL.json: methods and baselines, IG convergence, deletion AOPC
per method against random, strict and companion-aware precision@k, and the sanity checks
(parameter randomisation cascade; shuffled-label models of `explain.label_shuffle.seeds`
seeds trained by the shared loop, judged by their mean test AUROC within strata of the
number of events).

survival_lstm explains the landmark's logit(1 - S(horizon)), the log-odds of death within
`survival.horizon_hours` after the cutoff; its "AUROC" is that of 1 - S(horizon) for
death within the horizon (as `evaluate` plots it).
"""
import argparse
import logging
import time

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

from ehrseq import paths
from ehrseq.data import token_loader
from ehrseq.explain.explainers import make_explainer
from ehrseq.explain.inputs import collate_token_events, event_descriptions, load_token_events, read_truth
from ehrseq.explain.run import ExplainConfig, explain_split, sanity_checks
from ehrseq.explain.sanity import (
    auroc_with_interval,
    label_randomisation_verdict,
    length_auroc,
    shuffled_label_model,
    stratified_auroc,
    untrained_aurocs,
)
from ehrseq.explain.visits import SurvivalEventDataset, collate_survival_events, pre_cutoff_frame, unit_rows, unit_truth
from ehrseq.io import atomic_path, setup_logging, write_json
from ehrseq.metrics import UndefinedMetricError, patient_ids
from ehrseq.model_data import SURVIVAL_MODELS, TOKEN_MODELS, checkpoint_encoder, load_model_data, task_class
from ehrseq.params import load_params
from ehrseq.survival_data import SurvivalDataset, load_survival
from ehrseq.tasks import SurvivalTask, mortality_task
from ehrseq.torch_utils import pick_device
from ehrseq.training import FitConfig, load_checkpoint, load_trained_model, predict
from ehrseq.vocab import Vocab

log = logging.getLogger("ehrseq.stages.explain")
SURVIVAL_OUTCOME = ("event_bin", "event", "time_hours")  # shuffled together: one stay's outcome


def survival_inputs(events: pd.DataFrame, vocab_params: dict, visit_hours: float, vocab_size: int):
    """survival_lstm: the test landmark view with (visit, code) units named by event rows,
    the map event_row -> unit row, and the train landmark view (pre-cutoff visits only:
    a shuffled outcome must not meet the post-cutoff visits its true outcome decided)."""
    vocab = Vocab.from_frames(pd.read_csv(paths.VOCAB, keep_default_na=False), pd.read_csv(paths.VALUE_BINS),
                              vocab_params["binned_event_types"], vocab_params["icd_grouping"])
    cohort = pd.read_parquet(paths.COHORT, columns=["stay_id", "intime", "cutoff"])
    path = paths.SURVIVAL_SEQUENCES / "test.parquet"
    test, _ = load_survival(path, vocab_size)
    rows, representative = unit_rows(events, cohort, vocab, visit_hours, test, path)
    train, _ = load_survival(paths.SURVIVAL_SEQUENCES / "train.parquet", vocab_size)
    return SurvivalEventDataset(test, rows), representative, SurvivalDataset(pre_cutoff_frame(train))


def event_counts(dataset) -> dict[int, int]:
    """stay_id -> number of explained events (token models: distinct event rows; survival:
    (visit, code) units; clinical_lf: steps)."""
    out = {}
    for i in range(len(dataset)):
        item = dataset[i]
        rows = item.get("event_row")
        if rows is None:
            n = int(dataset.lengths[i])
        elif isinstance(rows, list):
            n = sum(len(r) for r in rows)
        else:
            n = int(rows[rows >= 0].unique().numel())
        out[int(item["stay_id"])] = n
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    args = parser.parse_args()
    setup_logging()
    survival = args.model in SURVIVAL_MODELS
    all_params = load_params("explain", *(("vocab", "tokenize") if survival else ()))
    params = all_params["explain"]
    config = ExplainConfig(**{**params, "precision_k": tuple(params["precision_k"])})
    shuffle = config.label_shuffle
    device = pick_device()
    start = time.time()

    model, checkpoint = load_trained_model(paths.checkpoint(args.model, "finetune"), device)
    encoder = checkpoint_encoder(checkpoint)
    explainer = make_explainer(args.model, model, encoder)
    events = pd.read_parquet(paths.EVENTS)
    cohort = pd.read_parquet(paths.COHORT, columns=["stay_id", "cutoff"])
    descriptions = event_descriptions(events, cohort)
    data = load_model_data(args.model, ("train", "test"), encoder=encoder)
    truth = read_truth(paths.TRUTH)
    train = data.datasets["train"]
    if args.model in TOKEN_MODELS:
        test = load_token_events(paths.SEQUENCES / "test.parquet", data.model_inputs["vocab_size"])
        collate_fn = collate_token_events
    elif survival:
        test, representative, train = survival_inputs(events, all_params["vocab"],
                                                      all_params["tokenize"]["visit_hours"],
                                                      data.model_inputs["vocab_size"])
        collate_fn = collate_survival_events
        truth = truth if truth is None else unit_truth(truth, representative)
    else:
        test, collate_fn = data.datasets["test"], data.collate_fn
    del events
    if truth is None:
        log.info("no planted truth in %s (real data): precision@k is not computed; faithfulness still is", paths.TRUTH)

    def loader(dataset, shuffle_batches):
        return token_loader(dataset, config.batch_size, device=device, seed=config.seed, shuffle=shuffle_batches,
                            collate_fn=data.collate_fn)

    def labels_and_risk(p: dict) -> tuple[np.ndarray, np.ndarray]:
        if survival:  # death within the horizon, ranked by 1 - S(horizon) at the landmark
            return p["event"].astype(int), 1.0 - p["survival"][:, -1]
        return p["label"].astype(int), p["prob"]

    def task_fn(labels):
        return SurvivalTask() if survival else mortality_task(labels, "pos_weight", task_class(args.model))[0]

    out, metrics_path = paths.explain_dir(args.model), paths.explain_metrics(args.model)
    with atomic_path(out) as tmp:
        metrics, sanity = explain_split(explainer, test, collate_fn, descriptions, tmp, config, truth,
                                        logit_shift=checkpoint["task_config"].get("logit_shift", 0.0))
        t0 = time.time()
        fit_config = FitConfig(**load_checkpoint(paths.checkpoint(args.model, "finetune", "last"))["config"])
        test_loader = loader(data.datasets["test"], False)
        sizes = event_counts(test)
        runs, first = [], None
        for seed in range(config.seed, config.seed + shuffle["seeds"]):
            shuffled, task, summary = shuffled_label_model(
                args.model, checkpoint["metadata"]["model_config"], train, loader, fit_config, task_fn,
                shuffle["stays"], shuffle["epochs"], seed, device,
                outcome_keys=SURVIVAL_OUTCOME if survival else ("label",))
            p = predict(shuffled, task, test_loader, device)
            y, risk = labels_and_risk(p)
            summary["test_auroc"] = auroc_with_interval(y, risk, patient_ids(p["stay_id"], paths.COHORT),
                                                        shuffle["n_bootstrap"], seed)
            n_events = [sizes[int(s)] for s in p["stay_id"]]
            try:
                summary["test_auroc_within_event_strata"] = stratified_auroc(y, risk, n_events, shuffle["event_strata"])
            except UndefinedMetricError as err:
                summary["test_auroc_within_event_strata"], summary["reason"] = None, str(err)
            summary["spearman_risk_vs_events"] = float(spearmanr(risk, n_events)[0])
            runs.append(summary)
            if first is None:  # the first seed's model is the one whose explanations are checked
                first = shuffled
        y, _ = labels_and_risk(p)
        label = {
            **label_randomisation_verdict([r["test_auroc_within_event_strata"] for r in runs], shuffle["tolerance"]),
            "plain_test_auroc_per_seed": [r["test_auroc"]["value"] for r in runs],
            "plain_test_auroc_mean": float(np.mean([r["test_auroc"]["value"] for r in runs])),
            "runs": runs,
            "events_only_test_auroc": length_auroc(y, [sizes[int(s)] for s in p["stay_id"]]),
            "untrained_test_aurocs": untrained_aurocs(
                args.model, checkpoint["metadata"]["model_config"], task, test_loader, device,
                range(config.seed + 1000, config.seed + 1000 + shuffle["untrained_models"]), labels_and_risk),
            "seconds_training": round(time.time() - t0, 2),
        }
        metrics["sanity"] = sanity_checks(explainer, sanity, config, truth, explainer.with_model(first), label)
    metrics["seconds"]["total"] = round(time.time() - start, 2)
    write_json(metrics_path, metrics)
    log.info("%s: wrote %s and %s for %d test stays in %.0f s", args.model, out, metrics_path, metrics["stays"],
             metrics["seconds"]["total"])


if __name__ == "__main__":
    main()
