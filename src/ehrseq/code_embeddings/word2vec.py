"""The gensim skip-gram baseline, on the same sentences and with a matched budget.

`Word2Vec(sg=1)` with negative sampling over the very token sequences TemporalMed2Vec
trains on (rare codes already `<unk>`, so `min_count=1` keeps the same vocabulary).
Matched budget: the same vector size, epochs and negatives per pair, and the same number
of contexts per target -- a fixed window of C/2 codes each side (`shrink_windows=False`;
gensim's default shrinks it at random) -- and no frequent-code subsampling (`sample=0`),
which TemporalMed2Vec does not do either. What differs is what a context is (neighbours
in sequence order, not codes within a time horizon weighted by exp(-lambda dt)) and the
optimiser (gensim's SGD with a linearly decaying rate). Vectors are word plus context
vector, exactly as for TemporalMed2Vec (`code_vectors`), so both are read the same way.

Reproducible with `workers=1` and a fixed `seed`; gensim seeds each word's initial
vector with `hashfxn(word + str(seed))`, and Python's own `hash` of a string changes per
process (PYTHONHASHSEED), so a stable hash is passed.
"""
from __future__ import annotations

import zlib

import numpy as np
import pandas as pd

# gensim cuts longer sentences silently (its MAX_WORDS_IN_BATCH); split them instead.
MAX_SENTENCE = 10000


def _stable_hash(text: str) -> int:
    return zlib.crc32(text.encode("utf-8"))


def train_word2vec(
    sentences: list[list[str]], *, vector_size: int, window: int, negative: int, epochs: int, seed: int,
) -> pd.DataFrame:
    """Skip-gram vectors, one row per word: code, vector (float32 list)."""
    from gensim.models import Word2Vec  # imported on use: only this stage needs gensim

    chunks = [s[i:i + MAX_SENTENCE] for s in sentences for i in range(0, len(s), MAX_SENTENCE)]
    model = Word2Vec(
        sentences=chunks, vector_size=vector_size, window=window, min_count=1, sample=0.0, sg=1, hs=0,
        negative=negative, ns_exponent=0.75, epochs=epochs, workers=1, seed=seed, hashfxn=_stable_hash,
        shrink_windows=False,
    )
    words = list(model.wv.index_to_key)
    # word plus context vector (syn1neg, same row order), as TemporalMed2Vec.code_vectors
    vectors = (model.wv.vectors + model.syn1neg).astype(np.float32)
    return pd.DataFrame({"code": words, "vector": list(vectors)})
