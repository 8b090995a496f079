"""Do the explanations point at what the model uses, and at the planted truth?

- Deletion curves: remove each stay's top-k events by a method's scores, k = 0..K,
  and follow the predicted risk; a faithful ranking makes it fall faster than removing
  random events. AOPC = mean over k = 1..K of (risk with all events - risk without the
  top k) (Samek et al. 2017, without their k = 0 term, which is always 0).
- Precision@k of planted events (synthetic source) among each method's top-k events, vs
  the random ranking's expectation: the stay's share of planted events. Strict (the
  planted event itself) and companion-aware (a companion the generator emits from the
  same latent cause also counts).
- Head specialisation of the pooling attention: reported, never asserted.
"""
from __future__ import annotations

import itertools
from collections.abc import Callable

import numpy as np
import pandas as pd
import torch

from ehrseq.schema import EVENT_TYPES
from ehrseq.torch_utils import Batch


def _rank(scores: torch.Tensor, padding: torch.Tensor) -> torch.Tensor:
    """[B, E] events by decreasing score, real events first (stable: ties keep order)."""
    return scores.masked_fill(padding, float("-inf")).argsort(dim=1, descending=True, stable=True)


LogitsWithout = Callable[[torch.Tensor, int], torch.Tensor]  # (removed [N, E] bool, N) -> logits [N]


def deletion_masks(scores: torch.Tensor, padding: torch.Tensor, k_max: int) -> torch.Tensor:
    """[K+1, B, E] True on the events removed at step k = 0..K: each stay's top-k by
    `scores` (all its events when it has fewer than k)."""
    order = _rank(scores, padding)  # [B, E]
    n_real = (~padding).sum(dim=1)  # [B]
    positions = torch.arange(padding.shape[1], device=padding.device)[None, :]  # [1, E]
    return torch.stack([
        torch.zeros_like(padding).scatter(1, order, positions < torch.clamp(n_real, max=k)[:, None])
        for k in range(k_max + 1)])


@torch.no_grad()
def stacked_logits(logits_without: LogitsWithout, removed: torch.Tensor, copies_per_forward: int) -> torch.Tensor:
    """removed [N, B, E] -> logits [N, B]: `copies_per_forward` copies of the batch (each
    with its own removals, copy-major as `logits_without` repeats the batch) per call.
    Speed only: every row is the same stay with its own events removed."""
    out = [logits_without(chunk.flatten(0, 1), chunk.shape[0] * chunk.shape[1]).view(chunk.shape[:2])
           for chunk in removed.split(max(1, copies_per_forward))]
    return torch.cat(out)


@torch.no_grad()
def deletion_curve(logits_without: LogitsWithout, scores: torch.Tensor, padding: torch.Tensor,
                   k_max: int, copies_per_forward: int = 1) -> torch.Tensor:
    """[B, K+1] mortality LOGITS after removing the top-k events, k = 0..K (a stay with
    fewer than k events has all of them removed). `scores` and `padding` are per event
    [B, E]; `logits_without` removes events the model's own way (explainers.py).
    `curves_to_risk` turns logits into the risk scale the AOPC is reported on."""
    return stacked_logits(logits_without, deletion_masks(scores, padding, k_max), copies_per_forward).T


@torch.no_grad()
def greedy_deletion_curve(logits_without: LogitsWithout, padding: torch.Tensor, k_max: int,
                          copies_per_forward: int = 1) -> torch.Tensor:
    """[B, K+1] logits along GREEDY deletion: step k removes, of the events still there,
    the one whose removal gives the lowest logit (a stay out of events keeps its last
    value). No ranking fixed in advance follows the best subset of each size; this path
    is the reference an explanation's deletion curve is read against
    (scripts/aopc_ceiling.py). Costs K x E batch copies."""
    B, E = padding.shape
    removed = torch.zeros_like(padding)
    curve = [stacked_logits(logits_without, removed[None], 1)[0]]
    eye = torch.eye(E, dtype=torch.bool, device=padding.device)
    for _ in range(k_max):
        candidates = removed[None] | eye[:, None, :]  # [E, B, E]: one more event removed
        logits = stacked_logits(logits_without, candidates, copies_per_forward).T  # [B, E]
        logits = logits.masked_fill(padding | removed, float("inf"))
        best = logits.argmin(dim=1)  # [B]
        done = torch.isinf(logits.min(dim=1).values)  # nothing left to remove
        removed = removed | (eye[best] & ~done[:, None])
        curve.append(torch.where(done, curve[-1], logits.gather(1, best[:, None]).squeeze(1)))
    return torch.stack(curve, dim=1)


def aopc(curve: torch.Tensor) -> torch.Tensor:
    """[B] area over the perturbation curve: mean over k >= 1 of curve[:, 0] - curve[:, k]."""
    return (curve[:, :1] - curve[:, 1:]).mean(dim=1)


def random_scores(stay_ids: torch.Tensor, padding: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """[n, B, E] i.i.d. uniform scores: n random rankings of each stay's events. Each stay
    draws from a stream of its own, seeded by (seed, stay_id), so its random rankings are
    the same in whatever batch it is explained (batches follow a token budget, not the sample)."""
    out = torch.zeros((n, *padding.shape))
    for b, stay in enumerate(stay_ids.tolist()):
        stream = torch.Generator().manual_seed(int(np.random.SeedSequence([seed, stay]).generate_state(1)[0]))
        real = ~padding[b].cpu()
        out[:, b, real] = torch.rand(n, int(real.sum()), generator=stream)
    return out.to(padding.device)


@torch.no_grad()
def deletion_curves(
    logits_without: LogitsWithout, method_scores: dict[str, torch.Tensor], padding: torch.Tensor, k_max: int,
    random_rankings: torch.Tensor, copies_per_forward: int = 1,
) -> dict[str, torch.Tensor]:
    """Each method's deletion curve in logits ([B, K+1]) and, under "random", the curves
    of the R `random_rankings` ([R, B, E] scores, `random_scores`; [R, B, K+1]): the bar a
    ranking must beat.

    Every ranking's removals for k = 1..K go through `logits_without` together,
    `copies_per_forward` batch copies per call; k = 0 (nothing removed) runs once and is
    shared. The same logits as `deletion_curve` per ranking, in fewer, larger forwards."""
    rankings = [*method_scores.values(), *random_rankings]
    removed = torch.cat([deletion_masks(s, padding, k_max)[1:] for s in rankings])  # [(M+R) K, B, E]
    full = stacked_logits(logits_without, torch.zeros_like(padding)[None], 1)  # [1, B]
    logits = stacked_logits(logits_without, removed, copies_per_forward).view(len(rankings), k_max, -1)
    curves = torch.cat([full.expand(len(rankings), 1, -1), logits], dim=1).transpose(1, 2).contiguous()  # [M+R, B, K+1]
    out = dict(zip(method_scores, curves[: len(method_scores)]))
    out["random"] = curves[len(method_scores):]
    return out


def curves_to_risk(curves: dict[str, torch.Tensor], logit_shift: float = 0.0) -> dict[str, torch.Tensor]:
    """Logit curves -> risk sigmoid(logit - logit_shift) [B, K+1]; random: the mean risk
    over its rankings. `logit_shift` 0 gives the scale the model was trained on (a
    pos_weight-trained logit is balanced-prevalence); the checkpoint's prior-correction
    shift gives the calibrated risk it reports."""
    out = {name: torch.sigmoid(c - logit_shift) for name, c in curves.items()}
    if out.get("random") is not None and out["random"].dim() == 3:
        # in float64: the mean of R equal float32 values (k = 0) is then that value exactly
        out["random"] = out["random"].double().mean(dim=0).to(out["random"].dtype)
    return out


def deletion_table(curves: dict[str, torch.Tensor]) -> pd.DataFrame:
    """Mean risk after removing the top k events, per method and k: method, k, risk, aopc."""
    return pd.DataFrame([
        {"method": name, "k": k, "risk": float(c[:, k].mean()), "aopc": float(aopc(c).mean())}
        for name, c in curves.items() for k in range(c.shape[1])
    ])


def aopc_against_random(curves: dict[str, torch.Tensor]) -> dict[str, dict[str, float]]:
    """Per method: mean over stays of AOPC(method) - AOPC(random) with a normal 95%
    interval (paired by stay: both curves come from the same stays)."""
    base = aopc(curves["random"])
    out = {}
    for name, c in curves.items():
        if name == "random":
            continue
        diff = (aopc(c) - base).double()
        half = 1.96 * float(diff.std()) / max(len(diff), 1) ** 0.5 if len(diff) > 1 else float("nan")
        mean = float(diff.mean())
        out[name] = {"difference": mean, "ci_low": mean - half, "ci_high": mean + half}
    return out


PRECISION_COLUMNS = ["stay_id", "n_events", "n_truth", "k", "precision", "random_precision",
                     "recall_precision", "random_recall_precision"]


def precision_at_k(
    scores: torch.Tensor, padding: torch.Tensor, is_truth: torch.Tensor, counted: torch.Tensor,
    stay_ids: torch.Tensor, k: int,
) -> pd.DataFrame:
    """Per counted stay, how many of its top-k events by `scores` are truth events, as

    - `precision`: hits / k -- the share of truth events among the top k, and
      `random_precision`, its expectation under a random ranking (truth / events);
    - `recall_precision`: hits / min(k, truth) -- the same hits against the most a
      perfect ranking could get (1.0 when the top k holds k truth events, or all of
      them when the stay has fewer), and `random_recall_precision`, its expectation.
      A stay with 2 planted events caps `precision@5` at 0.4; this one does not.

    All per event [B, E]: `is_truth` marks truth events (strict: the planted events;
    companion-aware: planted or companion), `counted` [B] the stays to score (those with
    a planted event, for both, so the two figures cover the same stays). A stay with
    fewer than k events uses all of them.
    """
    order = _rank(scores, padding).cpu().numpy()  # [B, E]
    truth = (is_truth & ~padding).cpu().numpy()  # [B, E]
    n_real = (~padding).sum(dim=1).cpu().numpy()
    counted = counted.cpu().numpy()
    rows = []
    for b, stay_id in enumerate(stay_ids.cpu().numpy()):
        n_truth = int(truth[b].sum())
        if not counted[b] or n_truth == 0:
            continue
        k_eff = int(min(k, n_real[b]))
        hits = int(truth[b, order[b, :k_eff]].sum())
        random_hits = k_eff * n_truth / int(n_real[b])  # hypergeometric mean
        best = min(k_eff, n_truth)
        rows.append({"stay_id": int(stay_id), "n_events": int(n_real[b]), "n_truth": n_truth, "k": k_eff,
                     "precision": hits / k_eff, "random_precision": random_hits / k_eff,
                     "recall_precision": hits / best, "random_recall_precision": random_hits / best})
    return pd.DataFrame(rows, columns=PRECISION_COLUMNS)


def _jsd(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Jensen-Shannon divergence in bits (0..1) between distributions on the last axis."""
    m = 0.5 * (p + q)

    def kl(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.where(a > 0, a * (torch.log2(a.clamp_min(1e-30)) - torch.log2(b.clamp_min(1e-30))), 0.0).sum(-1)

    return 0.5 * kl(p, m) + 0.5 * kl(q, m)


def _mean_pairwise_jsd(weights: torch.Tensor) -> torch.Tensor:
    """weights [N, H, T] (rows sum to 1) -> [H, H] pairwise JSD, averaged over stays."""
    H = weights.shape[1]
    out = torch.zeros(H, H, dtype=weights.dtype)
    for i, j in itertools.combinations(range(H), 2):
        out[i, j] = out[j, i] = _jsd(weights[:, i], weights[:, j]).mean()
    return out


def head_specialisation(
    pooling: torch.Tensor, batch: Batch, n_permutations: int = 200, seed: int = 0
) -> tuple[dict, pd.DataFrame]:
    """Do the pooling heads attend to different events, and which kinds does each favour?

    Observed: the pairwise Jensen-Shannon divergence between heads' pooling distributions,
    averaged over stays with at least 2 events. Null: the same after shuffling each head's
    weights independently over the stay's events -- what the divergence would be if the
    heads' choices of events were unrelated. Observed well below the null means the heads
    largely agree on which events matter; near it, they look at different events.
    `p_value_agree` = (1 + null draws at or below the observed mean) / (1 + draws): the
    permutation p-value of "heads agree more than unrelated heads would"; small = they agree.

    Kind preference per head: its share of pooling mass on each event kind divided by that
    kind's share of events (lift > 1 = favoured). Returns (summary dict, per-head table).
    """
    pool = pooling[:, :, 0, :].detach().cpu()  # [B, H, T]
    padding = batch["padding_mask"].cpu()
    keep = (~padding).sum(dim=1) >= 2
    pool, padding, kind = pool[keep], padding[keep], batch["kind"].cpu()[keep]
    if len(pool) == 0:
        raise ValueError("head specialisation needs at least one stay with 2 or more events")
    H = pool.shape[1]
    observed = _mean_pairwise_jsd(pool)
    upper = torch.triu_indices(H, H, offset=1)
    observed_mean = float(observed[upper[0], upper[1]].mean())

    generator = torch.Generator().manual_seed(seed)
    null = []
    for _ in range(n_permutations):
        # A random key per (stay, head, position), padding sorting last: each head's real
        # weights land, in its own random order, in the first n_real slots of every head.
        keys = torch.rand(pool.shape, generator=generator).masked_fill(padding[:, None, :], 2.0)
        null_jsd = _mean_pairwise_jsd(pool.gather(-1, keys.argsort(dim=-1)))
        null.append(float(null_jsd[upper[0], upper[1]].mean()))
    null = np.array(null)

    kind_share = torch.stack([((kind == k) & ~padding).sum() for k in range(len(EVENT_TYPES))]).double()
    kind_share = kind_share / kind_share.sum()
    rows = []
    for h in range(H):
        mass = torch.stack([(pool[:, h] * (kind == k)).sum() for k in range(len(EVENT_TYPES))]).double()
        mass = mass / mass.sum()
        for k, name in enumerate(EVENT_TYPES):
            rows.append({"head": h, "event_type": name, "attention_share": float(mass[k]),
                         "event_share": float(kind_share[k]),
                         "lift": float(mass[k] / kind_share[k]) if kind_share[k] > 0 else float("nan")})
    summary = {
        "stays": len(pool),
        "pairwise_jsd": observed.tolist(),
        "mean_jsd": observed_mean,
        "null_mean_jsd": float(null.mean()),
        "null_jsd_q05": float(np.quantile(null, 0.05)),
        "null_jsd_q95": float(np.quantile(null, 0.95)),
        "p_value_agree": float((1 + (null <= observed_mean).sum()) / (1 + len(null))),
    }
    return summary, pd.DataFrame(rows)
