"""The token models' input files, read and checked: a split of `sequences/{split}.parquet`
(`load_sequences`) and `vocab.csv` (`read_vocab_size`).

pandas only, no torch: the logreg baseline reads the same files and never imports torch
(~1.6 s of its stage's start-up); `data.py` turns a loaded split into torch batches.
"""
from __future__ import annotations

import logging
import os

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from ehrseq.schema import PAD_ID, SPECIAL_TOKENS

log = logging.getLogger(__name__)

# The columns of sequences/{split}.parquet that token models read (see DESIGN.md).
TOKEN_COLUMNS = ("stay_id", "subject_id", "input_ids", "mortality")


def read_vocab_size(path: str | os.PathLike) -> int:
    """Number of tokens in vocab.csv, after checking ids are 0..n-1 with the specials first."""
    vocab = pd.read_csv(path)
    missing = {"token", "str"} - set(vocab.columns)
    if missing:
        raise ValueError(f"{path}: missing column(s) {sorted(missing)}; has {list(vocab.columns)}")
    ids = vocab["token"].to_numpy()
    expected = np.arange(len(vocab))
    if not np.array_equal(ids, expected):
        row = int(np.flatnonzero(ids != expected)[0])
        raise ValueError(f"{path}: column 'token' must be 0..{len(vocab) - 1} in order; row {row} has {ids[row]}")
    head = tuple(vocab["str"].iloc[: len(SPECIAL_TOKENS)])
    if head != SPECIAL_TOKENS:
        raise ValueError(f"{path}: first tokens must be {SPECIAL_TOKENS}, found {head}")
    return len(vocab)


def load_sequences(path: str | os.PathLike, vocab_size: int | None = None) -> pd.DataFrame:
    """Read the token-model columns of one split and check them against the contract."""
    names = pq.read_schema(path).names
    missing = [c for c in TOKEN_COLUMNS if c not in names]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; has {names}")
    frame = pd.read_parquet(path, columns=list(TOKEN_COLUMNS))
    if frame.empty:
        raise ValueError(f"{path}: no rows")

    labels = frame["mortality"]
    bad = ~labels.isin([0, 1])
    if bad.any():
        row = frame[bad].iloc[0]
        raise ValueError(f"{path}: column 'mortality' must be 0/1; stay_id {row.stay_id} has {row.mortality}")

    lengths = frame["input_ids"].map(len)
    short = lengths < 2  # next-token prediction needs at least one (input, target) pair
    if short.any():
        row = frame[short].iloc[0]
        raise ValueError(
            f"{path}: column 'input_ids' needs >= 2 tokens; stay_id {row.stay_id} has {list(row.input_ids)}")

    flat = np.concatenate(frame["input_ids"].to_list())
    owner = np.repeat(frame["stay_id"].to_numpy(), lengths.to_numpy())
    invalid = flat == PAD_ID  # a pad inside a sequence would break the prefix masks
    if vocab_size is not None:
        invalid |= (flat < 0) | (flat >= vocab_size)
    if invalid.any():
        i = int(np.flatnonzero(invalid)[0])
        limit = f"1..{vocab_size - 1}" if vocab_size is not None else f"not {PAD_ID} (<pad>)"
        raise ValueError(f"{path}: column 'input_ids' must hold ids {limit}; stay_id {owner[i]} has {flat[i]}")

    log.info("read %s: %d stays, %d tokens, %.1f%% mortality", path, len(frame), len(flat), 100 * labels.mean())
    return frame
