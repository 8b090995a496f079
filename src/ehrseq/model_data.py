"""What each model reads from the pipeline's files: datasets, loaders and its task class.

Token models (`lstm`, `transformer`, `gpt2`) read `sequences/{split}.parquet`;
`clinical_lf` reads events, cohort and the text embeddings, encoded by a
`FeatureEncoder` fitted on the train split (and stored in the checkpoint, so evaluation
and explanation encode exactly as training did). `survival_lstm` reads the landmark view
`sequences/survival/{split}.parquet` (rows breaking its contract dropped and counted).
Files are the pipeline's, named in `ehrseq.paths`; nothing here reads params.yaml. Every model in the registry
(`ehrseq.models.REGISTRY`) belongs to exactly one of the input groups below
(tests/test_layout.py checks it).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset

from ehrseq import paths
from ehrseq.data import TokenSequenceDataset, collate_tokens, token_loader
from ehrseq.embeddings import read_text_embeddings
from ehrseq.features import FeatureEncoder, build_dataset, collate, fit_encoder
from ehrseq.sequences import load_sequences, read_vocab_size
from ehrseq.survival import kaplan_meier_hazards
from ehrseq.survival_data import SurvivalDataset, collate_visits, load_survival
from ehrseq.tasks import ClinicalLFTask, MortalityTask, SurvivalTask

TOKEN_MODELS = ("lstm", "transformer", "gpt2")  # read paths.SEQUENCES and paths.VOCAB
EMBEDDING_MODELS = ("clinical_lf",)  # read paths.INTERIM and paths.TEXT_EMBEDDINGS
SURVIVAL_MODELS = ("survival_lstm",)  # read paths.SURVIVAL_SEQUENCES (the landmark view) and paths.VOCAB
# read paths.INTERIM through ehrseq.patient_visits (their own train/evaluate/generate blocks);
# dvc.yaml names that module as their `index`, so a change to it re-trains them
PATIENT_MODELS = ("prompt_bart",)


@dataclass
class ModelData:
    datasets: dict[str, Dataset]  # split -> dataset (with `lengths` and `labels`)
    model_inputs: dict[str, Any]  # constructor arguments the data fixes (vocab_size, step_dim, ...)
    collate_fn: Callable
    encoder: FeatureEncoder | None = None
    events: pd.DataFrame | None = field(default=None, repr=False)  # clinical_lf: to name explained events
    dropped: dict[str, dict[str, int]] = field(default_factory=dict)  # split -> rows dropped by reason

    def loader(self, split: str, batch_size: int, device: torch.device, **kwargs) -> DataLoader:
        return token_loader(self.datasets[split], batch_size, device=device, collate_fn=self.collate_fn, **kwargs)


def data_inputs(model: str) -> tuple[str, ...]:
    """The constructor arguments of `model` that its data fixes (`ModelData.model_inputs`);
    params.yaml sets all the others."""
    if model in TOKEN_MODELS:
        return ("vocab_size",)
    if model in EMBEDDING_MODELS:
        return ("step_dim", "static_dim")
    if model in SURVIVAL_MODELS:
        return ("vocab_size", "horizon_bins", "initial_hazard")
    if model in PATIENT_MODELS:  # patient_visits.build_model_inputs, and train.prompt_bart.max_length
        return ("vocab_size", "n_numeric", "cat_cardinalities", "pad_token_id", "bos_token_id", "eos_token_id",
                "max_length")
    raise KeyError(f"unknown model {model!r}; token models {TOKEN_MODELS}, embedding models {EMBEDDING_MODELS}")


def task_class(model: str) -> type[MortalityTask] | type[SurvivalTask]:
    if model in SURVIVAL_MODELS:
        return SurvivalTask
    return ClinicalLFTask if model in EMBEDDING_MODELS else MortalityTask


def checkpoint_encoder(checkpoint: dict[str, Any]) -> FeatureEncoder | None:
    """The feature encoder a checkpoint was trained with (None for token models)."""
    encoder = checkpoint["metadata"].get("encoder")
    return None if encoder is None else FeatureEncoder.from_dict(encoder)


def load_model_data(
    model: str, splits: Sequence[str], *, max_events: int | None = None, encoder: FeatureEncoder | None = None,
) -> ModelData:
    """Datasets of `splits` for `model`. For clinical_lf, pass `max_events` to fit a new
    encoder on train (training) or a fitted `encoder` (evaluation, explanation)."""
    if model in TOKEN_MODELS:
        vocab_size = read_vocab_size(paths.VOCAB)
        datasets = {
            s: TokenSequenceDataset(load_sequences(paths.SEQUENCES / f"{s}.parquet", vocab_size)) for s in splits
        }
        return ModelData(datasets, {"vocab_size": vocab_size}, collate_tokens)
    if model in EMBEDDING_MODELS:
        events = pd.read_parquet(paths.EVENTS)
        cohort = pd.read_parquet(paths.COHORT)
        embeddings = read_text_embeddings(paths.TEXT_EMBEDDINGS)
        if encoder is None:
            if max_events is None:
                raise ValueError("clinical_lf needs max_events to fit a feature encoder, or a fitted encoder")
            encoder = fit_encoder(events, cohort, embeddings.texts, embeddings.vectors, max_events)
        datasets = {s: build_dataset(events, cohort, embeddings.texts, embeddings.vectors, encoder, s) for s in splits}
        return ModelData(datasets, {"step_dim": encoder.step_dim, "static_dim": encoder.static_dim}, collate,
                         encoder, events)
    if model in SURVIVAL_MODELS:
        vocab_size = read_vocab_size(paths.VOCAB)
        loaded = {s: load_survival(paths.SURVIVAL_SEQUENCES / f"{s}.parquet", vocab_size) for s in splits}
        datasets = {s: SurvivalDataset(frame) for s, (frame, _) in loaded.items()}
        horizons = {d.horizon_bins for d in datasets.values()} - {None}
        if len(horizons) != 1:
            raise ValueError(f"survival splits {list(splits)} must share one horizon; found {sorted(horizons)}")
        inputs = {"vocab_size": vocab_size, "horizon_bins": horizons.pop()}
        if "train" in loaded:  # the baseline hazard starts at the train split's Kaplan-Meier hazards
            train = loaded["train"][0]
            inputs["initial_hazard"] = kaplan_meier_hazards(train["event_bin"], train["event"], inputs["horizon_bins"])
        return ModelData(datasets, inputs, collate_visits, dropped={s: dropped for s, (_, dropped) in loaded.items()})
    raise KeyError(f"unknown model {model!r}; token models {TOKEN_MODELS}, embedding models {EMBEDDING_MODELS}")

