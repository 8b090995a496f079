"""DVC stage `train@MODEL`: next-token pretraining, then mortality fine-tuning.

    python stages/train.py lstm [--resume]

Reads params `train.MODEL`; writes models/MODEL/{pretrain,finetune}/{best,last}.pt and
DVCLive logs under reports/train/MODEL/{pretrain,finetune}/. `--resume` continues a
killed run from its last completed epoch (a finished phase is not repeated).
"""
import argparse
import logging
import time

from ehrseq.data import TokenSequenceDataset, load_sequences, read_vocab_size, token_loader
from ehrseq.io import setup_logging
from ehrseq.models import build_model
from ehrseq.params import load_params
from ehrseq.training import FitConfig, NextTokenTask, fit, mortality_task, pick_device, seed_everything

log = logging.getLogger("ehrseq.stages.train")

VOCAB = "data/processed/vocab.csv"
SEQUENCES = "data/processed/sequences/{split}.parquet"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--resume", action="store_true", help="continue from models/MODEL/*/last.pt")
    args = parser.parse_args()
    setup_logging()
    params = load_params()["train"][args.model]
    device = pick_device()
    start = time.time()

    vocab_size = read_vocab_size(VOCAB)
    train, val = (load_sequences(SEQUENCES.format(split=s), vocab_size) for s in ("train", "val"))
    train_set, val_set = TokenSequenceDataset(train), TokenSequenceDataset(val)
    model_config = {"vocab_size": vocab_size, **params["model"]}
    seed_everything(params["seed"])  # the initial weights too are a function of the seed
    model = build_model(args.model, **model_config)
    log.info("%s: %d parameters on %s", args.model, sum(p.numel() for p in model.parameters()), device)

    def loader(dataset, shuffle=True, weights=None):
        return token_loader(dataset, params["batch_size"], device=device, seed=params["seed"], shuffle=shuffle,
                            pool_batches=params["bucket_pool_batches"], weights=weights)

    finetune_task, weights = mortality_task(train["mortality"].to_numpy(), params["imbalance"])
    phases = [
        ("pretrain", NextTokenTask(), loader(train_set)),
        ("finetune", finetune_task, loader(train_set, weights=weights)),
    ]
    for phase, task, train_loader in phases:
        if params[phase]["epochs"] == 0:  # pretraining is optional; fine-tuning is not (fit refuses 0 epochs)
            log.info("%s: skipped (0 epochs)", phase)
            continue
        result = fit(
            model, task, train_loader, loader(val_set, shuffle=False),
            FitConfig(seed=params["seed"], **params[phase]),
            checkpoint_dir=f"models/{args.model}/{phase}",
            live_dir=f"reports/train/{args.model}/{phase}",
            resume=args.resume, device=device,
            metadata={"model": args.model, "model_config": model_config},
        )
        log.info("%s: best val %s %.4f at epoch %d of %d%s", phase, task.monitor, result.best_metric,
                 result.best_epoch + 1, result.epochs_run, " (stopped early)" if result.stopped_early else "")
    log.info("%s trained in %.0f s", args.model, time.time() - start)


if __name__ == "__main__":
    main()
