"""DVC stage `vocab`: fit the vocabulary and value bins on the train split only."""
import logging
import time

import pandas as pd

from ehrseq import paths
from ehrseq.io import atomic_path, setup_logging, write_json
from ehrseq.params import load_params
from ehrseq.vocab import coverage, fit_vocab

log = logging.getLogger("ehrseq.stages.vocab")


def main() -> None:
    start = time.time()
    setup_logging()
    p = load_params("vocab")["vocab"]
    # only what the vocabulary reads: at 300k synthetic patients (56M events) all columns
    # took more than 17 GB before fitting began, these few fit (issue 15)
    events = pd.read_parquet(paths.EVENTS, columns=["stay_id", "event_type", "code", "value"])
    cohort = pd.read_parquet(paths.COHORT)
    diagnoses = pd.read_parquet(paths.DIAGNOSES)
    split_of = cohort.set_index("stay_id")["split"]
    events_split = events["stay_id"].map(split_of)
    train = events_split == "train"
    vocab, fit_stats = fit_vocab(
        events[train], cohort[cohort["split"] == "train"], diagnoses[diagnoses["split"] == "train"],
        min_frequency=p["min_frequency"], value_bins=p["value_bins"], binned_types=tuple(p["binned_event_types"]),
        min_values_for_bins=p["min_values_for_bins"], icd_grouping=p["icd_grouping"],
        time_gap_tokens=p["time_gap_tokens"],
    )
    with atomic_path(paths.VOCAB) as tmp:
        vocab.to_frame().to_csv(tmp, index=False)
    with atomic_path(paths.VALUE_BINS) as tmp:
        vocab.edges_frame().to_csv(tmp, index=False)
    metrics = {"size": len(vocab), **fit_stats, "train_events": int(train.sum())}
    for split in ("val", "test"):
        metrics[split] = coverage(vocab, vocab.event_tokens(events[events_split == split]))
    metrics["seconds"] = round(time.time() - start, 1)
    write_json(paths.metrics_json("vocab"), metrics)
    log.info("vocabulary of %d tokens from %d train events; %d codes below min_frequency=%d; val <unk> rate %s",
             len(vocab), metrics["train_events"], fit_stats["dropped_below_min_frequency"], p["min_frequency"],
             metrics["val"]["unk_rate"])


if __name__ == "__main__":
    main()
