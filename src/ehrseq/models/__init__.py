"""The model registry: every model's name and where its class lives.

Models are imported by name on first use, so that training an LSTM does not pay for
importing `transformers`; this module imports no torch, so the report stage reads the
names without paying for it (~1.7 s). A model's constructor takes plain keyword
arguments (one `train.MODEL.model` params section); the same name and arguments, stored
in a checkpoint, rebuild it.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import nn

# name -> "module:class"
REGISTRY = {
    "lstm": "ehrseq.models.lstm:LSTMTokenModel",
    "transformer": "ehrseq.models.transformer:TransformerTokenModel",
    "gpt2": "ehrseq.models.gpt2:GPT2TokenModel",
    "clinical_lf": "ehrseq.models.clinical_lf:ClinicalLF",
    "survival_lstm": "ehrseq.models.survival_lstm:SurvivalLSTM",
    "prompt_bart": "ehrseq.models.prompt_bart:PromptBart",
}
# Models with stages of their own (`train_NAME`, `evaluate_NAME`), outside the `models`
# foreach and the registry: med2vec learns code vectors, it has no prediction head.
OWN_STAGE_MODELS = ("med2vec",)


def model_class(name: str) -> type[nn.Module]:
    if name not in REGISTRY:
        raise KeyError(f"unknown model {name!r}; registered: {sorted(REGISTRY)}")
    module, cls = REGISTRY[name].split(":")
    return getattr(importlib.import_module(module), cls)


def build_model(name: str, **config) -> nn.Module:
    return model_class(name)(**config)
