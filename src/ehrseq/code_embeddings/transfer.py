"""Initialise a token model's embedding table from code vectors (e.g. med2vec's).

The mapping, token string -> code vector:
- a token that is a code of the vectors (`NDC//...`, `ITEM//225158`, `LAB//50912`) takes
  that code's vector;
- a value-bin token `LAB//50912//Q7` takes its code's vector (`LAB//50912`): the code
  vectors know codes, not values, so every bin of a code starts at the same point;
- everything else (special tokens, demographics, `<unk>`, gap tokens, codes the vectors
  lack) keeps the table's random initialisation.
The code vectors are rescaled by one factor so their standard deviation equals the
table's initial one: the geometry (cosines) is kept, and the shared rows start at the
scale the model was tuned for.
"""
from __future__ import annotations

import re

import numpy as np
import pandas as pd
import torch
from torch import nn

from ehrseq.code_embeddings.sequences import UNK

_BIN_SUFFIX = re.compile(r"//Q\d+$")


def code_of_token(token: str, codes: set[str]) -> str | None:
    """The code whose vector a token takes, or None (see the module doc)."""
    if token == UNK or token.startswith("<"):
        return None
    if token in codes:
        return token
    base = _BIN_SUFFIX.sub("", token)
    return base if base != token and base in codes else None


@torch.no_grad()
def init_embedding_from_codes(embedding: nn.Embedding, tokens: list[str], code_vectors: pd.DataFrame) -> dict:
    """Overwrite the rows of `embedding` whose token maps to a code; returns what was mapped."""
    if len(tokens) != embedding.num_embeddings:
        raise ValueError(f"{len(tokens)} token strings for an embedding table of {embedding.num_embeddings} rows")
    vectors = dict(zip(code_vectors["code"], code_vectors["vector"]))
    dim = len(next(iter(vectors.values()))) if vectors else 0
    if dim != embedding.embedding_dim:
        raise ValueError(f"code vectors have {dim} dimensions, the token embedding {embedding.embedding_dim}: "
                         f"set the token model's embedding size (e.g. train.lstm.model.embedding_dim) to {dim}, "
                         "or the code model's embedding_dim to match")
    mapped = [(row, code_of_token(t, set(vectors))) for row, t in enumerate(tokens)]
    mapped = [(row, code) for row, code in mapped if code is not None]
    if not mapped:
        raise ValueError("no token of the vocabulary is a code of the code vectors: nothing to initialise")
    rows = torch.tensor([row for row, _ in mapped])
    matrix = torch.from_numpy(np.stack([np.asarray(vectors[code], dtype=np.float32) for _, code in mapped]))
    scale = embedding.weight.std() / matrix.std().clamp_min(1e-12)
    embedding.weight[rows] = (matrix * scale).to(embedding.weight.dtype)
    return {"tokens": len(tokens), "initialised": len(mapped),
            "from_value_bins": sum(code != tokens[row] for row, code in mapped),
            "distinct_codes_used": len({code for _, code in mapped}), "scale": float(scale)}
