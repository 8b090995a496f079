"""Discrete-time survival on the landmark view: the loss and the landmark curve
(`tasks.SurvivalTask` plugs them into the training loop).

Bins after the cutoff: bin k covers ((k-1)w, kw]. The state after post-cutoff bin j
(j = 0 is the landmark: pre-cutoff visits only) gives logits of the hazards of bins
j+1 .. j+H, h_j(m) = P(death in bin j+m | alive at the end of bin j + m - 1).

Likelihood of one stay with label k* (`event_bin`), from each state j it is at risk in
(j < k*): the bins j+m <= k*, with the rule
  - censored (survived k* whole bins): log(1 - h) for every bin k <= k* (the censoring
    bin included: it was survived);
  - death in bin k*: log(1 - h) for bins k < k*, plus the event term log h at k = k*.
Summed over states and bins, divided by H (so the loss is the mean over look-ahead
distances m of a full discrete-time likelihood; with H = 1 it is exactly the seed's
per-visit NLL), then averaged per patient (a stay with many bins does not outweigh one
with few). Computed from logits with logsigmoid and selected with `torch.where`, never
`log(h) * mask`: on a padded visit h = 0 and log(0) * 0 is NaN.

The loss's own mask (level 3) keeps states on real visits at or after the landmark.
A padded visit's hazard is 0 (the model's level), which makes its survival term
log(1 - 0) = 0 harmless without the loss mask, but its event term log(0) = -inf: the
seed's "correct even if one masking level is missed" holds for the survival term only
(tests/test_survival.py shows it).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

Batch = dict[str, torch.Tensor]


def loss_masks(sequence_mask: torch.Tensor, landmark: torch.Tensor, event_bin: torch.Tensor, event: torch.Tensor,
               horizon_bins: int, max_state: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Which (visit state, look-ahead) terms enter the likelihood: (survived, died), [B, V, H] bool.

    `max_state=0` keeps the landmark state only (evaluation: the landmark NLL).
    """
    V = sequence_mask.shape[1]
    device = sequence_mask.device
    j = torch.arange(V, device=device)[None, :] - landmark[:, None]  # [B, V] post-cutoff bins the state has seen
    state = sequence_mask & (j >= 0)  # [B, V]
    if max_state is not None:
        state &= j <= max_state
    k = j[:, :, None] + torch.arange(1, horizon_bins + 1, device=device)[None, None, :]  # [B, V, H] bin predicted
    k_star = event_bin[:, None, None]
    died = (event > 0)[:, None, None]
    state = state[:, :, None]
    survived = state & torch.where(died, k < k_star, k <= k_star)  # `<` for deaths, `<=` for censored
    at_event = state & died & (k == k_star)
    return survived, at_event


def log_likelihood(logits: torch.Tensor, survived: torch.Tensor, at_event: torch.Tensor) -> torch.Tensor:
    """Per-stay log-likelihood of the selected terms. logits [B, V, H] -> [B]"""
    zero = logits.new_zeros(())
    log_survive = torch.where(survived, F.logsigmoid(-logits), zero)  # log(1 - h)
    log_hazard = torch.where(at_event, F.logsigmoid(logits), zero)  # log h
    return log_survive.sum(dim=(1, 2)) + log_hazard.sum(dim=(1, 2))


def discrete_time_nll(logits: torch.Tensor, batch: Batch) -> torch.Tensor:
    """The training loss: every at-risk state (dynamic prediction), mean over patients.

    A stay with no term (censored before the end of the first bin) carries no
    information and is left out of the mean; a batch of only such stays gives 0.
    """
    H = logits.shape[-1]
    survived, at_event = loss_masks(batch["sequence_mask"], batch["landmark"], batch["event_bin"], batch["event"], H)
    per_stay = -log_likelihood(logits, survived, at_event) / H  # [B]
    informative = (survived | at_event).flatten(1).any(dim=1)  # [B]
    return torch.where(informative, per_stay, 0.0).sum() / informative.sum().clamp(min=1)


def kaplan_meier_hazards(event_bin: np.ndarray, event: np.ndarray, horizon_bins: int) -> list[float]:
    """Discrete hazards of bins 1..H: deaths in bin k / stays at risk in it (a death in
    bin k or a censored stay that survived k or more bins)."""
    event_bin, died = np.asarray(event_bin), np.asarray(event) > 0
    hazards = []
    for k in range(1, horizon_bins + 1):
        at_risk = np.sum((event_bin >= k) & died) + np.sum((event_bin >= k) & ~died)
        hazards.append(float(np.sum((event_bin == k) & died) / at_risk) if at_risk else 0.0)
    return hazards


def landmark_logits(logits: torch.Tensor, landmark: torch.Tensor) -> torch.Tensor:
    """The landmark state's H hazard logits. [B, V, H] -> [B, H]"""
    index = landmark.view(-1, 1, 1).expand(-1, 1, logits.shape[-1])
    return logits.gather(1, index).squeeze(1)


def survival_curve(hazard_logits: torch.Tensor) -> torch.Tensor:
    """S(k) = prod_{m <= k} (1 - h_m), k = 1..H, in log space. [B, H] -> [B, H]"""
    return torch.exp(torch.cumsum(F.logsigmoid(-hazard_logits), dim=-1))
