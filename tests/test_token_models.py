"""Token models: shapes, causality, padding invariance, packing, and learning a planted signal."""
from __future__ import annotations

import pytest
import torch

from conftest import TOY_VOCAB, toy_sequences
from ehrseq.data import TokenSequenceDataset, collate_tokens, token_loader
from ehrseq.metrics import auroc
from ehrseq.models import build_model
from ehrseq.models.lstm import reverse_within_length
from ehrseq.models.transformer import attention_mask_4d
from ehrseq.schema import PAD_ID
from ehrseq.tasks import NextTokenTask, mortality_task
from ehrseq.training import FitConfig, fit, predict

torch.set_num_threads(1)
CPU = torch.device("cpu")

LSTM = dict(embedding_dim=8, hidden_size=12, num_layers=2, dropout=0.1)
TINY = {  # variant -> (registered model, its arguments)
    "lstm": ("lstm", dict(LSTM, bidirectional=True)),  # padded on CPU ("auto")
    "lstm_packed": ("lstm", dict(LSTM, bidirectional=True, packed=True)),
    "lstm_forward": ("lstm", dict(LSTM, bidirectional=False, packed=True)),
    "transformer": ("transformer", dict(d_model=16, n_layers=2, n_heads=2, dropout=0.1, attention_dropout=0.1,
                                        max_positions=64)),
    "gpt2": ("gpt2", dict(n_embd=16, n_layer=2, n_head=2, dropout=0.1, attention_dropout=0.1, max_positions=64)),
}


def tiny(variant: str, seed: int = 0):
    torch.manual_seed(seed)
    name, config = TINY[variant]
    return build_model(name, vocab_size=TOY_VOCAB, **config).eval()


def batch_of(*sequences: list[int]) -> dict[str, torch.Tensor]:
    return collate_tokens([{"input_ids": torch.tensor(s), "label": torch.tensor(0.0), "stay_id": torch.tensor(i)}
                           for i, s in enumerate(sequences)])


SEQ = [2, 5, 7, 12, 13, 14, 9, 15, 16, 3]


@pytest.mark.parametrize("name", TINY)
def test_output_shapes(name):
    model = tiny(name)
    batch = batch_of(SEQ, SEQ[:4])
    out = model(batch["input_ids"], batch["attention_mask"])
    hidden_size = {"lstm": 24, "lstm_packed": 24, "lstm_forward": 12, "transformer": 16, "gpt2": 16}[name]
    assert out["hidden"].shape == (2, 10, hidden_size)
    assert out["logits"].shape == (2,)
    assert out["pool_weights"].shape == (2, 10)
    assert torch.allclose(out["pool_weights"].sum(-1), torch.ones(2)) and (out["pool_weights"][1, 4:] == 0).all()
    assert model.next_token_logits(out["hidden"]).shape == (2, 10, TOY_VOCAB)
    assert torch.isfinite(out["hidden"]).all()  # padding positions included: no NaN from empty attention rows


@pytest.mark.parametrize("name", ["transformer", "gpt2"])
def test_attention_dropout_is_its_own_parameter(name):
    """With `dropout` 0, training-mode forwards repeat exactly when `attention_dropout` is 0
    and differ when it is not: the parameter reaches the attention weights, and `dropout`
    does not (params.yaml keeps it at 0 for CPU time, `dropout` at 0.1)."""
    registered, config = TINY[name]
    batch = batch_of(SEQ, SEQ[:4])
    for attention_dropout, repeats in ((0.0, True), (0.5, False)):
        torch.manual_seed(0)
        model = build_model(registered, vocab_size=TOY_VOCAB,
                            **{**config, "dropout": 0.0, "attention_dropout": attention_dropout}).train()
        first, second = (model(batch["input_ids"], batch["attention_mask"])["hidden"] for _ in range(2))
        assert torch.equal(first, second) == repeats, attention_dropout


@pytest.mark.parametrize("name", TINY)
def test_next_token_logits_never_see_the_future(name):
    model = tiny(name)
    changed = list(SEQ)
    changed[6] = 30  # change one token; the positions before it must not notice
    batch = batch_of(SEQ, changed)
    logits = model.next_token_logits(model(batch["input_ids"], batch["attention_mask"])["hidden"])  # [2, T, V]
    assert torch.allclose(logits[0, :6], logits[1, :6], atol=1e-6)
    assert not torch.allclose(logits[0, 6:], logits[1, 6:], atol=1e-4)


@pytest.mark.parametrize("name", TINY)
def test_more_padding_changes_nothing(name):
    model = tiny(name)
    alone = batch_of(SEQ[:6])
    padded = batch_of(SEQ[:6], SEQ + [17, 18, 19, 20])  # the short row now carries 8 pads
    a = model(alone["input_ids"], alone["attention_mask"])
    b = model(padded["input_ids"], padded["attention_mask"])
    assert torch.allclose(a["hidden"][0], b["hidden"][0, :6], atol=1e-5)
    assert torch.allclose(a["logits"][0], b["logits"][0], atol=1e-5)


def test_attention_rows_of_padding_are_never_empty():
    # left padding and an all-padding query at position 0: with a plain causal +
    # key-padding mask that row would have no key and softmax would give NaN
    mask = torch.tensor([[False, False, True, True], [True, True, True, False]])
    assert attention_mask_4d(mask).any(dim=-1).all()
    model = tiny("transformer").train()
    out = model(torch.tensor([[PAD_ID, PAD_ID, 7, 8], [2, 7, 8, PAD_ID]]), mask)
    out["hidden"].sum().backward()
    assert torch.isfinite(out["hidden"]).all() and torch.isfinite(out["logits"]).all()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize("bidirectional", [True, False])
def test_packed_and_padded_lstm_agree_on_real_tokens(bidirectional):
    config = dict(LSTM, bidirectional=bidirectional)
    torch.manual_seed(0)
    packed = build_model("lstm", vocab_size=TOY_VOCAB, packed=True, **config).eval()
    padded = build_model("lstm", vocab_size=TOY_VOCAB, packed=False, **config).eval()
    padded.load_state_dict(packed.state_dict())
    batch = batch_of(SEQ, SEQ[:3], SEQ[2:8])
    a = packed(batch["input_ids"], batch["attention_mask"])
    b = padded(batch["input_ids"], batch["attention_mask"])
    mask = batch["attention_mask"]
    assert torch.allclose(a["hidden"][mask], b["hidden"][mask], atol=1e-6)
    assert torch.allclose(a["logits"], b["logits"], atol=1e-6)


def test_reverse_within_length_keeps_padding_in_place():
    x, lengths = torch.tensor([[1, 2, 3, 0, 0], [4, 5, 6, 7, 8]]), torch.tensor([3, 5])
    assert reverse_within_length(x, lengths).tolist() == [[3, 2, 1, 0, 0], [8, 7, 6, 5, 4]]
    features = x[..., None].expand(2, 5, 3)  # [B, T, F]: whole feature vectors move together
    assert torch.equal(reverse_within_length(features, lengths)[..., 1], reverse_within_length(x, lengths))


@pytest.mark.parametrize("name", ["transformer", "gpt2"])
def test_too_long_sequences_name_the_limit(name):
    model = tiny(name)
    ids = torch.full((1, 65), 7)
    with pytest.raises(ValueError, match="65 tokens exceeds max_positions=64"):
        model(ids, ids != PAD_ID)


LEARN = {
    "lstm": dict(embedding_dim=16, hidden_size=32, num_layers=1, dropout=0.1, bidirectional=True),
    "transformer": dict(d_model=32, n_layers=2, n_heads=2, dropout=0.1, attention_dropout=0.1, max_positions=128),
    "gpt2": dict(n_embd=32, n_layer=2, n_head=2, dropout=0.1, attention_dropout=0.1, max_positions=128),
}


@pytest.mark.parametrize("name", LEARN)
def test_tiny_model_learns_the_planted_risk_token(tmp_path, name):
    train, val, test = toy_sequences(500, seed=11), toy_sequences(150, seed=12), toy_sequences(300, seed=13)
    task, weights = mortality_task(train["mortality"].to_numpy(), "pos_weight")
    datasets = [TokenSequenceDataset(f) for f in (train, val, test)]
    train_loader = token_loader(datasets[0], 32, device=CPU, seed=0, weights=weights)
    val_loader, test_loader = (token_loader(d, 128, device=CPU, shuffle=False) for d in datasets[1:])
    torch.manual_seed(0)
    model = build_model(name, vocab_size=TOY_VOCAB, **LEARN[name])
    # a short next-token pretraining first, as the train stage does
    fit(model, NextTokenTask(), train_loader, val_loader,
        FitConfig(epochs=1, lr=3e-3, weight_decay=0.01, warmup_steps=5, schedule="cosine", min_lr_ratio=0.1,
                  grad_clip=1.0, patience=None, seed=0),
        checkpoint_dir=tmp_path / "pretrain", live_dir=tmp_path / "live_pretrain", device=CPU)
    fit(model, task, train_loader, val_loader,
        FitConfig(epochs=8, lr=3e-3, weight_decay=0.01, warmup_steps=10, schedule="cosine", min_lr_ratio=0.1,
                  grad_clip=1.0, patience=3, seed=0),
        checkpoint_dir=tmp_path / "finetune", live_dir=tmp_path / "live_finetune", device=CPU)
    p = predict(model, task, test_loader, CPU)
    truth = test.set_index("stay_id").loc[p["stay_id"], "true_risk"].to_numpy()
    model_auroc, oracle_auroc = auroc(p["label"], p["prob"]), auroc(p["label"], truth)
    assert model_auroc > 0.9 and model_auroc >= 0.9 * oracle_auroc, (model_auroc, oracle_auroc)
