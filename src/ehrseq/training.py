"""One training loop for every model.

The loop never looks inside a batch (a dict of tensors). A *task* does:

    task.loss(model, batch)    -> (scalar loss, {name: float} to log besides the loss)
    task.predict(model, batch) -> {name: [B] tensor}, one row per example
    task.metrics(predictions)  -> {name: float} over a whole split (numpy arrays in)
    task.monitor, task.mode    -> the validation metric early stopping watches, "max"/"min"
    task.config()              -> constructor arguments, stored in checkpoints

so a new model plugs in with its own task and the loop stays as it is. The loop owns
the rest: device, seeds, AdamW with warmup then cosine/linear decay, gradient clipping,
bf16 autocast on CUDA, early stopping, checkpoints (best and last), resume, DVCLive logs
and a progress bar.
"""
from __future__ import annotations

import contextlib
import logging
import math
import pickle
import random
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from dvclive import Live
from torch import nn
from tqdm import tqdm

from ehrseq import metrics
from ehrseq.data import class_balance_weights
from ehrseq.explain.attention import forward_with_attention, save_attention
from ehrseq.explain.attributions import eval_mode
from ehrseq.io import atomic_path
from ehrseq.models import build_model
from ehrseq.models.clinical_lf import clinical_lf_loss

log = logging.getLogger(__name__)

Batch = dict[str, torch.Tensor]


class Task(Protocol):
    name: str
    monitor: str
    mode: str

    def loss(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]: ...
    def predict(self, model: nn.Module, batch: Batch) -> dict[str, torch.Tensor]: ...
    def metrics(self, predictions: dict[str, np.ndarray]) -> dict[str, float]: ...
    def config(self) -> dict[str, Any]: ...


# --------------------------------------------------------------------------- tasks


class NextTokenTask:
    """Next-token pretraining: the state at position t predicts token t+1.

    Only pairs whose target is a real token count, and only their hidden states go
    through the vocabulary projection (the largest matrix multiply) -- not the padding.
    """

    name = "pretrain"
    monitor, mode = "loss", "min"

    def _token_nll(self, model: nn.Module, batch: Batch):
        out = model(batch["input_ids"], batch["attention_mask"])
        target_mask = batch["attention_mask"][:, 1:]  # [B, T-1]
        hidden = out["hidden"][:, :-1][target_mask]  # [N, H]
        targets = batch["input_ids"][:, 1:][target_mask]  # [N]
        logits = model.next_token_logits(hidden).float()  # [N, V]
        return logits, targets, F.cross_entropy(logits, targets, reduction="none"), target_mask

    def loss(self, model, batch):
        _, _, nll, _ = self._token_nll(model, batch)
        return nll.mean(), {}

    def predict(self, model, batch):
        logits, targets, nll, target_mask = self._token_nll(model, batch)
        row = target_mask.nonzero()[:, 0]  # [N] which sequence each target belongs to
        per_row = torch.zeros(target_mask.shape[0], device=nll.device)
        correct = (logits.argmax(dim=-1) == targets).float()
        return {
            "stay_id": batch["stay_id"],
            "nll_sum": per_row.index_add(0, row, nll),
            "n_correct": per_row.index_add(0, row, correct),
            "n_tokens": target_mask.sum(dim=1),
        }

    def metrics(self, p):
        return {
            "loss": float(p["nll_sum"].sum() / p["n_tokens"].sum()),
            "perplexity": metrics.perplexity(p["nll_sum"], p["n_tokens"]),
            "accuracy": metrics.token_accuracy(p["n_correct"], p["n_tokens"]),
        }

    def config(self):
        return {}


class MortalityTask:
    """In-hospital mortality from the model's single logit (token models).

    Rare positives are up-weighted either in the loss (`pos_weight`) or by a
    class-balanced sampler. Both raise the training odds of death by a known factor, so
    the best logit moves up by log(that factor); `logit_shift` subtracts it again at
    prediction time (prior correction), keeping probabilities calibrated to the real
    prevalence. Ranking metrics are unaffected.
    """

    name = "mortality"
    monitor, mode = "auroc", "max"

    def __init__(self, pos_weight: float = 1.0, logit_shift: float = 0.0):
        self.pos_weight = pos_weight
        self.logit_shift = logit_shift

    def outputs(self, model: nn.Module, batch: Batch) -> dict[str, torch.Tensor]:
        out = model(batch["input_ids"], batch["attention_mask"])
        return {"logits": out["mortality_logit"]}

    def loss(self, model, batch):
        logit = self.outputs(model, batch)["logits"].float()  # [B]
        pos_weight = torch.tensor(self.pos_weight, device=logit.device)
        return F.binary_cross_entropy_with_logits(logit, batch["label"], pos_weight=pos_weight), {}

    def predict(self, model, batch):
        logit = self.outputs(model, batch)["logits"].float() - self.logit_shift
        return {"stay_id": batch["stay_id"], "label": batch["label"], "logit": logit, "prob": torch.sigmoid(logit)}

    def metrics(self, p):
        log_loss = F.binary_cross_entropy_with_logits(torch.from_numpy(p["logit"]), torch.from_numpy(p["label"]))
        return {"auroc": metrics.auroc(p["label"], p["prob"]), "loss": float(log_loss)}

    def config(self):
        return {"pos_weight": self.pos_weight, "logit_shift": self.logit_shift}


class ClinicalLFTask(MortalityTask):
    """Mortality for `clinical_lf`: its stay logit, plus the temporal auxiliary loss when
    `temporal_lambda` > 0 (see `models.clinical_lf.clinical_lf_loss`).

    With `attention_every` > 0 and an `attention_dir`, every N-th training batch's
    attention weights (every encoder layer and the pooling, per head) are saved as
    compressed npz, read by hooks on a real forward pass in eval mode, so the snapshot
    draws no dropout randomness and cannot change the training run.
    """

    def __init__(self, pos_weight: float = 1.0, logit_shift: float = 0.0, temporal_lambda: float = 0.0,
                 attention_every: int = 0, attention_dir: str | None = None):
        super().__init__(pos_weight, logit_shift)
        self.temporal_lambda = temporal_lambda
        self.attention_every = attention_every
        self.attention_dir = attention_dir
        self.batches_seen = 0

    def outputs(self, model, batch):
        return model(batch["steps"], batch["static"], batch["padding_mask"])

    def loss(self, model, batch):
        if self.attention_every and self.attention_dir and self.batches_seen % self.attention_every == 0:
            with eval_mode(model):
                _, attention = forward_with_attention(model, batch)
            save_attention(Path(self.attention_dir) / f"batch_{self.batches_seen:07d}.npz", attention, batch)
        self.batches_seen += 1
        out = {k: v.float() for k, v in self.outputs(model, batch).items()}
        losses = clinical_lf_loss(out, batch, self.temporal_lambda, self.pos_weight)
        return losses["loss"], {"stay_loss": losses["stay_loss"].item(), "step_loss": losses["step_loss"].item()}

    def config(self):
        # Prediction needs only the shift; the snapshot settings are training-time I/O.
        return {"pos_weight": self.pos_weight, "logit_shift": self.logit_shift, "temporal_lambda": self.temporal_lambda}


IMBALANCE_STRATEGIES = ("pos_weight", "sampler", "none")


def mortality_task(
    labels: np.ndarray, imbalance: str, task_class: type[MortalityTask] = MortalityTask, **task_kwargs
) -> tuple[MortalityTask, np.ndarray | None]:
    """The mortality task for one imbalance strategy, and sampling weights if it needs them."""
    if imbalance not in IMBALANCE_STRATEGIES:
        raise ValueError(f"imbalance must be one of {IMBALANCE_STRATEGIES}, got {imbalance!r}")
    labels = np.asarray(labels)
    n_pos = int(labels.sum())
    if n_pos in (0, len(labels)):
        raise ValueError(f"training labels have one class ({n_pos} deaths in {len(labels)} stays)")
    odds_factor = (len(labels) - n_pos) / n_pos  # negatives per positive
    if imbalance == "pos_weight":
        return task_class(pos_weight=odds_factor, logit_shift=math.log(odds_factor), **task_kwargs), None
    if imbalance == "sampler":
        return task_class(logit_shift=math.log(odds_factor), **task_kwargs), class_balance_weights(labels)
    return task_class(**task_kwargs), None


# ----------------------------------------------------------------- loop machinery


def pick_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def autocast(device: torch.device):
    """bf16 autocast on GPUs that support it (no loss scaling needed); full precision elsewhere."""
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def to_device(batch: Batch, device: torch.device) -> Batch:
    # non_blocking only helps from pinned memory, which the loaders pin only for CUDA.
    return {k: v.to(device, non_blocking=device.type == "cuda") for k, v in batch.items()}


def lr_multiplier(step: int, *, warmup_steps: int, total_steps: int, schedule: str, min_lr_ratio: float) -> float:
    """Linear warmup to 1, then cosine or linear decay to `min_lr_ratio` at `total_steps`."""
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    if schedule == "cosine":
        decay = 0.5 * (1 + math.cos(math.pi * progress))
    elif schedule == "linear":
        decay = 1 - progress
    else:
        raise ValueError(f"schedule must be 'cosine' or 'linear', got {schedule!r}")
    return min_lr_ratio + (1 - min_lr_ratio) * decay


def make_optimizer(model: nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    # As in nanoGPT: decay matrices and embeddings, not biases and norm gains.
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=lr)


@dataclass
class EarlyStopping:
    mode: str  # "max" or "min"
    patience: int | None  # stop after this many epochs without improvement; None never stops
    best: float | None = None
    best_epoch: int = -1
    bad_epochs: int = 0

    def update(self, value: float, epoch: int) -> bool:
        """Record one epoch's validation value; True if it is a new best."""
        improved = self.best is None or (value > self.best if self.mode == "max" else value < self.best)
        if improved:
            self.best, self.best_epoch, self.bad_epochs = value, epoch, 0
        else:
            self.bad_epochs += 1
        return improved

    @property
    def should_stop(self) -> bool:
        return self.patience is not None and self.bad_epochs >= self.patience


def rng_state() -> dict[str, Any]:
    """Every RNG a training step may draw from, in a form `torch.load(weights_only=True)` accepts."""
    np_state = np.random.get_state(legacy=False)
    state = {
        "python": random.getstate(),
        "numpy": {**np_state, "state": {"key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
                                        "pos": np_state["state"]["pos"]}},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np_state = state["numpy"]
    key = np_state["state"]["key"].numpy().astype(np.uint32)
    np.random.set_state({**np_state, "state": {"key": key, "pos": np_state["state"]["pos"]}})
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Tensors and plain containers only (`weights_only=True`): unpickling an arbitrary
    object runs code of the file's author, so a checkpoint holding one is refused."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        # torch's message suggests weights_only=False; keep only the line naming the object.
        what = [line.strip() for line in str(err).splitlines() if "Unsupported global" in line]
        raise ValueError(
            f"{path}: refusing to load this checkpoint: it holds a pickled object that is not a tensor or a plain "
            f"container, and unpickling it could run arbitrary code{' (' + what[0] + ')' if what else ''}") from err


def load_trained_model(path: str | Path, device: torch.device) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a registered model from a checkpoint written by `fit` (metadata names it)."""
    checkpoint = load_checkpoint(path)
    meta = checkpoint["metadata"]
    model = build_model(meta["model"], **meta["model_config"])
    model.load_state_dict(checkpoint["model"])
    return model.to(device).eval(), checkpoint


@torch.no_grad()
def predict(model: nn.Module, task: Task, loader: Iterable[Batch], device: torch.device) -> dict[str, np.ndarray]:
    """Run `task.predict` over a loader; returns one numpy array per key, one row per example."""
    model.eval()
    parts: dict[str, list[torch.Tensor]] = defaultdict(list)
    for batch in loader:
        with autocast(device):
            out = task.predict(model, to_device(batch, device))
        for key, value in out.items():
            parts[key].append(value.float().cpu() if value.is_floating_point() else value.cpu())
    return {key: torch.cat(values).numpy() for key, values in parts.items()}


# ------------------------------------------------------------------------ the loop


@dataclass
class FitConfig:
    epochs: int
    lr: float
    weight_decay: float
    warmup_steps: int
    schedule: str  # "cosine" or "linear"
    min_lr_ratio: float
    grad_clip: float | None
    patience: int | None
    seed: int


@dataclass
class FitResult:
    best_epoch: int
    best_metric: float
    epochs_run: int
    stopped_early: bool
    history: list[dict[str, float]] = field(default_factory=list)


def fit(
    model: nn.Module,
    task: Task,
    train_loader: Iterable[Batch],
    val_loader: Iterable[Batch],
    config: FitConfig,
    *,
    checkpoint_dir: str | Path,
    live_dir: str | Path,
    resume: bool = False,
    device: torch.device | None = None,
    metadata: dict[str, Any] | None = None,
) -> FitResult:
    """Train `model` on `task`; leaves it holding the best validation weights.

    Writes `checkpoint_dir/best.pt` (weights of the best epoch) and `last.pt` (everything
    needed to continue: model, optimizer, scheduler, epoch, step, RNG states,
    early-stopping state, history) after every epoch. With `resume`, an existing
    `last.pt` is picked up at the start of the epoch after it, so a killed run ends
    exactly where an uninterrupted one would; a finished run returns at once.
    `metadata` (e.g. the model name and config) is stored in both checkpoints.
    """
    if config.epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {config.epochs}")
    device = device or pick_device()
    checkpoint_dir = Path(checkpoint_dir)
    best_path, last_path = checkpoint_dir / "best.pt", checkpoint_dir / "last.pt"
    state = load_checkpoint(last_path) if resume and last_path.exists() else None
    if state is not None:
        _check_resumable(state, task, config, last_path)
        if state["finished"]:
            log.info("%s: %s already finished; loading its best weights", task.name, last_path)
            model.load_state_dict(load_checkpoint(best_path)["model"])
            return FitResult(**state["result"])

    seed_everything(config.seed)
    model.to(device)
    optimizer = make_optimizer(model, config.lr, config.weight_decay)
    total_steps = config.epochs * len(train_loader)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_multiplier(
        s, warmup_steps=config.warmup_steps, total_steps=total_steps, schedule=config.schedule,
        min_lr_ratio=config.min_lr_ratio))
    stopper = EarlyStopping(task.mode, config.patience)
    history: list[dict[str, float]] = []
    start_epoch, step = 0, 0
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        stopper = EarlyStopping(**state["early_stopping"])
        history, start_epoch, step = state["result"]["history"], state["epoch"], state["step"]
        set_rng_state(state["rng"])
        log.info("%s: resuming from %s at epoch %d (step %d)", task.name, last_path, start_epoch + 1, step)

    live = Live(str(live_dir), resume=state is not None, dvcyaml=False, save_dvc_exp=False)
    live.step = start_epoch
    sampler = getattr(train_loader, "batch_sampler", None)
    result = None
    for epoch in range(start_epoch, config.epochs):
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        model.train()
        train_logs: dict[str, float] = defaultdict(float)
        n_batches = 0
        # disable=None: a live bar on a terminal, no carriage-return spam in CI logs
        bar = tqdm(train_loader, desc=f"{task.name} epoch {epoch + 1}/{config.epochs}", leave=False, disable=None)
        for batch in bar:
            with autocast(device):
                loss, logged = task.loss(model, to_device(batch, device))
            if not torch.isfinite(loss):
                raise FloatingPointError(f"{task.name}: loss is {loss.item()} at epoch {epoch + 1}, step {step}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.grad_clip:
                nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()
            scheduler.step()
            step += 1
            n_batches += 1
            train_logs["loss"] += loss.item()
            for key, value in logged.items():
                train_logs[key] += value
            bar.set_postfix(loss=f"{train_logs['loss'] / n_batches:.4f}")

        try:
            val = task.metrics(predict(model, task, val_loader, device))
        except metrics.UndefinedMetricError as err:
            raise ValueError(f"{task.name}: validation metric undefined ({err}); early stopping needs it") from err
        if task.monitor not in val:
            raise KeyError(f"{task.name}: validation metrics {sorted(val)} lack the monitored {task.monitor!r}")
        improved = stopper.update(val[task.monitor], epoch)
        history.append({
            "epoch": epoch, "step": step, "lr": optimizer.param_groups[0]["lr"],
            **{f"train/{k}": v / n_batches for k, v in train_logs.items()},
            **{f"val/{k}": v for k, v in val.items()},
        })
        log.info("%s epoch %d/%d: %s", task.name, epoch + 1, config.epochs,
                 ", ".join(f"{k}={v:.4g}" for k, v in history[-1].items() if "/" in k))
        checkpoint = {"model": model.state_dict(), "epoch": epoch + 1, "step": step, "task": task.name,
                      "task_config": task.config(), "metadata": metadata or {}, "val": val}
        if improved:
            save_checkpoint(best_path, checkpoint)
        finished = stopper.should_stop or epoch + 1 == config.epochs
        result = FitResult(stopper.best_epoch, stopper.best, epoch + 1, stopper.should_stop, history)
        save_checkpoint(last_path, {
            **checkpoint, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "early_stopping": asdict(stopper), "rng": rng_state(), "config": asdict(config),
            "finished": finished, "result": asdict(result),
        })
        for key, value in history[-1].items():
            if key not in ("epoch", "step"):
                live.log_metric(key, value)
        live.next_step()
        if stopper.should_stop:
            log.info("%s: no improvement in %s for %d epochs; stopping", task.name, task.monitor, stopper.bad_epochs)
            break
    live.end()
    model.load_state_dict(load_checkpoint(best_path)["model"])
    return result


def _check_resumable(state: dict[str, Any], task: Task, config: FitConfig, path: Path) -> None:
    if state["task"] != task.name:
        raise ValueError(f"{path} is a {state['task']!r} checkpoint; cannot resume task {task.name!r} from it")
    changed = {k: (v, getattr(config, k)) for k, v in state["config"].items() if getattr(config, k) != v}
    if changed:
        raise ValueError(f"{path} was written with other settings {changed} (saved, now); "
                         "resume only with the same settings, or train from scratch")
