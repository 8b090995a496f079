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
STAY_SURVIVAL = TRUTH / "stay_survival.parquet"  # true_risk, death_rate_per_hour: the oracle survival curve
COMPANION_EVENTS = TRUTH / "companion_events.parquet"  # events emitted from a planted event's latent cause

# vocab, embed, tokenize
VOCAB = Path("data/processed/vocab.csv")
VALUE_BINS = Path("data/processed/value_bins.csv")
TEXT_EMBEDDINGS = Path("data/processed/text_embeddings")
SEQUENCES = Path("data/processed/sequences")  # {split}.parquet, survival/{split}.parquet, patients/{split}.parquet
SURVIVAL_SEQUENCES = SEQUENCES / "survival"  # the landmark view of survival_lstm

# train_med2vec, evaluate_med2vec (code embeddings; not a mortality model)
PROBLEM_CODES = TRUTH / "problem_codes.parquet"  # synthetic only: the codes each latent problem emits
MED2VEC = Path("models/med2vec")  # vocab.csv, config.json, checkpoints/, variants/{lambda0,gensim}.parquet
MED2VEC_EMBEDDINGS = MED2VEC / "embeddings.parquet"  # code, vector (read by train@lstm with init_embeddings)
MED2VEC_TRAIN_REPORTS = Path("reports/train/med2vec")  # DVCLive per run: temporal/, lambda0/
MED2VEC_REPORTS = Path("reports/med2vec")  # neighbours.csv
MED2VEC_METRICS = Path("reports/metrics/med2vec.json")

# generate (prompt_bart's synthetic patients, and the independent-codes baseline's)
GENERATED = Path("data/generated")
GENERATED_PATIENTS = GENERATED / "patients.parquet"
GENERATED_BASELINE = GENERATED / "baseline.parquet"

# train, evaluate, explain
MODELS = Path("models")
REPORTS = Path("reports")
METRICS = REPORTS / "metrics"
EXPLAIN = REPORTS / "explain"
PLOTS = REPORTS / "plots"  # PLOTS/NAME/*.csv: one folder per model or stage (see plots_dir)

# report
SUMMARY = REPORTS / "summary.md"  # in git: README's results are checked against it
FIGURES = REPORTS / "figures"


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


def train_metrics(model: str) -> Path:
    """reports/metrics/train_MODEL.json: the train stage's cost (seconds per phase, processes)."""
    return metrics_json(f"train_{model}")


def explain_dir(model: str) -> Path:
    """reports/explain/MODEL: the explanation of one model (tables, plots, attention npz)."""
    return EXPLAIN / model


def explain_metrics(model: str) -> Path:
    """reports/metrics/explain_MODEL.json: the explanation's metrics and sanity checks."""
    return metrics_json(f"explain_{model}")


def plots_dir(model: str) -> Path:
    """reports/plots/MODEL: ROC, PR and calibration tables of the test split."""
    return PLOTS / model


def tertile_plot(model: str, suffix: str) -> Path:
    """reports/plots/MODEL/tertiles.{csv,png}: a survival model's predicted vs Kaplan-Meier
    survival by risk tertile. Written by evaluate beside its declared plots, listed under
    dvc.yaml's top-level `plots:` (the foreach template cannot declare per-model outputs)."""
    return plots_dir(model) / f"tertiles.{suffix}"


PROMPT_BART_PERPLEXITY = plots_dir("prompt_bart") / "perplexity.csv"  # median test perplexities (evaluate)
GENERATE_PREVALENCE = plots_dir("generate") / "prevalence.csv"  # visit prevalence per code, real vs synthetic
