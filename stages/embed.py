"""DVC stage `embed`: distinct event texts -> data/processed/text_embeddings/.

Vectors persist in the machine's embedding cache (`embed.cache_dir`, by default
`$EHRSEQ_CACHE/embeddings` or `~/.cache/ehrseq/embeddings`), shared by every workspace,
clone and queued experiment, so a run encodes only texts that no earlier run with the same
model and settings has seen. The cache only saves time: the output is the same bytes
whatever the cache holds, so it is not a DVC output and DVC tracks only the settings that
change vectors (model, pooling, max_length).
"""
import logging
import time

from ehrseq import paths
from ehrseq.embeddings import (
    EmbeddingCache,
    TextEncoder,
    default_cache_dir,
    distinct_texts,
    embed_texts,
    write_text_embeddings,
)
from ehrseq.io import setup_logging, write_json
from ehrseq.params import load_params

log = logging.getLogger("ehrseq.stages.embed")

EVENTS = paths.EVENTS
OUT = paths.TEXT_EMBEDDINGS
METRICS = paths.metrics_json("embed")


def main() -> None:
    setup_logging()
    params = load_params("embed")["embed"]
    start = time.time()
    texts, rows = distinct_texts(EVENTS)
    log.info("read %d events with %d distinct texts from %s", rows, len(texts), EVENTS)
    encoder = TextEncoder(params["model"], params["pooling"], params["max_length"], params["batch_size"])
    cache_dir = params["cache_dir"] or default_cache_dir()
    log.info("embedding cache: %s", cache_dir)
    cache = EmbeddingCache(cache_dir, encoder.settings)
    vectors, stats = embed_texts(texts, encoder, cache, params["shard_size"])
    meta = {"model_param": params["model"], **encoder.settings}
    write_text_embeddings(OUT, texts, vectors, meta)
    log.info("wrote %d vectors of dim %d to %s", len(texts), encoder.dim, OUT)
    write_json(METRICS, {
        "rows": rows,
        "distinct_texts": len(texts),
        "cache_hits": stats["cache_hits"],
        "encoded": stats["encoded"],
        "texts_per_s": stats["encoded"] / stats["encode_seconds"] if stats["encoded"] else None,
        "dim": encoder.dim,
        **meta,
        "device": str(encoder.device),
        "seconds": round(time.time() - start, 2),
    })


if __name__ == "__main__":
    main()
