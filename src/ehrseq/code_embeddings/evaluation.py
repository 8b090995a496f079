"""How good are code vectors: planted problems, the ICD ontology, next-visit diagnoses.

Every metric compares codes by cosine similarity of their vectors (`<unk>` excluded) and
reports itself beside its chance level, so a number can be read without a second run:
- planted problems (synthetic only): the generator's latent problems (sepsis, shock,
  renal failure, DKA, cardiac injury, respiratory failure) each emit a set of codes
  (`truth/problem_codes.parquet`). Precision@k: the share of a problem code's k nearest
  codes (among all codes) that belong to one of its problems; `random` is the expected
  share for a random ranking, `max_achievable` caps it for problems with fewer than k
  other codes. NMI of KMeans clusters (one cluster per problem) against the problems, for
  codes of exactly one problem, beside the NMI of the same clusters against shuffled
  problems.
- ICD ontology (any source): for diagnosis codes, precision@k of the k nearest diagnosis
  codes of the same system (ICD-9 or ICD-10) sharing the chapter, and the 3-character
  category (undefined when codes are already grouped to categories), averaged over the
  codes of both systems. Separate pools, because a patient's codes are all of one
  version (by year): a shared pool would reward telling the versions apart.
- next visit (held-out patients): for consecutive admissions of a patient, the mean unit
  vector of admission t's codes (events and diagnoses) ranks every diagnosis code;
  recall@k of admission t+1's diagnoses, beside ranking by train frequency.
"""
from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
from sklearn.cluster import KMeans
from sklearn.metrics import normalized_mutual_info_score

from ehrseq.code_embeddings.sequences import UNK
from ehrseq.icd import ICD_SYSTEMS, icd_category, icd_chapter, split_system


def undefined(reason: str) -> dict:
    return {"value": None, "reason": reason}


class CodeVectors:
    """Unit-length vectors of the codes of an embeddings frame (code, vector), `<unk>` left out."""

    def __init__(self, frame: pd.DataFrame):
        frame = frame[frame["code"] != UNK]
        self.codes = frame["code"].to_numpy(dtype=object)
        vectors = np.stack(frame["vector"].to_numpy()).astype(np.float64) if len(frame) else np.zeros((0, 1))
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        self.vectors = vectors / np.where(norms > 0, norms, 1.0)  # [N, E]
        self.index = {c: i for i, c in enumerate(self.codes)}

    def rows(self, codes) -> np.ndarray:
        return np.array([self.index[c] for c in codes if c in self.index], dtype=np.int64)

    def nearest(self, query: np.ndarray, pool: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The k most similar pool rows of each query row, itself excluded. -> rows, cosines [Q, k]."""
        sims = self.vectors[query] @ self.vectors[pool].T  # [Q, P]
        sims[query[:, None] == pool[None, :]] = -np.inf
        order = np.argsort(-sims, axis=1, kind="stable")[:, :k]  # ties: pool order
        return pool[order], np.take_along_axis(sims, order, axis=1)


def neighbour_precision(cv: CodeVectors, labels: dict[str, frozenset], pool_codes, k: int) -> dict:
    """Precision@k of sharing a label, for every labelled code of the pool, over the pool."""
    pool = cv.rows(pool_codes)
    query = np.array([r for r in pool if labels.get(cv.codes[r])], dtype=np.int64)
    if len(query) < 2 or len(pool) <= k:
        return undefined(f"{len(query)} labelled codes in a pool of {len(pool)} (need >= 2 and a pool > k={k})")
    pool_labels = [labels.get(cv.codes[r], frozenset()) for r in pool]
    share = np.array([[bool(labels[cv.codes[q]] & other) for other in pool_labels] for q in query])  # [Q, P]
    share[query[:, None] == pool[None, :]] = False
    position = {r: i for i, r in enumerate(pool)}
    neighbours, _ = cv.nearest(query, pool, k)
    hits = np.take_along_axis(share, np.vectorize(position.get)(neighbours), axis=1)  # [Q, k]
    same = share.sum(axis=1)
    return {
        "value": float(hits.mean()),
        "random": float((same / (len(pool) - 1)).mean()),
        "max_achievable": float((np.minimum(same, k) / k).mean()),
        "codes": len(query), "pool": len(pool), "k": k,
    }


def planted_metrics(cv: CodeVectors, problem_codes: pd.DataFrame | None, reason: str, *, icd_grouping: bool,
                    k: int, seed: int, n_permutations: int = 100) -> dict:
    """Precision@k within problems and KMeans NMI against problems (see the module doc)."""
    if problem_codes is None:
        return {"precision_at_k": undefined(reason), "kmeans_nmi": undefined(reason)}
    codes = problem_codes["code"].astype(str)
    if icd_grouping:
        codes = codes.map(icd_category)
    labels = pd.Series(problem_codes["problem"].to_numpy(), index=codes).groupby(level=0).agg(frozenset).to_dict()
    known = [c for c in labels if c in cv.index]
    out = {"problems": int(problem_codes["problem"].nunique()), "problem_codes": len(labels),
           "problem_codes_in_vocabulary": len(known),
           "precision_at_k": neighbour_precision(cv, labels, cv.codes, k)}
    single = [c for c in known if len(labels[c]) == 1]
    truth = np.array([next(iter(labels[c])) for c in single])
    n_clusters = len(set(truth))
    if n_clusters < 2 or len(single) <= n_clusters:
        out["kmeans_nmi"] = undefined(f"{len(single)} single-problem codes in {n_clusters} problems")
        return out
    clusters = KMeans(n_clusters=n_clusters, n_init=10, random_state=seed).fit_predict(cv.vectors[cv.rows(single)])
    rng = np.random.default_rng(seed)
    chance = [normalized_mutual_info_score(rng.permutation(truth), clusters) for _ in range(n_permutations)]
    out["kmeans_nmi"] = {"value": float(normalized_mutual_info_score(truth, clusters)),
                         "shuffled_problems": float(np.mean(chance)), "codes": len(single), "clusters": n_clusters}
    return out


def is_diagnosis(code: str) -> bool:
    return split_system(code)[0] in ICD_SYSTEMS and icd_chapter(code) is not None


def per_system_precision(cv: CodeVectors, label, k: int) -> dict:
    """`neighbour_precision` within each ICD system's diagnosis codes, averaged over codes."""
    parts = {}
    for system in ICD_SYSTEMS:
        pool = [c for c in cv.codes if is_diagnosis(c) and split_system(c)[0] == system]
        parts[system] = neighbour_precision(cv, {c: frozenset([label(c)]) for c in pool}, pool, k)
    defined = [p for p in parts.values() if p["value"] is not None]
    if not defined:
        return undefined("; ".join(f"{s}: {p['reason']}" for s, p in parts.items()))
    n = sum(p["codes"] for p in defined)
    return {**{key: sum(p[key] * p["codes"] for p in defined) / n for key in ("value", "random", "max_achievable")},
            "codes": n, "k": k, "per_system": parts}


def ontology_metrics(cv: CodeVectors, *, icd_grouping: bool, k: int) -> dict:
    """Precision@k of sharing the ICD chapter / 3-character category, among diagnosis codes
    of the same system (an ICD-9 and an ICD-10 code never share either)."""
    return {
        "chapter_precision_at_k": per_system_precision(cv, icd_chapter, k),
        "category_precision_at_k": (
            undefined("vocab grouped ICD codes to categories: every code is its own category") if icd_grouping
            else per_system_precision(cv, icd_category, k)),
    }


def admission_pairs(table: pd.DataFrame) -> list[tuple[list[str], list[str]]]:
    """(codes of admission t, diagnoses of admission t+1) for consecutive admissions of each
    patient, admissions ordered by their first code's time. `table`: a `code_table`."""
    first = table.groupby("hadm_id")["time"].min().rename("start")
    admissions = table[["subject_id", "hadm_id"]].drop_duplicates().join(first, on="hadm_id")
    admissions = admissions.sort_values(["subject_id", "start", "hadm_id"])
    codes = table.groupby("hadm_id")["code"].agg(list)
    dx = table[table["source"] == "diagnosis"].groupby("hadm_id")["code"].agg(list)
    pairs = []
    for _, hadms in admissions.groupby("subject_id", sort=False)["hadm_id"]:
        hadms = hadms.tolist()
        pairs += [(codes[a], dx.get(b, [])) for a, b in itertools.pairwise(hadms)]
    return pairs


def recall_at_k(rankings: np.ndarray, targets: list[np.ndarray], ks) -> dict:
    """Mean share of each target set found in the first k of its ranking. rankings [Q, P]."""
    return {f"recall_at_{k}": float(np.mean([np.isin(t, r[:k]).mean() for r, t in zip(rankings, targets)]))
            for k in ks}


def next_visit_metrics(cv: CodeVectors, pairs, train_counts: dict[str, int], ks) -> dict:
    """Next-visit diagnosis recall@k by similarity to the current admission, and by frequency."""
    pool = cv.rows([c for c in cv.codes if is_diagnosis(c)])
    queries, targets = [], []
    for current, following in pairs:
        rows, wanted = cv.rows(current), np.intersect1d(cv.rows(following), pool)
        if len(rows) and len(wanted):
            queries.append(cv.vectors[rows].mean(axis=0))
            targets.append(wanted)
    if not targets or len(pool) < max(ks):
        return undefined(f"{len(targets)} admission pairs with a known next diagnosis, {len(pool)} diagnosis codes")
    scores = np.stack(queries) @ cv.vectors[pool].T  # [Q, P]
    ranked = pool[np.argsort(-scores, axis=1, kind="stable")]
    by_count = pool[np.argsort([-train_counts.get(cv.codes[r], 0) for r in pool], kind="stable")]
    return {"admission_pairs": len(pairs), "evaluated_pairs": len(targets), "diagnosis_codes": len(pool),
            "similarity": recall_at_k(ranked, targets, ks),
            "train_frequency": recall_at_k(np.broadcast_to(by_count, ranked.shape), targets, ks)}


def neighbours_table(cv: CodeVectors, train_counts: dict[str, int], n_codes: int, k: int) -> pd.DataFrame:
    """The k nearest codes of the n most frequent train codes: code, count, rank, neighbour, cosine."""
    frequent = sorted(cv.codes, key=lambda c: (-train_counts.get(c, 0), c))[:n_codes]
    query = cv.rows(frequent)
    neighbours, cosines = cv.nearest(query, np.arange(len(cv.codes)), k)
    return pd.DataFrame([
        {"code": cv.codes[q], "count": train_counts.get(cv.codes[q], 0), "rank": j + 1,
         "neighbour": cv.codes[n], "cosine": float(s)}
        for q, row, sim in zip(query, neighbours, cosines) for j, (n, s) in enumerate(zip(row, sim))
    ])
