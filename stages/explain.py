"""DVC stage `explain@MODEL`: why a mortality model predicts what it does on the test
split, and whether to believe it.

    python -P stages/explain.py MODEL

Reads params `explain`, models/MODEL/finetune/{best,last}.pt (clinical_lf: with the
feature encoder fitted at training time), the test split (token models: sequences with
each token's event_row), events and cohort (to name events) and, on synthetic data, the
planted events (and companions when recorded) of data/interim/truth/. Writes
reports/explain/MODEL/ (tables, PNG plots, attention npz; see `ehrseq.explain.run`) as a
whole, atomically, and reports/metrics/explain_MODEL.json: methods and baselines, IG
convergence, deletion AOPC per method against random, strict and companion-aware
precision@k, and the sanity checks (parameter randomisation cascade, shuffled-label
model trained by the shared loop with `explain.label_shuffle` budget).
"""
import argparse
import logging
import time

import pandas as pd

from ehrseq import paths
from ehrseq.data import token_loader
from ehrseq.explain.explainers import make_explainer
from ehrseq.explain.inputs import collate_token_events, event_descriptions, load_token_events, read_truth
from ehrseq.explain.run import ExplainConfig, explain_split, sanity_checks
from ehrseq.explain.sanity import auroc_with_interval, shuffled_label_model, untrained_aurocs
from ehrseq.io import atomic_path, setup_logging, write_json
from ehrseq.metrics import patient_ids
from ehrseq.model_data import TOKEN_MODELS, checkpoint_encoder, load_model_data, task_class
from ehrseq.params import load_params
from ehrseq.torch_utils import pick_device
from ehrseq.training import FitConfig, load_checkpoint, load_trained_model, predict

log = logging.getLogger("ehrseq.stages.explain")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    args = parser.parse_args()
    setup_logging()
    params = load_params("explain")["explain"]
    config = ExplainConfig(**{**params, "precision_k": tuple(params["precision_k"])})
    shuffle = config.label_shuffle
    device = pick_device()
    start = time.time()

    model, checkpoint = load_trained_model(paths.checkpoint(args.model, "finetune"), device)
    encoder = checkpoint_encoder(checkpoint)
    explainer = make_explainer(args.model, model, encoder)
    events = pd.read_parquet(paths.EVENTS, columns=["stay_id", "time", "event_type", "code", "text"])
    cohort = pd.read_parquet(paths.COHORT, columns=["stay_id", "cutoff"])
    descriptions = event_descriptions(events, cohort)
    del events
    data = load_model_data(args.model, ("train", "test"), encoder=encoder)
    if args.model in TOKEN_MODELS:
        test = load_token_events(paths.SEQUENCES / "test.parquet", data.model_inputs["vocab_size"])
        collate_fn = collate_token_events
    else:
        test, collate_fn = data.datasets["test"], data.collate_fn
    truth = read_truth(paths.TRUTH)
    if truth is None:
        log.info("no planted truth in %s (real data): precision@k is not computed; faithfulness still is", paths.TRUTH)

    def loader(dataset, shuffle_batches):
        return token_loader(dataset, config.batch_size, device=device, seed=config.seed, shuffle=shuffle_batches,
                            collate_fn=data.collate_fn)

    out, metrics_path = paths.explain_dir(args.model), paths.explain_metrics(args.model)
    with atomic_path(out) as tmp:
        metrics, sanity = explain_split(explainer, test, collate_fn, descriptions, tmp, config, truth,
                                        logit_shift=checkpoint["task_config"]["logit_shift"])
        t0 = time.time()
        shuffled, task, summary = shuffled_label_model(
            args.model, checkpoint["metadata"]["model_config"], data.datasets["train"], loader,
            FitConfig(**load_checkpoint(paths.checkpoint(args.model, "finetune", "last"))["config"]),
            task_class(args.model), shuffle["stays"], shuffle["epochs"], config.seed, device)
        test_loader = loader(data.datasets["test"], False)
        p = predict(shuffled, task, test_loader, device)
        auroc = auroc_with_interval(p["label"].astype(int), p["prob"], patient_ids(p["stay_id"], paths.COHORT),
                                    shuffle["n_bootstrap"], config.seed)
        summary["untrained_test_aurocs"] = untrained_aurocs(
            args.model, checkpoint["metadata"]["model_config"], task, test_loader, device,
            range(config.seed + 1, config.seed + 1 + shuffle["untrained_models"]))
        summary["seconds_training"] = round(time.time() - t0, 2)
        metrics["sanity"] = sanity_checks(explainer, sanity, config, truth, explainer.with_model(shuffled), auroc,
                                          summary)
    metrics["seconds"]["total"] = round(time.time() - start, 2)
    write_json(metrics_path, metrics)
    log.info("%s: wrote %s and %s for %d test stays in %.0f s", args.model, out, metrics_path, metrics["stays"],
             metrics["seconds"]["total"])


if __name__ == "__main__":
    main()
