"""Synthetic patients from prompt_bart, the independent-codes baseline, and how both
compare with real patients (fidelity, privacy, utility).

Sampling: the encoder sees the fully masked patient `[BOS, <mask>, END]` (the corruption
training starts from when it masks from visit 0 on) and the demographic prompts; the
decoder writes the patient visit after visit, each visit conditioned on the earlier ones
through its causal self-attention, with a key/value cache. `StructureProcessor` admits
only valid structure at every step: after `<v>` a type token; inside a type-t block only
type-t codes with a larger id than the previous one (the canonical order of
`patient_visits`, so no code repeats); a block ends with a later type token or `</v>`;
between visits `<v>` or END (END only after a first visit, `<v>` only below
`max_visits`). Temperature, top-k and top-p act on the admitted tokens.

Synthetic and real patients share one long format (`patient_visits.Patients`), so every
metric below reads both the same way.
"""
from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from scipy import stats as sstats
from sklearn.linear_model import LogisticRegression
from tqdm import tqdm

from ehrseq import metrics
from ehrseq.patient_visits import (
    BOS_ID,
    CODE_TYPES,
    END_ID,
    FIRST_CODE_ID,
    FIRST_TYPE_ID,
    MASK_ID,
    PAD_ID,
    VISIT_END_ID,
    VISIT_ID,
    DemographicEncoder,
    Patients,
    PatientVocab,
    cap_age,
    gender_group,
    race_group,
)

log = logging.getLogger(__name__)

# ----------------------------------------------------------------------- sampling


@dataclass
class SamplingConfig:
    temperature: float  # no defaults: params.yaml (`generate`) is their one home
    top_k: int  # 0: off
    top_p: float  # 1: off
    max_visits: int
    batch_size: int

    def __post_init__(self) -> None:
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0 or self.max_visits < 1:
            raise ValueError(f"top_k must be >= 0 and max_visits >= 1, got {self.top_k}, {self.max_visits}")


class StructureProcessor:
    """Per-row state of the visit grammar and the mask of admissible next tokens."""

    def __init__(self, token_types: np.ndarray, batch_size: int, max_visits: int, device: torch.device):
        self.token_types = torch.as_tensor(token_types, device=device)  # [V] type of each code, -1 else
        V = len(token_types)
        self.ids = torch.arange(V, device=device)
        present = torch.zeros(len(CODE_TYPES), dtype=torch.bool, device=device)
        present[self.token_types[self.token_types >= 0].unique()] = True
        # type tokens of types that have codes, with their type index (-1 for other tokens)
        self.type_of_type_token = torch.full((V,), -1, device=device)
        for t in range(len(CODE_TYPES)):
            if present[t]:
                self.type_of_type_token[FIRST_TYPE_ID + t] = t
        self.max_visits = max_visits
        B = batch_size
        self.phase = torch.zeros(B, dtype=torch.long, device=device)  # 0 between visits, 1 after <v>, 2 in a block
        self.cur_type = torch.full((B,), -1, device=device)
        self.last_code = torch.full((B,), -1, device=device)
        self.n_visits = torch.zeros(B, dtype=torch.long, device=device)
        self.done = torch.zeros(B, dtype=torch.bool, device=device)

    def allowed(self) -> torch.Tensor:
        """[B, V] True where a token keeps the sequence valid."""
        ids = self.ids[None, :]
        in_block = (self.phase == 2)[:, None]
        has_code = (self.last_code >= 0)[:, None]
        codes = in_block & (self.token_types[None, :] == self.cur_type[:, None]) & (ids > self.last_code[:, None])
        next_type = ((self.phase == 1)[:, None] | (in_block & has_code)) & (
            self.type_of_type_token[None, :] > self.cur_type[:, None])
        allowed = codes | next_type
        allowed[:, VISIT_END_ID] |= (in_block & has_code)[:, 0]
        between = self.phase == 0
        allowed[:, VISIT_ID] |= between & (self.n_visits < self.max_visits)
        allowed[:, END_ID] |= between & (self.n_visits >= 1)
        allowed[self.done] = False
        allowed[self.done, PAD_ID] = True
        assert allowed.any(dim=1).all(), "the grammar left a row without an admissible token"
        return allowed

    def update(self, token: torch.Tensor) -> None:
        """Advance every row by its sampled token [B]."""
        live = ~self.done
        is_code = live & (self.token_types[token] >= 0)
        self.last_code = torch.where(is_code, token, self.last_code)
        is_type = live & (self.type_of_type_token[token] >= 0)
        self.cur_type = torch.where(is_type, self.type_of_type_token[token], self.cur_type)
        self.last_code = torch.where(is_type, torch.full_like(token, -1), self.last_code)
        self.phase = torch.where(is_type, torch.full_like(token, 2), self.phase)
        opened = live & (token == VISIT_ID)
        self.n_visits += opened.long()
        self.phase = torch.where(opened, torch.ones_like(token), self.phase)
        self.cur_type = torch.where(opened, torch.full_like(token, -1), self.cur_type)
        closed = live & (token == VISIT_END_ID)
        self.phase = torch.where(closed, torch.zeros_like(token), self.phase)
        self.done |= live & (token == END_ID)


def filter_logits(logits: torch.Tensor, allowed: torch.Tensor, config: SamplingConfig) -> torch.Tensor:
    """Temperature, then the grammar, then top-k and top-p (nucleus) on what is left. [B, V]"""
    logits = (logits.float() / config.temperature).masked_fill(~allowed, float("-inf"))
    if config.top_k:
        kth = torch.topk(logits, min(config.top_k, logits.shape[-1]), dim=-1).values[:, -1:]  # [B, 1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if config.top_p < 1:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        # drop a token when the ones ranked above it already hold top_p; the best always stays
        drop_sorted = (cumulative - sorted_logits.softmax(dim=-1)) >= config.top_p
        logits = logits.masked_fill(torch.zeros_like(drop_sorted).scatter(1, order, drop_sorted), float("-inf"))
    return logits


@torch.no_grad()
def sample_sequences(model, x_num: np.ndarray, x_cat: np.ndarray, token_types: np.ndarray, config: SamplingConfig,
                     max_length: int, device: torch.device, seed: int) -> list[list[int]]:
    """Token sequences (BOS ... END) for each row of the demographics arrays."""
    model.eval()
    generator = torch.Generator(device=device).manual_seed(seed)
    out: list[list[int]] = []
    n = len(x_num)
    bar = tqdm(total=n, desc="sampling patients", unit="patient", disable=None)
    for start in range(0, n, config.batch_size):
        xn = torch.as_tensor(x_num[start:start + config.batch_size], device=device)
        xc = torch.as_tensor(x_cat[start:start + config.batch_size], device=device)
        B = len(xn)
        enc_ids = torch.tensor([[BOS_ID, MASK_ID, END_ID]] * B, device=device)
        hidden, enc_mask = model.encode(enc_ids, torch.ones_like(enc_ids, dtype=torch.bool), xn, xc)
        grammar = StructureProcessor(token_types, B, config.max_visits, device)
        tokens = torch.full((B, 1), BOS_ID, device=device)
        logits, cache = model.decode(tokens, hidden, enc_mask, xn, xc, use_cache=True)
        seqs = [tokens]
        for _ in range(max_length - 1):
            allowed = grammar.allowed()
            if tokens.shape[0] and len(seqs) == max_length - 1:  # out of room: close what is open
                allowed = _force_close(grammar, allowed)
            probs = filter_logits(logits[:, -1], allowed, config).softmax(dim=-1)
            tokens = torch.multinomial(probs, 1, generator=generator)  # [B, 1]
            grammar.update(tokens[:, 0])
            seqs.append(tokens)
            if grammar.done.all():
                break
            logits, cache = model.decode(tokens, hidden, enc_mask, xn, xc, past_key_values=cache, use_cache=True)
        batch = torch.cat(seqs, dim=1).cpu().numpy()
        for row in batch:
            row = row[row != PAD_ID].tolist()
            out.append(row)
        bar.update(B)
    bar.close()
    return out


def _force_close(grammar: StructureProcessor, allowed: torch.Tensor) -> torch.Tensor:
    """At the length limit: END if it is admissible, else only closing tokens (never a code)."""
    forced = torch.zeros_like(allowed)
    forced[:, END_ID] = allowed[:, END_ID]
    forced[:, VISIT_END_ID] = allowed[:, VISIT_END_ID]
    forced[grammar.done, PAD_ID] = True
    return torch.where(forced.any(dim=1, keepdim=True), forced, allowed)


def decode_sequences(sequences: list[list[int]], vocab: PatientVocab,
                     demographics: pd.DataFrame) -> tuple[Patients, dict]:
    """Token sequences -> the long format. An unfinished sequence (no END: the length limit)
    keeps its closed visits and is counted; a patient left without a visit is dropped."""
    names, types = vocab.token_names(), vocab.token_types()
    rows, unfinished, empty = [], 0, []
    for subject, seq in zip(demographics["subject_id"], sequences):
        unfinished += seq[-1] != END_ID
        visit, current, n_closed = -1, [], 0
        for tok in seq:
            if tok == VISIT_ID:
                visit, current = visit + 1, []
            elif tok >= FIRST_CODE_ID:
                current.append((subject, visit, CODE_TYPES[types[tok]], names[tok]))
            elif tok == VISIT_END_ID:
                rows.extend(current)
                n_closed += 1
        if n_closed == 0:
            empty.append(subject)
    codes = pd.DataFrame(rows, columns=["subject_id", "visit", "code_type", "code"])
    demo = demographics[~demographics["subject_id"].isin(empty)].reset_index(drop=True)
    return Patients(demo, codes), {"unfinished_sequences": int(unfinished), "dropped_without_visits": len(empty)}


def draw_demographics(train_demographics: pd.DataFrame, n: int, rng: np.random.Generator) -> pd.DataFrame:
    """`n` rows drawn with replacement from the train patients' (age, gender, race): the joint
    train distribution; synthetic subject ids 1..n."""
    rows = train_demographics.iloc[rng.integers(0, len(train_demographics), n)]
    return pd.DataFrame({"subject_id": np.arange(1, n + 1), "age": rows["age"].to_numpy(),
                         "gender": rows["gender"].to_numpy(), "race": rows["race"].to_numpy()})


def read_demographics_csv(path: str, n: int) -> tuple[pd.DataFrame, dict]:
    """User-given prompts: columns age, gender, race (raw values, mapped and counted like
    real data: ages capped, unmapped race -> `other`); synthetic subject ids 1..n."""
    frame = pd.read_csv(path)
    missing = [c for c in ("age", "gender", "race") if c not in frame.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; has {list(frame.columns)}")
    age = pd.to_numeric(frame["age"], errors="coerce")
    if age.isna().any():
        raise ValueError(f"{path}: column 'age' must be numeric; row {int(age.isna().idxmax())} has "
                         f"{frame['age'][age.isna()].iloc[0]!r}")
    gender, n_gender = gender_group(frame["gender"])
    race, n_race = race_group(frame["race"])
    frame = pd.DataFrame({"age": cap_age(age), "gender": gender, "race": race}).head(n)
    frame.insert(0, "subject_id", np.arange(1, len(frame) + 1))
    return frame, {"gender_other": n_gender, "race_unmapped_to_other": n_race}


def generate_patients(model, vocab: PatientVocab, demo_encoder: DemographicEncoder, demographics: pd.DataFrame,
                      config: SamplingConfig, max_length: int, device: torch.device,
                      seed: int) -> tuple[Patients, dict]:
    sequences = sample_sequences(model, demo_encoder.numeric(demographics), demo_encoder.categorical(demographics),
                                 vocab.token_types(), config, max_length, device, seed)
    return decode_sequences(sequences, vocab, demographics)


def sample_independent(train: Patients, demographics: pd.DataFrame, rng: np.random.Generator) -> Patients:
    """Baseline: visit counts drawn from the train patients' distribution, then every code
    independently with its train visit prevalence (an empty visit is drawn again)."""
    n_visits_train = train.codes.groupby("subject_id")["visit"].nunique().to_numpy()
    visit_sets = train.codes.drop_duplicates(["subject_id", "visit", "code_type", "code"])
    n_visits = train.codes[["subject_id", "visit"]].drop_duplicates().shape[0]
    prevalence = visit_sets.groupby(["code_type", "code"]).size() / n_visits
    keys, p = prevalence.index.to_list(), prevalence.to_numpy()
    rows = []
    for subject, n_visits in zip(demographics["subject_id"], rng.choice(n_visits_train, len(demographics))):
        for v in range(n_visits):
            chosen = np.flatnonzero(rng.random(len(p)) < p)
            while len(chosen) == 0:
                chosen = np.flatnonzero(rng.random(len(p)) < p)
            rows.extend((subject, v, keys[i][0], keys[i][1]) for i in chosen)
    codes = pd.DataFrame(rows, columns=["subject_id", "visit", "code_type", "code"])
    return Patients(demographics.reset_index(drop=True), codes)


def to_long_table(patients: Patients) -> pd.DataFrame:
    """data/generated/patients.parquet: one row per (synthetic patient, visit, code), with demographics."""
    return patients.codes.merge(patients.demographics[["subject_id", "age", "gender", "race"]], on="subject_id")[
        ["subject_id", "age", "gender", "race", "visit", "code_type", "code"]]


# ----------------------------------------------------------------------- evaluation


class CodeIndex:
    """Binary visit x code and patient x code matrices over one shared code list."""

    def __init__(self, codes: list[tuple[str, str]]):
        self.codes = codes
        self._columns = pd.MultiIndex.from_tuples(codes, names=["code_type", "code"])

    def visits(self, patients: Patients) -> tuple[sp.csr_matrix, np.ndarray]:
        """Visits x codes (csr, 0/1) and each visit's row in `patients.demographics`.
        Visits are numbered in order of first appearance in `patients.codes`."""
        c = patients.codes.drop_duplicates(["subject_id", "visit", "code_type", "code"])
        # Vectorised lookups: a Python loop over the (Arrow-backed) string columns and
        # factorizing a MultiIndex of tuples took most of the generate stage's analysis time.
        col = self._columns.get_indexer(pd.MultiIndex.from_arrays([c["code_type"], c["code"]]))  # -1: not listed
        keep = col >= 0
        visit_id = c.groupby(["subject_id", "visit"], sort=False).ngroup().to_numpy()
        first_row = np.unique(visit_id, return_index=True)[1]  # [n_visits]
        X = sp.csr_matrix((np.ones(keep.sum()), (visit_id[keep], col[keep])), shape=(len(first_row), len(self.codes)))
        X.data[:] = 1
        owner = pd.Index(patients.demographics["subject_id"]).get_indexer(c["subject_id"].to_numpy()[first_row])
        return X, owner

    def patients(self, patients: Patients) -> sp.csr_matrix:
        X, owner = self.visits(patients)
        P = sp.csr_matrix((np.ones(len(owner)), (owner, np.arange(len(owner)))),
                          shape=(len(patients.demographics), X.shape[0])) @ X
        return (P > 0).astype(np.float64).tocsr()


def _patient_code_counts(X: sp.csr_matrix, owner: np.ndarray, n_patients: int) -> tuple[np.ndarray, np.ndarray]:
    """Per patient: visits holding each code [N, C] and number of visits [N]."""
    A = sp.csr_matrix((np.ones(len(owner)), (owner, np.arange(len(owner)))), shape=(n_patients, X.shape[0]))
    return np.asarray((A @ X).todense()), np.bincount(owner, minlength=n_patients)


def _corr(a: np.ndarray, b: np.ndarray, kind: str) -> float:
    if np.std(a) == 0 or np.std(b) == 0:
        raise metrics.UndefinedMetricError("a constant vector has no correlation")
    return float(sstats.pearsonr(a, b)[0] if kind == "pearson" else sstats.spearmanr(a, b)[0])


def _two_sample_bootstrap(stat, n_real: int, n_syn: int, n_resamples: int, seed: int) -> dict:
    """Point value and 95% interval of stat(real rows, synthetic rows), resampling patients of both.

    Resampling patients adds noise to both prevalence vectors, which biases their
    correlation downwards: the plain percentile interval of a prevalence correlation sits
    wholly below the point value (measured: Spearman 0.967 with [0.943, 0.956]), and the
    basic (reflected) interval overshoots as far above it. So the percentile interval is
    shifted by the bootstrap estimate of that bias, mean(resampled) - value: it keeps the
    resampling spread and is centred where the point value is.
    """
    try:
        value = stat(np.arange(n_real), np.arange(n_syn))
    except metrics.UndefinedMetricError as err:
        return {"value": None, "reason": str(err)}
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n_resamples):
        try:
            values.append(stat(rng.integers(0, n_real, n_real), rng.integers(0, n_syn, n_syn)))
        except metrics.UndefinedMetricError:
            continue
    if not values:
        return {"value": value, "ci_low": None, "ci_high": None}
    low, high = np.quantile(values, [0.025, 0.975])
    bias = float(np.mean(values)) - value
    return {"value": value, "ci_low": float(low - bias), "ci_high": float(high - bias),
            "n_resamples": len(values), "interval": "bias-shifted percentile", "bootstrap_bias": bias}


def fidelity(real: Patients, synthetic: Patients, index: CodeIndex, *, age_bounds: list[float],
             age_codes: list[int], n_resamples: int, seed: int) -> dict:
    """Prevalence and co-occurrence agreement, visit/code count distances, age conditioning."""
    Xr, owner_r = index.visits(real)
    Xs, owner_s = index.visits(synthetic)
    Cr, Vr = _patient_code_counts(Xr, owner_r, len(real.demographics))
    Cs, Vs = _patient_code_counts(Xs, owner_s, len(synthetic.demographics))

    def prevalence_corr(kind):
        def stat(ir, is_):
            return _corr(Cr[ir].sum(0) / Vr[ir].sum(), Cs[is_].sum(0) / Vs[is_].sum(), kind)
        return stat

    out = {f"prevalence_{k}": _two_sample_bootstrap(prevalence_corr(k), len(Cr), len(Cs), n_resamples, seed)
           for k in ("pearson", "spearman")}
    # co-occurrence: share of visits holding each code pair (upper triangle), Pearson real vs synthetic
    iu = np.triu_indices(len(index.codes), k=1)
    pair_r = np.asarray((Xr.T @ Xr).todense())[iu] / Xr.shape[0]
    pair_s = np.asarray((Xs.T @ Xs).todense())[iu] / Xs.shape[0]
    seen = (pair_r > 0) | (pair_s > 0)
    out["cooccurrence_pearson"] = {"value": _corr(pair_r[seen], pair_s[seen], "pearson"), "pairs": int(seen.sum())}
    # Pair frequencies are dominated by the marginals (two common codes co-occur often even
    # when independent: the independent sampler scores ~0.97 above). The dependence is
    # what is left, P(i, j) - P(i) P(j): ~0 for independent codes.
    prev_r, prev_s = np.asarray(Xr.mean(0)).ravel(), np.asarray(Xs.mean(0)).ravel()
    dep_r, dep_s = pair_r - np.outer(prev_r, prev_r)[iu], pair_s - np.outer(prev_s, prev_s)[iu]
    out["cooccurrence_dependence_pearson"] = {"value": _corr(dep_r[seen], dep_s[seen], "pearson"),
                                              "pairs": int(seen.sum())}
    vpp_r, vpp_s = Vr[Vr > 0], Vs[Vs > 0]
    cpv_r, cpv_s = np.asarray(Xr.sum(1)).ravel(), np.asarray(Xs.sum(1)).ravel()
    out["visits_per_patient"] = {"real_mean": float(vpp_r.mean()), "synthetic_mean": float(vpp_s.mean()),
                                 "wasserstein": float(sstats.wasserstein_distance(vpp_r, vpp_s)),
                                 "ks": float(sstats.ks_2samp(vpp_r, vpp_s).statistic)}
    out["codes_per_visit"] = {"real_mean": float(cpv_r.mean()), "synthetic_mean": float(cpv_s.mean()),
                              "wasserstein": float(sstats.wasserstein_distance(cpv_r, cpv_s)),
                              "ks": float(sstats.ks_2samp(cpv_r, cpv_s).statistic)}
    out["age_conditioning"] = age_conditioning(real, synthetic, Xr, owner_r, Xs, owner_s, index, age_bounds, age_codes)
    return out


def prevalence_table(real: Patients, synthetic: Patients, index: CodeIndex) -> pd.DataFrame:
    """Share of visits holding each code, real against synthetic (the report's scatter plot)."""
    Xr, _ = index.visits(real)
    Xs, _ = index.visits(synthetic)
    return pd.DataFrame({"code_type": [t for t, _ in index.codes], "code": [c for _, c in index.codes],
                         "real": np.asarray(Xr.mean(0)).ravel(), "synthetic": np.asarray(Xs.mean(0)).ravel()})


def age_group(age: pd.Series | np.ndarray, bounds: list[float]) -> np.ndarray:
    return np.searchsorted(np.asarray(bounds), np.asarray(age, dtype=float), side="right")


def age_group_labels(bounds: list[float]) -> list[str]:
    edges = [None, *bounds, None]
    return [f"<{int(hi)}" if lo is None else (f">={int(lo)}" if hi is None else f"{int(lo)}-{int(hi) - 1}")
            for lo, hi in itertools.pairwise(edges)]


def age_related_codes(train: Patients, index: CodeIndex, bounds: list[float], n: int) -> list[int]:
    """The `n` codes whose train visit prevalence differs most significantly (two-proportion
    z) between the oldest and the youngest age group: chosen on train, so the test
    comparison is not selected on itself; by z, not raw difference, which would pick
    frequent codes with noise."""
    X, owner = index.visits(train)
    groups = age_group(train.demographics["age"].to_numpy()[owner], bounds)
    young, old = groups == groups.min(), groups == groups.max()
    p_old, p_young = np.asarray(X[old].mean(0)).ravel(), np.asarray(X[young].mean(0)).ravel()
    pooled = np.asarray(X[old | young].mean(0)).ravel()
    se = np.sqrt(pooled * (1 - pooled) * (1 / max(old.sum(), 1) + 1 / max(young.sum(), 1)))
    z = np.abs(p_old - p_young) / np.where(se > 0, se, np.inf)
    return np.argsort(-z)[:n].tolist()


def age_conditioning(real, synthetic, Xr, owner_r, Xs, owner_s, index, bounds, codes) -> dict:
    """Visit prevalence of age-related codes per age group (age at first admission, i.e.
    the prompt), real vs synthetic, and the correlation of the age effects (group
    prevalence minus the code's overall prevalence) over (code, group) cells."""
    labels = age_group_labels(bounds)
    table, eff_r, eff_s = [], [], []
    gr = age_group(real.demographics["age"].to_numpy()[owner_r], bounds)
    gs = age_group(synthetic.demographics["age"].to_numpy()[owner_s], bounds)
    for c in codes:
        all_r, all_s = Xr[:, c].mean(), Xs[:, c].mean()
        for g, label in enumerate(labels):
            pr = Xr[gr == g][:, c].mean() if (gr == g).any() else np.nan
            ps = Xs[gs == g][:, c].mean() if (gs == g).any() else np.nan
            table.append({"code": "/".join(index.codes[c]), "age_group": label, "real": float(pr),
                          "synthetic": float(ps)})
            eff_r.append(pr - all_r)
            eff_s.append(ps - all_s)
    eff_r, eff_s = np.array(eff_r), np.array(eff_s)
    ok = np.isfinite(eff_r) & np.isfinite(eff_s)
    try:
        corr = _corr(eff_r[ok], eff_s[ok], "pearson")
    except metrics.UndefinedMetricError as err:
        corr = None
        log.warning("age conditioning: %s", err)
    return {"age_groups": labels, "age_effect_pearson": corr, "cells": table}


def _visit_sets(patients: Patients) -> pd.Series:
    """(subject, visit) -> frozenset of codes."""
    c = patients.codes
    return c.groupby(["subject_id", "visit"])[["code_type", "code"]].apply(
        lambda g: frozenset(zip(g["code_type"], g["code"])))


def _patient_keys(visit_sets: pd.Series) -> set:
    return set(visit_sets.groupby(level=0).apply(tuple))


def _jaccard_nearest(A: sp.csr_matrix, B: sp.csr_matrix, exclude_self: bool = False) -> np.ndarray:
    """Jaccard distance of every row of A to its nearest row of B (binary matrices). [len(A)]"""
    inter = np.asarray((A @ B.T).todense())  # [nA, nB]
    size_a, size_b = np.asarray(A.sum(1)), np.asarray(B.sum(1)).T
    dist = 1 - inter / np.maximum(size_a + size_b - inter, 1)
    if exclude_self:
        np.fill_diagonal(dist, np.inf)
    return dist.min(axis=1)


def privacy(train: Patients, test: Patients, synthetic: Patients, index: CodeIndex, *, n_resamples: int,
            seed: int) -> dict:
    """Exact copies, distance to closest record, and a distance-based membership attack.

    Records are patients as binary code vectors (codes over all visits); distance is
    Jaccard. DCR ratio: median synthetic->train over median test->train distance (about 1
    when synthetic patients are no closer to train than unseen real ones; far below 1
    means copying). Membership inference: the attacker scores a real record by its
    similarity (1 - distance) to the nearest synthetic record; AUC of train members (a random sample the
    size of test) against test non-members; 0.5 means nothing leaks.
    """
    train_visits, syn_visits, test_visits = _visit_sets(train), _visit_sets(synthetic), _visit_sets(test)
    train_visit_set, train_patients = set(train_visits), _patient_keys(train_visits)
    syn_keys = syn_visits.groupby(level=0).apply(tuple)
    test_keys = test_visits.groupby(level=0).apply(tuple)
    out = {
        "exact_patient_copies": float(np.mean([k in train_patients for k in syn_keys])),
        "exact_patient_copies_test_reference": float(np.mean([k in train_patients for k in test_keys])),
        "exact_visit_copies": float(np.mean([v in train_visit_set for v in syn_visits])),
        "exact_visit_copies_test_reference": float(np.mean([v in train_visit_set for v in test_visits])),
    }
    P_train, P_test, P_syn = index.patients(train), index.patients(test), index.patients(synthetic)
    dcr_syn, dcr_test = _jaccard_nearest(P_syn, P_train), _jaccard_nearest(P_test, P_train)
    out["dcr"] = {"synthetic_to_train_median": float(np.median(dcr_syn)),
                  "test_to_train_median": float(np.median(dcr_test)),
                  "ratio": float(np.median(dcr_syn) / np.median(dcr_test)) if np.median(dcr_test) > 0 else None,
                  "synthetic_at_distance_0": float(np.mean(dcr_syn == 0))}
    rng = np.random.default_rng(seed)
    members = rng.choice(P_train.shape[0], size=min(P_test.shape[0], P_train.shape[0]), replace=False)
    score = 1 - np.r_[_jaccard_nearest(P_train[members], P_syn), _jaccard_nearest(P_test, P_syn)]  # similarity
    label = np.r_[np.ones(len(members)), np.zeros(P_test.shape[0])]
    out["membership_inference_auc"] = metrics.bootstrap(metrics.auroc, (label, score), clusters=None,  # a row a patient
                                                        n_resamples=n_resamples, seed=seed)
    return out


def visit_features(patients: Patients, index: CodeIndex, target: int) -> tuple[sp.csr_matrix, np.ndarray]:
    """Utility task rows, one per visit: features = the visit's other codes + age (scaled by
    1/100) + gender and race one-hot; label = whether the visit holds code `target`."""
    X, owner = index.visits(patients)
    y = np.asarray(X[:, target].todense()).ravel()
    X = X.tocsc()
    X.data[X.indptr[target]:X.indptr[target + 1]] = 0  # the target's column is the label, not a feature
    X.eliminate_zeros()
    demo = patients.demographics.iloc[owner]
    dense = [demo[["age"]].to_numpy(float) / 100.0]
    for name, values in (("gender", ("F", "M", "other")),
                         ("race", ("white", "black", "hispanic", "asian", "other", "unknown"))):
        dense.append((demo[name].to_numpy()[:, None] == np.array(values)[None, :]).astype(float))
    return sp.hstack([X.tocsr(), sp.csr_matrix(np.hstack(dense))]).tocsr(), y


def _fit_auroc(train_x, train_y, test_x, test_y) -> tuple[LogisticRegression | None, np.ndarray | None]:
    if len(np.unique(train_y)) < 2:
        return None, None
    model = LogisticRegression(max_iter=2000, C=1.0).fit(train_x, train_y)
    return model, model.predict_proba(test_x)[:, 1]


def pick_utility_target(train: Patients, val: Patients, index: CodeIndex,
                        n_candidates: int) -> tuple[int | None, dict]:
    """The task's target: among the `n_candidates` most frequent train diagnosis codes, the one a
    real-data model predicts best on the validation split (chosen on train/val, never test).
    None when no candidate has both classes in train and val."""
    X, _ = index.visits(train)
    prevalence = np.asarray(X.mean(0)).ravel()
    diag = np.array([t == "diagnosis" for t, _ in index.codes])
    candidates = [c for c in np.argsort(-np.where(diag, prevalence, -1)) if diag[c]][:n_candidates]
    scores = {}
    for c in candidates:
        xt, yt = visit_features(train, index, c)
        xv, yv = visit_features(val, index, c)
        _, p = _fit_auroc(xt, yt, xv, yv)
        if p is not None and 0 < yv.sum() < len(yv):
            scores[int(c)] = metrics.auroc(yv, p)
    if not scores:  # e.g. a tiny val split (the MIMIC-III demo): reported, not a crash
        return None, {}
    best = max(scores, key=scores.get)
    return best, {"/".join(index.codes[c]): s for c, s in scores.items()}


def utility(train: Patients, test: Patients, synthetic: dict[str, Patients], index: CodeIndex, target: int, *,
            n_resamples: int, seed: int) -> dict:
    """TSTR vs TRTR: logistic regression fitted on synthetic (or real train) visits, AUROC on
    real test visits, and the ratio with a paired bootstrap interval over test patients."""
    xr, yr = visit_features(train, index, target)
    xt, yt = visit_features(test, index, target)
    kw = {"clusters": index.visits(test)[1], "n_resamples": n_resamples, "seed": seed}  # resample test patients
    _, p_real = _fit_auroc(xr, yr, xt, yt)
    out = {"task": f"does a visit hold {'/'.join(index.codes[target])}, from its other codes and demographics "
                   "(logistic regression, one row per visit, AUROC on real test visits)",
           "test_visits": len(yt), "test_prevalence": float(yt.mean()),
           "trtr_auroc": metrics.bootstrap(metrics.auroc, (yt, p_real), **kw)}
    for name, patients in synthetic.items():
        xs, ys = visit_features(patients, index, target)
        _, p_syn = _fit_auroc(xs, ys, xt, yt)
        if p_syn is None:
            out[name] = {"reason": f"synthetic labels have one class ({int(ys.sum())} of {len(ys)} visits)"}
            continue

        def ratio(y, a, b):
            real = metrics.auroc(y, b)
            if real == 0:  # a tiny resample can rank every pair wrongly
                raise metrics.UndefinedMetricError("TRTR AUROC is 0")
            return metrics.auroc(y, a) / real

        out[name] = {"tstr_auroc": metrics.bootstrap(metrics.auroc, (yt, p_syn), **kw),
                     "tstr_over_trtr": metrics.bootstrap(ratio, (yt, p_syn, p_real), **kw)}
    return out
