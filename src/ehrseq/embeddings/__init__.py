"""Text embeddings of event descriptions, with a persistent content-hash cache.

encoder.py   texts -> vectors with a Hugging Face encoder (cls / mean pooling)
cache.py     sharded on-disk store of vectors keyed by (model hash, settings, text), one per machine
pipeline.py  distinct texts of the events -> vectors, encoding only cache misses
"""
from ehrseq.embeddings.cache import EmbeddingCache, default_cache_dir
from ehrseq.embeddings.pipeline import (
    TextEmbeddings,
    distinct_texts,
    embed_texts,
    read_text_embeddings,
    write_text_embeddings,
)

# encoder.py imports `transformers` (seconds); its names load on first use, so the stages
# that only read precomputed vectors (every model's data loading) do not pay for it.
_ENCODER_NAMES = ("TextEncoder", "fingerprint_model_dir", "pool", "resolve_model_dir", "runtime_identity")


def __getattr__(name: str):
    if name in _ENCODER_NAMES:
        from ehrseq.embeddings import encoder

        return getattr(encoder, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "EmbeddingCache",
    "TextEmbeddings",
    "TextEncoder",
    "default_cache_dir",
    "distinct_texts",
    "embed_texts",
    "fingerprint_model_dir",
    "pool",
    "read_text_embeddings",
    "resolve_model_dir",
    "runtime_identity",
    "write_text_embeddings",
]
