"""Every file and folder the pipeline reads or writes, named once.

Stages and `model_data` use these names; dvc.yaml must list the same ones as deps and
outs (tests/test_layout.py checks it). Paths are relative to the repository root, where
`dvc repro` runs every stage. The embedding cache is not here: its folder is a parameter
(`embed.cache_dir`), a persistent output outside the DAG's data flow.

To add an artifact: name it here, write it from its stage, declare it in dvc.yaml.
"""
from __future__ import annotations

from pathlib import Path

# synthesize
SYNTHETIC_RAW = Path("data/raw/synthetic")

# extract
INTERIM = Path("data/interim")
EVENTS = INTERIM / "events.parquet"
COHORT = INTERIM / "cohort.parquet"
DIAGNOSES = INTERIM / "diagnoses.parquet"
TRUTH = INTERIM / "truth"  # synthetic source only
STAY_RISK = TRUTH / "stay_risk.parquet"
PLANTED_EVENTS = TRUTH / "planted_events.parquet"

# vocab, embed, tokenize
VOCAB = Path("data/processed/vocab.csv")
VALUE_BINS = Path("data/processed/value_bins.csv")
TEXT_EMBEDDINGS = Path("data/processed/text_embeddings")
SEQUENCES = Path("data/processed/sequences")  # {split}.parquet, survival/{split}.parquet, patients/{split}.parquet

# train, evaluate, explain
MODELS = Path("models")
REPORTS = Path("reports")
METRICS = REPORTS / "metrics"
EXPLAIN = REPORTS / "explain"


def metrics_json(name: str) -> Path:
    """reports/metrics/NAME.json: a stage's metrics (NAME is the stage, or the model for evaluate)."""
    return METRICS / f"{name}.json"


def model_dir(model: str) -> Path:
    """models/MODEL: the checkpoints of every training phase of one model."""
    return MODELS / model


def checkpoint(model: str, phase: str, which: str = "best") -> Path:
    """models/MODEL/PHASE/{best,last}.pt"""
    return model_dir(model) / phase / f"{which}.pt"


def train_reports(model: str) -> Path:
    """reports/train/MODEL: DVCLive logs per phase (PHASE/) and attention snapshots (attention/)."""
    return REPORTS / "train" / model


def plots_dir(model: str) -> Path:
    """reports/plots/MODEL: ROC, PR and calibration tables of the test split."""
    return REPORTS / "plots" / model
