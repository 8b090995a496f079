"""From events to one vector per distinct event text, encoding only what the cache lacks.

The output folder is what `clinical_lf` reads:
    texts.parquet   text, row        (row indexes vectors.npy)
    vectors.npy     float32 [N, D]
    meta.json       model identity, dim, pooling, max_length, dtype
"""
from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import duckdb
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
from tqdm import tqdm

from ehrseq.embeddings.cache import EmbeddingCache
from ehrseq.io import atomic_path, read_json, write_json, write_parquet

if TYPE_CHECKING:  # encoder.py imports transformers; reading vectors must not
    from ehrseq.embeddings.encoder import TextEncoder

log = logging.getLogger(__name__)


def distinct_texts(events_path: str | Path) -> tuple[list[str], int]:
    """The sorted distinct values of the `text` column, and the number of rows read.

    DuckDB reads only that column, so this scales to event tables that do not fit in
    pandas; a null text is an error naming an example row."""
    columns = pq.read_schema(events_path).names
    if "text" not in columns:
        raise ValueError(f"{events_path}: no column 'text' (columns: {', '.join(columns)})")
    with duckdb.connect() as con:
        con.read_parquet(str(events_path)).create_view("events")
        rows, nulls = con.execute("SELECT count(*), count(*) - count(text) FROM events").fetchone()
        if nulls:
            example = con.execute("SELECT * FROM events WHERE text IS NULL LIMIT 1").df().iloc[0].to_dict()
            raise ValueError(f"{events_path}: column 'text' is null in {nulls} of {rows} rows, e.g. {example}")
        texts = [t for (t,) in con.execute("SELECT DISTINCT text FROM events").fetchall()]
    return sorted(texts), rows


def embed_texts(
    texts: Sequence[str], encoder: TextEncoder, cache: EmbeddingCache, shard_size: int, progress: bool = True
) -> tuple[np.ndarray, dict]:
    """float32 [len(texts), D] for distinct `texts`, and counts: cache hits, encoded, seconds.

    Missing texts are encoded `shard_size` at a time and each batch of results is stored
    as a shard before the next starts, so an interrupted run keeps all but the last
    shard's work."""
    if shard_size < 1:
        raise ValueError(f"embed.shard_size={shard_size}: must be at least 1")
    if len(set(texts)) != len(texts):
        raise ValueError(f"embed_texts needs distinct texts; got {len(texts) - len(set(texts))} duplicates")
    keys = [cache.key(text) for text in texts]
    missing = [i for i, key in enumerate(keys) if key not in cache]
    # Shards in the encoder's canonical order: each shard spans few token lengths, so its
    # equal-length batches are full. (Any order gives the same vectors; this one is fast.)
    missing = [missing[j] for j in encoder.canonical_order([texts[i] for i in missing])]
    log.info("%d distinct texts: %d in the cache, %d to encode", len(texts), len(texts) - len(missing), len(missing))
    if missing:
        _ = encoder.model  # load the weights before the clock starts: texts/s times encoding only
    start = time.perf_counter()
    with tqdm(total=len(missing), unit="text", desc="embed", disable=None if progress and missing else True) as bar:
        # disable=None: a live bar on a terminal, none in CI logs
        for first in range(0, len(missing), shard_size):
            chunk = missing[first : first + shard_size]
            cache.add([keys[i] for i in chunk], encoder.encode([texts[i] for i in chunk], progress=bar))
    seconds = time.perf_counter() - start
    if missing:
        log.info("encoded %d texts in %.1f s (%.0f texts/s)", len(missing), seconds, len(missing) / seconds)
    stats = {"cache_hits": len(texts) - len(missing), "encoded": len(missing), "encode_seconds": seconds}
    return cache.get(keys), stats


@dataclass
class TextEmbeddings:
    texts: pd.DataFrame  # text, row
    vectors: np.ndarray  # float32 [N, D]
    meta: dict

    def lookup(self, texts: Sequence[str]) -> np.ndarray:
        """float32 [len(texts), D]; a text that was not embedded is an error."""
        rows = pd.Index(self.texts["text"]).get_indexer(texts)
        if (rows < 0).any():
            missing = [t for t, r in zip(texts, rows) if r < 0]
            raise KeyError(f"{len(missing)} texts have no embedding (re-run the embed stage?), e.g. {missing[0]!r}")
        return self.vectors[self.texts["row"].to_numpy()[rows]]


def write_text_embeddings(path: str | Path, texts: Sequence[str], vectors: np.ndarray, meta: dict) -> None:
    if len(texts) != len(vectors):
        raise ValueError(f"{len(texts)} texts for {len(vectors)} vectors")
    with atomic_path(path) as tmp:
        tmp.mkdir()
        write_parquet(tmp / "texts.parquet", pd.DataFrame({"text": list(texts), "row": np.arange(len(texts))}))
        np.save(tmp / "vectors.npy", np.asarray(vectors, dtype=np.float32))
        write_json(tmp / "meta.json", {**meta, "dim": int(vectors.shape[1]), "texts": len(texts)})


def read_text_embeddings(path: str | Path) -> TextEmbeddings:
    path = Path(path)
    texts, vectors = pd.read_parquet(path / "texts.parquet"), np.load(path / "vectors.npy")
    return TextEmbeddings(texts, vectors, read_json(path / "meta.json"))
