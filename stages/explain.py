"""DVC stage `explain`: why clinical_lf predicts what it does on the test split, and
whether to believe it.

    python -P stages/explain.py

Reads params `explain`, models/clinical_lf/finetune/best.pt (with the feature encoder
fitted at training time), the test split and, on synthetic data, the planted events of
data/interim/truth/. Writes reports/explain/ (tables, PNG plots, attention npz; see
`ehrseq.explain.run`) as a whole, atomically, and reports/metrics/explain.json: IG
convergence deltas, deletion AOPC per method against random, precision@k against the
planted events, and head specialisation.
"""
import logging

import pandas as pd

from ehrseq import paths
from ehrseq.explain.run import ExplainConfig, explain_split
from ehrseq.io import atomic_path, setup_logging, write_json
from ehrseq.model_data import checkpoint_encoder, load_model_data
from ehrseq.params import load_params
from ehrseq.torch_utils import pick_device
from ehrseq.training import load_trained_model

log = logging.getLogger("ehrseq.stages.explain")

CHECKPOINT = paths.checkpoint("clinical_lf", "finetune")
PLANTED = paths.PLANTED_EVENTS
OUT = paths.EXPLAIN
METRICS = paths.metrics_json("explain")


def main() -> None:
    setup_logging()
    params = load_params("explain")["explain"]
    config = ExplainConfig(**{**params, "precision_k": tuple(params["precision_k"])})
    model, checkpoint = load_trained_model(CHECKPOINT, pick_device())
    encoder = checkpoint_encoder(checkpoint)
    data = load_model_data("clinical_lf", ("test",), encoder=encoder)
    planted = pd.read_parquet(PLANTED)["event_row"].to_numpy() if PLANTED.exists() else None
    if planted is None:
        log.info("no planted truth at %s (real data): precision@k is not computed; faithfulness still is", PLANTED)
    with atomic_path(OUT) as tmp:
        metrics = explain_split(model, encoder, data.datasets["test"], data.events, tmp, config, planted_rows=planted)
    write_json(METRICS, metrics)
    log.info("wrote %s and %s for %d test stays", OUT, METRICS, metrics["stays"])


if __name__ == "__main__":
    main()
