"""DVC stage `train@MODEL`: optional next-token pretraining, then mortality fine-tuning.

    python -P stages/train.py MODEL [--resume]

Reads params `train.MODEL`; writes models/MODEL/{pretrain,finetune}/{best,last}.pt and
DVCLive logs under reports/train/MODEL/{pretrain,finetune}/. `--resume` continues a
killed run from its last completed epoch (a finished phase is not repeated).
clinical_lf has no pretraining; its feature encoder (fitted on train) is stored in the
checkpoint, and every `attention_every` training steps its attention is saved under
reports/train/clinical_lf/attention/batch_<global step>.npz (an `on_step` callback of the loop).
With `init_embeddings: med2vec` (lstm), the token table starts from med2vec's code vectors
(models/med2vec/embeddings.parquet) for the codes both vocabularies share.
prompt_bart has one phase, `models/prompt_bart/denoise/`: reconstruction of corrupted
patient visit sequences; its vocabulary and demographic scaler (train split) are stored
in the checkpoint.

With `train.MODEL.nproc` N > 1 the stage re-executes itself under
`torchrun --standalone --nproc_per_node=N` (same command line, so dvc.yaml's cmd stays
`python -P stages/train.py MODEL`): N processes, one per GPU on CUDA, each reading its
share of every global batch of `batch_size` stays (DistributedDataParallel); rank 0
writes every file. reports/metrics/train_MODEL.json records the wall seconds of starting
(params, torchrun and its processes), loading and each phase (of this invocation: a
resumed run counts its own time).
"""
import argparse
import logging
import os
import sys
import time

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist

from ehrseq import paths
from ehrseq.code_embeddings.transfer import init_embedding_from_codes
from ehrseq.io import setup_logging, write_json
from ehrseq.model_data import EMBEDDING_MODELS, SURVIVAL_MODELS, data_inputs, load_model_data, task_class
from ehrseq.models import build_model
from ehrseq.models.attention import AttentionSnapshots
from ehrseq.params import check_model_kwargs, load_params
from ehrseq.tasks import NextTokenTask, mortality_task
from ehrseq.torch_utils import Distributed, seed_everything, start_distributed
from ehrseq.training import FitConfig, fit

log = logging.getLogger("ehrseq.stages.train")

# Optimizer settings shared by both phases (`train.MODEL.lr`, ...); a phase section
# (`pretrain`, `finetune`: epochs, patience) may override any of them.
OPTIMIZER_KEYS = ("lr", "weight_decay", "warmup_steps", "schedule", "min_lr_ratio", "grad_clip")
LAUNCHED_AT = "EHRSEQ_TRAIN_LAUNCHED_AT"  # environment: when the command was first started (torchrun relaunch)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--resume", action="store_true", help="continue from models/MODEL/*/last.pt")
    args = parser.parse_args()
    start = float(os.environ.get(LAUNCHED_AT, time.time()))  # a relaunched run counts from the first launch
    setup_logging(logging.INFO if int(os.environ.get("RANK", "0")) == 0 else logging.WARNING)  # rank 0 logs
    params = load_params(f"train.{args.model}")["train"][args.model]
    check_model_kwargs(args.model, params["model"], data_inputs(args.model))  # before any data is read
    nproc = params.get("nproc", 1)
    if params["batch_size"] % nproc:
        raise ValueError(f"params.yaml: train.{args.model}.batch_size = {params['batch_size']} is not a multiple "
                         f"of train.{args.model}.nproc = {nproc} (each process reads an equal share)")
    if nproc > 1 and "WORLD_SIZE" not in os.environ:
        relaunch_under_torchrun(nproc, start)
    ctx = start_distributed()
    # wall seconds per part of this run (rank 0's clock), and epochs per phase (a resumed phase: in all)
    cost = {"seconds_by_phase": {"start": round(time.time() - start, 1)}, "epochs_by_phase": {}}
    if args.model == "prompt_bart":
        train_prompt_bart(params, ctx, args.resume, cost)
    else:
        train_model(args.model, params, ctx, args.resume, cost)
    if ctx.is_main:
        write_json(paths.train_metrics(args.model), {
            "stage": f"train@{args.model}", "seconds": round(time.time() - start, 1), **cost,
            "nproc": ctx.world_size, "device": ctx.device.type, "resumed": args.resume,
            # CPU kernels split reductions by thread: a run repeats bit for bit only with as many threads
            "torch_threads": torch.get_num_threads()})
        log.info("%s trained in %.0f s (%s)", args.model, time.time() - start, cost)
    if dist.is_initialized():
        dist.destroy_process_group()


def relaunch_under_torchrun(nproc: int, start: float) -> None:
    """Replace this process by torchrun running this same command in `nproc` processes.
    `--no-python` keeps our `python -P` (stages/ must not shadow standard modules)."""
    os.environ[LAUNCHED_AT] = str(start)  # the seconds recorded include torchrun's start
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "--no-python", sys.executable, "-P", *sys.argv]
    log.info("nproc %d: re-executing under torchrun: %s", nproc, " ".join(command))
    sys.stdout.flush(), sys.stderr.flush()
    os.execv(sys.executable, command)


def train_model(name: str, params: dict, ctx: Distributed, resume: bool, cost: dict) -> None:
    start, device = time.time(), ctx.device
    data = load_model_data(name, ("train", "val"), max_events=params.get("max_events"))
    model_config = {**data.model_inputs, **params["model"]}
    seed_everything(params["seed"])  # the initial weights too are a function of the seed
    model = build_model(name, **model_config)
    log.info("%s: %d parameters on %s; %d train and %d val stays", name,
             sum(p.numel() for p in model.parameters()), device, len(data.datasets["train"]), len(data.datasets["val"]))
    metadata = {"model": name, "model_config": model_config}
    if params.get("init_embeddings", "none") == "med2vec":  # issue 12: start from med2vec's code vectors
        tokens = pd.read_csv(paths.VOCAB, keep_default_na=False)["str"].tolist()
        metadata["init_embeddings"] = init_embedding_from_codes(model.embed, tokens,
                                                                pd.read_parquet(paths.MED2VEC_EMBEDDINGS))
        log.info("token embeddings from med2vec: %s", metadata["init_embeddings"])
    if data.encoder is not None:
        metadata["encoder"] = data.encoder.to_dict()

    def loader(split, shuffle=True, weights=None):
        return data.loader(split, params["batch_size"], device, seed=params["seed"], shuffle=shuffle,
                           pool_batches=params["bucket_pool_batches"], weights=weights, rank=ctx.rank,
                           world_size=ctx.world_size)

    task_kwargs, on_step = {}, None
    if name in EMBEDDING_MODELS:
        task_kwargs = {"temporal_lambda": params["temporal_lambda"]}
        if params["attention_every"]:
            on_step = AttentionSnapshots(params["attention_every"], paths.train_reports(name) / "attention")
    if name in SURVIVAL_MODELS:  # discrete-time survival: no class imbalance to correct
        log.info("%s: rows dropped by reason %s", name, data.dropped)
        finetune_task, weights = task_class(name)(), None
    else:
        labels = np.asarray(data.datasets["train"].labels)
        finetune_task, weights = mortality_task(labels, params["imbalance"], task_class(name), **task_kwargs)
    # (phase, task, sampling weights): pretraining reads every stay once an epoch.
    phases = [("pretrain", NextTokenTask(), None)] if "pretrain" in params else []
    phases.append(("finetune", finetune_task, weights))
    cost["seconds_by_phase"]["load"] = round(time.time() - start, 1)
    for phase, task, phase_weights in phases:
        if params[phase]["epochs"] == 0:  # pretraining is optional; fine-tuning is not (fit refuses 0 epochs)
            log.info("%s: skipped (0 epochs)", phase)
            continue
        start = time.time()
        result = fit(
            model, task, loader("train", weights=phase_weights), loader("val", shuffle=False),
            FitConfig(seed=params["seed"], **{**{k: params[k] for k in OPTIMIZER_KEYS}, **params[phase]}),
            checkpoint_dir=paths.model_dir(name) / phase,
            live_dir=paths.train_reports(name) / phase,
            resume=resume, device=device, metadata=metadata, on_step=on_step, compile=params.get("compile", False),
        )
        cost["seconds_by_phase"][phase] = round(time.time() - start, 1)
        cost["epochs_by_phase"][phase] = result.epochs_run
        log.info("%s: best val %s %.4f at epoch %d of %d%s", phase, task.monitor, result.best_metric,
                 result.best_epoch + 1, result.epochs_run, " (stopped early)" if result.stopped_early else "")


def train_prompt_bart(params: dict, ctx: Distributed, resume: bool, cost: dict) -> None:
    from ehrseq.data import token_loader
    from ehrseq.patient_visits import (
        Corruption,
        DemographicEncoder,
        PatientDataset,
        PatientVocab,
        build_model_inputs,
        collate_patients,
        load_patients,
        patient_examples,
    )
    from ehrseq.tasks import PromptBartTask

    start, device = time.time(), ctx.device
    patients, stats = load_patients(paths.INTERIM)
    train = patients.split("train")
    vocab, demo = PatientVocab.fit(train), DemographicEncoder.fit(train.demographics)  # train split only
    corruption = Corruption(**params["corruption"])
    datasets = {}
    for split, view in (("train", "train"), ("val", "fixed")):
        part = patients.split(split)
        encoded, enc_stats = vocab.encode(part)
        examples, ex_stats = patient_examples(encoded, part.demographics, demo, params["max_length"], view,
                                              corruption, seed=params["seed"])
        datasets[split] = PatientDataset(examples, corruption if view == "train" else None)
        log.info("prompt_bart %s: %s %s", split, enc_stats, ex_stats)
    log.info("prompt_bart data: %s; vocabulary of %d tokens", stats, len(vocab))
    model_config = {**build_model_inputs(vocab), **params["model"], "max_length": params["max_length"]}
    seed_everything(params["seed"])
    model = build_model("prompt_bart", **model_config)
    log.info("prompt_bart: %d parameters on %s", sum(p.numel() for p in model.parameters()), device)
    loaders = {s: token_loader(ds, params["batch_size"], device=device, seed=params["seed"], shuffle=s == "train",
                               pool_batches=params["bucket_pool_batches"], collate_fn=collate_patients,
                               rank=ctx.rank, world_size=ctx.world_size)
               for s, ds in datasets.items()}
    cost["seconds_by_phase"]["load"] = round(time.time() - start, 1)
    start = time.time()
    result = fit(
        model, PromptBartTask(), loaders["train"], loaders["val"],
        FitConfig(seed=params["seed"], **{**{k: params[k] for k in OPTIMIZER_KEYS}, **params["denoise"]}),
        checkpoint_dir=paths.checkpoint("prompt_bart", "denoise").parent,
        live_dir=paths.train_reports("prompt_bart") / "denoise",
        resume=resume, device=device, compile=params.get("compile", False),
        metadata={"model": "prompt_bart", "model_config": model_config, "vocab": vocab.to_dict(),
                  "demographics": demo.to_dict(), "corruption": params["corruption"], "data": stats},
    )
    cost["seconds_by_phase"]["denoise"] = round(time.time() - start, 1)
    cost["epochs_by_phase"]["denoise"] = result.epochs_run
    log.info("prompt_bart: best val loss %.4f at epoch %d of %d%s", result.best_metric, result.best_epoch + 1,
             result.epochs_run, " (stopped early)" if result.stopped_early else "")


if __name__ == "__main__":
    main()
