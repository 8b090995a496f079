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
"""
import argparse
import logging
import time

import numpy as np
import pandas as pd

from ehrseq import paths
from ehrseq.code_embeddings.transfer import init_embedding_from_codes
from ehrseq.io import setup_logging
from ehrseq.model_data import EMBEDDING_MODELS, SURVIVAL_MODELS, data_inputs, load_model_data, task_class
from ehrseq.models import build_model
from ehrseq.models.attention import AttentionSnapshots
from ehrseq.params import check_model_kwargs, load_params
from ehrseq.tasks import NextTokenTask, mortality_task
from ehrseq.torch_utils import pick_device, seed_everything
from ehrseq.training import FitConfig, fit

log = logging.getLogger("ehrseq.stages.train")

# Optimizer settings shared by both phases (`train.MODEL.lr`, ...); a phase section
# (`pretrain`, `finetune`: epochs, patience) may override any of them.
OPTIMIZER_KEYS = ("lr", "weight_decay", "warmup_steps", "schedule", "min_lr_ratio", "grad_clip")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--resume", action="store_true", help="continue from models/MODEL/*/last.pt")
    args = parser.parse_args()
    setup_logging()
    params = load_params(f"train.{args.model}")["train"][args.model]
    check_model_kwargs(args.model, params["model"], data_inputs(args.model))  # before any data is read
    device = pick_device()
    start = time.time()
    if args.model == "prompt_bart":
        train_prompt_bart(params, device, args.resume)
        log.info("%s trained in %.0f s", args.model, time.time() - start)
        return

    data = load_model_data(args.model, ("train", "val"), max_events=params.get("max_events"))
    model_config = {**data.model_inputs, **params["model"]}
    seed_everything(params["seed"])  # the initial weights too are a function of the seed
    model = build_model(args.model, **model_config)
    log.info("%s: %d parameters on %s; %d train and %d val stays", args.model,
             sum(p.numel() for p in model.parameters()), device, len(data.datasets["train"]), len(data.datasets["val"]))
    metadata = {"model": args.model, "model_config": model_config}
    if params.get("init_embeddings", "none") == "med2vec":  # issue 12: start from med2vec's code vectors
        tokens = pd.read_csv(paths.VOCAB, keep_default_na=False)["str"].tolist()
        metadata["init_embeddings"] = init_embedding_from_codes(model.embed, tokens,
                                                                pd.read_parquet(paths.MED2VEC_EMBEDDINGS))
        log.info("token embeddings from med2vec: %s", metadata["init_embeddings"])
    if data.encoder is not None:
        metadata["encoder"] = data.encoder.to_dict()

    def loader(split, shuffle=True, weights=None):
        return data.loader(split, params["batch_size"], device, seed=params["seed"], shuffle=shuffle,
                           pool_batches=params["bucket_pool_batches"], weights=weights)

    task_kwargs, on_step = {}, None
    if args.model in EMBEDDING_MODELS:
        task_kwargs = {"temporal_lambda": params["temporal_lambda"]}
        if params["attention_every"]:
            on_step = AttentionSnapshots(params["attention_every"], paths.train_reports(args.model) / "attention")
    if args.model in SURVIVAL_MODELS:  # discrete-time survival: no class imbalance to correct
        log.info("%s: rows dropped by reason %s", args.model, data.dropped)
        finetune_task, weights = task_class(args.model)(), None
    else:
        labels = np.asarray(data.datasets["train"].labels)
        finetune_task, weights = mortality_task(labels, params["imbalance"], task_class(args.model), **task_kwargs)
    # (phase, task, sampling weights): pretraining reads every stay once an epoch.
    phases = [("pretrain", NextTokenTask(), None)] if "pretrain" in params else []
    phases.append(("finetune", finetune_task, weights))
    for phase, task, phase_weights in phases:
        if params[phase]["epochs"] == 0:  # pretraining is optional; fine-tuning is not (fit refuses 0 epochs)
            log.info("%s: skipped (0 epochs)", phase)
            continue
        result = fit(
            model, task, loader("train", weights=phase_weights), loader("val", shuffle=False),
            FitConfig(seed=params["seed"], **{**{k: params[k] for k in OPTIMIZER_KEYS}, **params[phase]}),
            checkpoint_dir=paths.model_dir(args.model) / phase,
            live_dir=paths.train_reports(args.model) / phase,
            resume=args.resume, device=device, metadata=metadata, on_step=on_step,
        )
        log.info("%s: best val %s %.4f at epoch %d of %d%s", phase, task.monitor, result.best_metric,
                 result.best_epoch + 1, result.epochs_run, " (stopped early)" if result.stopped_early else "")
    log.info("%s trained in %.0f s", args.model, time.time() - start)


def train_prompt_bart(params: dict, device, resume: bool) -> None:
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
                               pool_batches=params["bucket_pool_batches"], collate_fn=collate_patients)
               for s, ds in datasets.items()}
    result = fit(
        model, PromptBartTask(), loaders["train"], loaders["val"],
        FitConfig(seed=params["seed"], **{**{k: params[k] for k in OPTIMIZER_KEYS}, **params["denoise"]}),
        checkpoint_dir=paths.checkpoint("prompt_bart", "denoise").parent,
        live_dir=paths.train_reports("prompt_bart") / "denoise",
        resume=resume, device=device,
        metadata={"model": "prompt_bart", "model_config": model_config, "vocab": vocab.to_dict(),
                  "demographics": demo.to_dict(), "corruption": params["corruption"], "data": stats},
    )
    log.info("prompt_bart: best val loss %.4f at epoch %d of %d%s", result.best_metric, result.best_epoch + 1,
             result.epochs_run, " (stopped early)" if result.stopped_early else "")


if __name__ == "__main__":
    main()
