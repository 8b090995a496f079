"""The model registry, and the mortality head every token model shares.

Models are imported by name on first use, so that training an LSTM does not pay for
importing `transformers`. A model's constructor takes plain keyword arguments (one
`train.MODEL.model` params section); the same name and arguments, stored in a
checkpoint, rebuild it.
"""
from __future__ import annotations

import importlib

import torch
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


class MortalityHead(nn.Module):
    """Attention pooling over real tokens, then one logit.

    Why attention pooling and not the last token's state: a risk event may sit hundreds
    of tokens before `<eos>`; a learned weight per position gives the loss a direct path
    to it, which matters most for the LSTM, whose last state must otherwise carry it
    through every later step. The weights are returned for inspection.
    """

    def __init__(self, hidden_size: int, dropout: float):
        super().__init__()
        self.score = nn.Linear(hidden_size, 1)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(hidden_size, 1)

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        scores = self.score(hidden).squeeze(-1)  # [B, T]
        scores = scores.masked_fill(~attention_mask, float("-inf"))
        weights = scores.softmax(dim=-1)  # [B, T], zero on padding
        pooled = torch.einsum("bt,bth->bh", weights, hidden)  # [B, H]
        logit = self.classifier(self.dropout(pooled)).squeeze(-1)  # [B]
        return logit, weights
