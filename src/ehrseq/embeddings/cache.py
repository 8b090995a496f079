"""A persistent, content-addressed store of text vectors, kept in a few large shards.

Layout under the cache root:

    <root>/<namespace>/settings.json                      what produced these vectors
    <root>/<namespace>/shard-<id>/keys.npy                 [N] text keys (32 hex chars)
    <root>/<namespace>/shard-<id>/vectors.npy              float32 [N, D]

The namespace is a digest of the encoder settings (model weights' hash, pooling,
max_length, dtype) and every key hashes the namespace together with the text, so a
vector is only ever found again for the same text under the same settings: changing the
model or the pooling can never reuse old vectors.

Each shard directory is written whole to a temporary sibling and renamed into place
(`atomic_path`), so a killed run leaves only complete shards plus, at worst, a dot-named
temporary that loading ignores. The keys files are the index: opening the cache reads
them (32 bytes a text) and memory-maps the vectors, which are read on lookup.

One cache serves the whole machine (`default_cache_dir`, as Hugging Face keeps one hub
cache): every workspace, clone and queued DVC experiment finds the vectors any of them
encoded. Processes share it without locks: a shard is immutable once renamed into place,
its name is a fresh uuid (two writers never touch the same path), and the index lives in
the shard directories themselves, so there is no index file to lose updates of. Two runs
encoding the same text at once both store it; either copy is the same vector, since the
encoder's canonical batches make a vector independent of its run.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import uuid
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ehrseq.io import atomic_path, write_json

log = logging.getLogger(__name__)

_SHARD_NAME = re.compile(r"shard-[0-9a-f]+")


def default_cache_dir() -> Path:
    """The machine's embedding cache: `$EHRSEQ_CACHE/embeddings` if that variable is set,
    else `$XDG_CACHE_HOME/ehrseq/embeddings`, else `~/.cache/ehrseq/embeddings`."""
    if os.environ.get("EHRSEQ_CACHE"):
        return Path(os.environ["EHRSEQ_CACHE"]).expanduser() / "embeddings"
    xdg = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(xdg).expanduser() / "ehrseq" / "embeddings"


class EmbeddingCache:
    def __init__(self, root: str | Path, settings: dict):
        canonical = json.dumps(settings, sort_keys=True).encode()
        self._salt = hashlib.sha256(canonical).digest()
        self.dir = Path(root) / self._salt.hex()[:16]
        self.settings = settings
        self.dim: int | None = None
        self._vectors: list[np.ndarray] = []  # one memory map per shard
        self._index: dict[bytes, tuple[int, int]] = {}  # key -> (shard, row)
        self._load()

    def key(self, text: str) -> bytes:
        return hashlib.blake2b(self._salt + text.encode(), digest_size=16).hexdigest().encode()

    def __contains__(self, key: bytes) -> bool:
        return key in self._index

    def __len__(self) -> int:
        return len(self._index)

    @property
    def shards(self) -> int:
        return len(self._vectors)

    def _load(self) -> None:
        if not self.dir.is_dir():
            return
        ignored = []
        for path in sorted(self.dir.iterdir()):
            if path.name == "settings.json":
                continue
            if not (path.is_dir() and _SHARD_NAME.fullmatch(path.name)):
                ignored.append(path.name)  # temporaries of an interrupted write, strays
                continue
            try:
                keys = np.load(path / "keys.npy")
                vectors = np.load(path / "vectors.npy", mmap_mode="r")
                if keys.ndim != 1 or vectors.ndim != 2 or len(keys) != len(vectors):
                    raise ValueError(f"keys {keys.shape} do not match vectors {vectors.shape}")
                if self.dim is not None and vectors.shape[1] != self.dim:
                    raise ValueError(f"vectors have dim {vectors.shape[1]}, other shards {self.dim}")
            except (OSError, ValueError, EOFError) as err:
                log.warning("embedding cache: ignoring unreadable shard %s: %s", path, err)
                continue
            self._register(keys, vectors)
        if ignored:
            log.warning(
                "embedding cache: ignored %d entries in %s that are not complete shards "
                "(being written by a concurrent run, or left by an interrupted one): %s",
                len(ignored), self.dir, ", ".join(ignored[:5]),
            )
        log.info("embedding cache %s: %d vectors in %d shards", self.dir, len(self), self.shards)

    def _register(self, keys: np.ndarray, vectors: np.ndarray) -> None:
        shard = len(self._vectors)
        self._vectors.append(vectors)
        self.dim = vectors.shape[1]
        for row, key in enumerate(keys.tolist()):
            self._index[key] = (shard, row)

    def add(self, keys: Sequence[bytes], vectors: np.ndarray) -> None:
        """Store one shard: `keys[i]` names `vectors[i]` (float32 [N, D])."""
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or len(keys) != len(vectors):
            raise ValueError(f"{len(keys)} keys for vectors of shape {vectors.shape}")
        if self.dim is not None and vectors.shape[1] != self.dim:
            raise ValueError(f"vectors have dim {vectors.shape[1]}, the cache holds dim {self.dim}")
        if not (self.dir / "settings.json").exists():
            write_json(self.dir / "settings.json", self.settings)
        keys = np.array(keys, dtype="S32")
        with atomic_path(self.dir / f"shard-{uuid.uuid4().hex}") as tmp:
            tmp.mkdir()
            np.save(tmp / "keys.npy", keys)
            np.save(tmp / "vectors.npy", vectors)
            final = self.dir / tmp.name
        self._register(keys, np.load(final / "vectors.npy", mmap_mode="r"))

    def get(self, keys: Sequence[bytes]) -> np.ndarray:
        """float32 [len(keys), D]; every key must be in the cache."""
        if not keys:
            return np.empty((0, self.dim or 0), dtype=np.float32)
        missing = [k for k in keys if k not in self._index]
        if missing:
            raise KeyError(f"{len(missing)} keys not in the embedding cache {self.dir}, e.g. {missing[0]!r}")
        where = np.array([self._index[k] for k in keys])  # [N, 2]: shard, row
        out = np.empty((len(keys), self.dim), dtype=np.float32)
        for shard in np.unique(where[:, 0]):
            selected = where[:, 0] == shard
            out[selected] = self._vectors[shard][where[selected, 1]]
        return out
