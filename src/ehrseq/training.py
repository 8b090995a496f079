"""One training loop for every model.

The loop never looks inside a batch (a dict of tensors). A *task* (`ehrseq.tasks`) does:

    task.loss(model, batch)    -> (scalar loss, {name: float} to log besides the loss)
    task.predict(model, batch) -> {name: [B] tensor}, one row per example
    task.metrics(predictions)  -> {name: float} over a whole split (numpy arrays in)
    task.monitor, task.mode    -> the validation metric early stopping watches, "max"/"min"
    task.config()              -> constructor arguments, stored in checkpoints

so a new model plugs in with its own task and the loop stays as it is. The loop owns
the rest: device, seeds, AdamW with warmup then cosine/linear decay, gradient clipping,
bf16 autocast on CUDA, optional `torch.compile`, early stopping, checkpoints (best and
last), resume, DVCLive logs and a progress bar. Anything else done during training
(attention snapshots) is an `on_step` callback; the loop imports no explanation code.

Multi-process (under torchrun, after `torch_utils.start_distributed`): the same loop, the
few lines marked `if ddp:` -- DistributedDataParallel averages gradients, every rank
reads its share of each global batch (`data.ShardedBatches`), validation rows are
gathered from every rank (padding dropped), and only rank 0 writes checkpoints, DVCLive
logs and the progress bar.
"""
from __future__ import annotations

import logging
import math
import pickle
import random
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Protocol

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from ehrseq import metrics
from ehrseq.io import atomic_path
from ehrseq.models import build_model
from ehrseq.torch_utils import Batch, autocast, gather_rows, is_distributed, pick_device, seed_everything, to_device

log = logging.getLogger(__name__)

# on_step(step, model, batch): called before each training step's forward pass with the
# global step (0-based, counted from the start of the run, resumed or not) and the batch
# on the device. It must leave the model's weights, mode and every RNG as it found them.
StepCallback = Callable[[int, nn.Module, Batch], None]


class Task(Protocol):
    name: str
    monitor: str
    mode: str

    def loss(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]: ...
    def predict(self, model: nn.Module, batch: Batch) -> dict[str, torch.Tensor]: ...
    def metrics(self, predictions: dict[str, np.ndarray]) -> dict[str, float]: ...
    def config(self) -> dict[str, Any]: ...


# ----------------------------------------------------------------- loop machinery


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


class TaskLoss(nn.Module):
    """`task.loss(model, batch)` as one module's forward: DistributedDataParallel then sees
    every parameter the loss uses (a task may call a model's method besides `forward`,
    e.g. `next_token_logits`), and the ones it leaves unused (the other phase's head)."""

    def __init__(self, model: nn.Module, task: Task):
        super().__init__()
        self.model, self.task = model, task

    def forward(self, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        return self.task.loss(self.model, batch)


def mean_over_ranks(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """The mean of each value over the ranks (every rank must call it with the same keys)."""
    keys = sorted(values)
    totals = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(totals)
    return dict(zip(keys, (totals / dist.get_world_size()).tolist()))


def all_ranks(value: Any) -> list[Any]:
    """`value` of every rank, in rank order, on every rank."""
    values: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(values, value)
    return values


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
    on_step: StepCallback | None = None,
    compile: bool = False,
) -> FitResult:
    """Train `model` on `task`; leaves it holding the best validation weights.

    Writes `checkpoint_dir/best.pt` (weights of the best epoch) and `last.pt` (everything
    needed to continue: model, optimizer, scheduler, epoch, step, RNG states,
    early-stopping state, history) after every epoch. With `resume`, an existing
    `last.pt` is picked up at the start of the epoch after it, so a killed run ends
    exactly where an uninterrupted one would; a finished run returns at once.
    `metadata` (e.g. the model name and config) is stored in both checkpoints.
    `on_step` (see `StepCallback`) runs before every training step, on rank 0 only.
    `compile`: training steps run through `torch.compile(model)` (checkpoints hold the
    plain model's weights).

    Under torchrun (a process group of more than one rank), call it on every rank with
    loaders from `data.token_loader(..., rank=, world_size=)`; a resumed run must have the
    same number of ranks (each rank's RNG state is in `last.pt`). Dropout masks come from
    per-rank RNG streams, so only a model without randomness (dropout 0) follows the
    one-process run step for step; then the difference is float reduction order.
    """
    if config.epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {config.epochs}")
    device = device or pick_device()
    ddp = is_distributed()
    rank, world_size = (dist.get_rank(), dist.get_world_size()) if ddp else (0, 1)
    main = rank == 0  # the one process that writes files
    checkpoint_dir = Path(checkpoint_dir)
    best_path, last_path = checkpoint_dir / "best.pt", checkpoint_dir / "last.pt"
    state = load_checkpoint(last_path) if resume and last_path.exists() else None
    if state is not None:
        _check_resumable(state, task, config, last_path, world_size)
        if state["finished"]:
            log.info("%s: %s already finished; loading its best weights", task.name, last_path)
            model.load_state_dict(load_checkpoint(best_path)["model"])
            return FitResult(**state["result"])

    seed_everything(config.seed + rank)  # rank 0 draws as one process does; the others their own dropout
    model.to(device)
    step_model = TaskLoss(torch.compile(model) if compile else model, task)
    if ddp:
        step_model = DistributedDataParallel(step_model, device_ids=[device] if device.type == "cuda" else None,
                                             find_unused_parameters=True)
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
        set_rng_state(state["rank_rng"][rank] if ddp else state["rng"])
        log.info("%s: resuming from %s at epoch %d (step %d)", task.name, last_path, start_epoch + 1, step)

    if main:
        from dvclive import Live  # imports dvc (~0.3 s): only stages that fit pay, not those loading a model

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
        bar = tqdm(train_loader, desc=f"{task.name} epoch {epoch + 1}/{config.epochs}", leave=False,
                   disable=None if main else True)
        for batch in bar:
            batch = to_device(batch, device)
            with autocast(device):
                if on_step is not None and main:
                    on_step(step, model, batch)
                loss, logged = step_model(batch)
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
        if ddp:  # the global batches' mean: every rank's share is the same size
            train_logs = mean_over_ranks(train_logs, device)

        predictions = predict(model, task, val_loader, device)
        if ddp:  # every rank predicted its share of val: all rows, padding dropped, on every rank
            shards = val_loader.batch_sampler
            predictions = gather_rows(predictions, shards.rank_indices(), shards.global_indices())
        try:
            val = task.metrics(predictions)
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
        finished = stopper.should_stop or epoch + 1 == config.epochs
        result = FitResult(stopper.best_epoch, stopper.best, epoch + 1, stopper.should_stop, history)
        rng = {"rng": rng_state(), "world_size": world_size}
        if ddp:  # each rank continues its own dropout stream on resume
            rng["rank_rng"] = all_ranks(rng["rng"])
        if main:
            checkpoint = {"model": model.state_dict(), "epoch": epoch + 1, "step": step, "task": task.name,
                          "task_config": task.config(), "metadata": metadata or {}, "val": val}
            if improved:
                save_checkpoint(best_path, checkpoint)
            save_checkpoint(last_path, {
                **checkpoint, **rng, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "early_stopping": asdict(stopper), "config": asdict(config), "finished": finished,
                "result": asdict(result),
            })
            for key, value in history[-1].items():
                if key not in ("epoch", "step"):
                    live.log_metric(key, value)
            live.next_step()
        if stopper.should_stop:
            log.info("%s: no improvement in %s for %d epochs; stopping", task.name, task.monitor, stopper.bad_epochs)
            break
    if main:
        live.end()
    if ddp:  # rank 0 has written best.pt
        dist.barrier()
    model.load_state_dict(load_checkpoint(best_path)["model"])
    return result


def _check_resumable(state: dict[str, Any], task: Task, config: FitConfig, path: Path, world_size: int) -> None:
    if state["task"] != task.name:
        raise ValueError(f"{path} is a {state['task']!r} checkpoint; cannot resume task {task.name!r} from it")
    if state.get("world_size", 1) != world_size:
        raise ValueError(f"{path} was written by {state.get('world_size', 1)} process(es), this run has {world_size}: "
                         "each rank's batches and RNG state depend on it; resume with the same nproc")
    changed = {k: (v, getattr(config, k)) for k, v in state["config"].items() if getattr(config, k) != v}
    if changed:
        raise ValueError(f"{path} was written with other settings {changed} (saved, now); "
                         "resume only with the same settings, or train from scratch")
