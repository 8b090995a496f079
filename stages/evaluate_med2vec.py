"""DVC stage `evaluate_med2vec`: TemporalMed2Vec, lambda = 0 and gensim side by side.

    python -P stages/evaluate_med2vec.py

Reads models/med2vec/ and params `train.med2vec.evaluation`; the test split's code
sequences (next-visit recall) and, when the synthetic truth has it,
data/interim/truth/problem_codes.parquet (planted problems; undefined, with the reason,
on real data). Writes reports/metrics/med2vec.json (every metric for each of the three
vector sets, see `ehrseq.code_embeddings.evaluation`) and reports/med2vec/neighbours.csv
(the nearest codes of the most frequent train codes, temporal model).
"""
import logging
import time

import pandas as pd

from ehrseq import paths
from ehrseq.code_embeddings.evaluation import (
    CodeVectors,
    admission_pairs,
    neighbours_table,
    next_visit_metrics,
    ontology_metrics,
    planted_metrics,
)
from ehrseq.code_embeddings.sequences import CodeVocab, code_table
from ehrseq.io import atomic_path, read_json, setup_logging, write_json
from ehrseq.params import load_params

log = logging.getLogger("ehrseq.stages.evaluate_med2vec")

MODEL = paths.MED2VEC
PROBLEM_CODES = paths.PROBLEM_CODES
PROBLEM_COLUMNS = ("problem", "kind", "code")
VARIANTS = {"med2vec": paths.MED2VEC_EMBEDDINGS, "med2vec_lambda0": MODEL / "variants" / "lambda0.parquet",
            "gensim": MODEL / "variants" / "gensim.parquet"}


def read_problem_codes() -> tuple[pd.DataFrame | None, str]:
    if not PROBLEM_CODES.exists():
        return None, (f"{PROBLEM_CODES} not found: only the synthetic source plants latent problems "
                      "(real MIMIC data has no such truth)")
    frame = pd.read_parquet(PROBLEM_CODES)
    missing = [c for c in PROBLEM_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"{PROBLEM_CODES}: missing column(s) {missing}; has {list(frame.columns)}")
    return frame, ""


def main() -> None:
    start = time.time()
    setup_logging()
    params = load_params("train.med2vec")["train"]["med2vec"]["evaluation"]
    config = read_json(MODEL / "config.json")
    vocab = CodeVocab.from_frame(pd.read_csv(MODEL / "vocab.csv", keep_default_na=False))
    train_counts = dict(zip(vocab.codes, vocab.counts))
    problems, reason = read_problem_codes()
    test, test_stats = code_table(
        pd.read_parquet(paths.EVENTS, columns=["subject_id", "hadm_id", "stay_id", "time", "code"]),
        pd.read_parquet(paths.DIAGNOSES, columns=["subject_id", "hadm_id", "dischtime", "code"]),
        pd.read_parquet(paths.COHORT, columns=["subject_id", "split"]), ("test",),
        config["icd_grouping"])
    pairs = admission_pairs(test)
    k, grouping = params["k"], config["icd_grouping"]
    report = {"k": k, "test_sequences": test_stats, "config": config, "models": {}}
    for name, path in VARIANTS.items():
        cv = CodeVectors(pd.read_parquet(path))
        report["models"][name] = {
            "planted": planted_metrics(cv, problems, reason, icd_grouping=grouping, k=k, seed=params["seed"]),
            "ontology": ontology_metrics(cv, icd_grouping=grouping, k=k),
            "next_visit": next_visit_metrics(cv, pairs, train_counts, params["recall_k"]),
        }
        log.info("%s: %s", name, report["models"][name])
    report.update(stage="evaluate_med2vec", seconds=round(time.time() - start, 1))
    write_json(paths.MED2VEC_METRICS, report)
    table = neighbours_table(CodeVectors(pd.read_parquet(VARIANTS["med2vec"])), train_counts,
                             params["neighbour_codes"], k)
    with atomic_path(paths.MED2VEC_REPORTS / "neighbours.csv") as tmp:
        table.to_csv(tmp, index=False)
    log.info("wrote reports/metrics/med2vec.json and the neighbours of %d codes", table["code"].nunique())


if __name__ == "__main__":
    main()
