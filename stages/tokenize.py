"""DVC stage `tokenize`: events + cohort + vocab -> per-split sequence files (three views)."""
import logging
import time

import pandas as pd

from ehrseq import paths
from ehrseq.io import setup_logging, write_json
from ehrseq.params import load_params
from ehrseq.schema import SPLITS
from ehrseq.tokenize import patient_sequences, stay_sequences, survival_sequences, write_sequences
from ehrseq.vocab import Vocab

log = logging.getLogger("ehrseq.stages.tokenize")
OUT = paths.SEQUENCES


def main() -> None:
    start = time.time()
    setup_logging()
    params = load_params("tokenize", "vocab", "survival")
    p, v = params["tokenize"], params["vocab"]
    vocab = Vocab.from_frames(
        pd.read_csv(paths.VOCAB, keep_default_na=False),
        pd.read_csv(paths.VALUE_BINS),
        v["binned_event_types"], v["icd_grouping"],
    )
    # only what the sequences read (all rows, in order: row index = event_row); at 300k
    # synthetic patients (56M events) every column took more than 17 GB (issue 15)
    events = pd.read_parquet(paths.EVENTS, columns=["stay_id", "hours", "event_type", "code", "value", "after_cutoff"])
    cohort = pd.read_parquet(paths.COHORT)
    diagnoses = pd.read_parquet(paths.DIAGNOSES)
    metrics = {}
    for split in SPLITS:
        part = cohort[cohort["split"] == split].sort_values("stay_id").reset_index(drop=True)
        mine = events.loc[events["stay_id"].isin(part["stay_id"])]  # index kept: event_row; tokens built once a view
        stays, s1 = stay_sequences(mine, part, vocab, p["max_length"], v["time_gap_tokens"])
        survival, s2 = survival_sequences(mine, part, vocab, p["visit_hours"], params["survival"]["horizon_hours"])
        patients, s3 = patient_sequences(diagnoses[diagnoses["split"] == split], vocab)
        write_sequences(OUT / f"{split}.parquet", stays)
        write_sequences(OUT / "survival" / f"{split}.parquet", survival)
        write_sequences(OUT / "patients" / f"{split}.parquet", patients)
        metrics[split] = {"stays": s1, "survival": s2, "patients": s3}
        log.info("%s: %d stays (%d truncated to %d tokens), %d patients with diagnoses",
                 split, s1["stays"], s1["truncated"], p["max_length"], s3["patients"])
    metrics["seconds"] = round(time.time() - start, 1)
    write_json(paths.metrics_json("tokenize"), metrics)


if __name__ == "__main__":
    main()
