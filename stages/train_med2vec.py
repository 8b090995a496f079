"""DVC stage `train_med2vec`: TemporalMed2Vec code embeddings, its lambda = 0 ablation and
the gensim skip-gram baseline, on the train split's patient-level code sequences.

    python -P stages/train_med2vec.py [--resume]

Reads params `train.med2vec` (seed, vocab, model, pairs, fit) and data/interim/{events,
diagnoses,cohort}.parquet. Writes models/med2vec/: embeddings.parquet (code, vector; the
temporal model), vocab.csv, config.json, variants/{lambda0,gensim}.parquet,
checkpoints/{temporal,lambda0}/{best,last}.pt; DVCLive curves under
reports/train/med2vec/; counts in reports/metrics/train_med2vec.json. Validation loss
(early stopping) is on val patients; test patients are never read.
"""
import argparse
import logging
import shutil
import time

import numpy as np
import pandas as pd
import torch

from ehrseq import paths
from ehrseq.code_embeddings.pairs import SkipGramBatches, noise_distribution
from ehrseq.code_embeddings.sequences import code_table, fit_code_vocab, patient_sentences, sequence_arrays
from ehrseq.code_embeddings.word2vec import train_word2vec
from ehrseq.io import atomic_path, setup_logging, write_json, write_parquet
from ehrseq.models.med2vec import TemporalMed2Vec, embedding_dim_for
from ehrseq.params import load_params
from ehrseq.tasks import SkipGramTask
from ehrseq.torch_utils import pick_device, seed_everything
from ehrseq.training import FitConfig, fit

log = logging.getLogger("ehrseq.stages.train_med2vec")

OUT = paths.MED2VEC
LIVE = paths.MED2VEC_TRAIN_REPORTS


def vectors_frame(codes: list[str], weights) -> pd.DataFrame:
    return pd.DataFrame({"code": codes, "vector": list(weights.detach().cpu().float().numpy())})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resume", action="store_true", help="continue from models/med2vec/checkpoints/*/last.pt")
    args = parser.parse_args()
    stage_start = time.time()
    setup_logging()
    params = load_params("train.med2vec")["train"]["med2vec"]
    seed, vp, mp, pp = params["seed"], params["vocab"], params["model"], params["pairs"]
    device = pick_device()

    events = pd.read_parquet(paths.EVENTS, columns=["subject_id", "hadm_id", "stay_id", "time", "code"])
    diagnoses = pd.read_parquet(paths.DIAGNOSES, columns=["subject_id", "hadm_id", "dischtime", "code"])
    cohort = pd.read_parquet(paths.COHORT, columns=["subject_id", "split"])
    tables, report = {}, {"sequences": {}}
    for split in ("train", "val"):
        tables[split], report["sequences"][split] = code_table(events, diagnoses, cohort, (split,), vp["icd_grouping"])
        log.info("%s: %s", split, report["sequences"][split])
    vocab, report["vocab"] = fit_code_vocab(tables["train"]["code"], vp["min_frequency"])
    dim = embedding_dim_for(len(vocab)) if mp["embedding_dim"] == "auto" else int(mp["embedding_dim"])
    log.info("vocabulary: %s; embedding_dim %d", report["vocab"], dim)

    noise = noise_distribution(vocab.counts)
    batches = {split: SkipGramBatches(sequence_arrays(tables[split], vocab), noise, n_contexts=pp["n_contexts"],
                                      horizon_days=pp["horizon_days"], n_negatives=pp["n_negatives"],
                                      batch_size=pp["batch_size"], shuffle=split == "train", seed=seed)
               for split in ("train", "val")}
    report["targets"] = {s: {"targets": len(b.targets), "lonely_targets_left_out": b.lonely_targets}
                         for s, b in batches.items()}
    # how far apart contexts are decides what lambda can change: measured on the val pairs
    dt = torch.cat([b["dt"][b["context_mask"]] for b in batches["val"]]).numpy()
    over = {"1h": 1 / 24, "6h": 0.25, "1d": 1, "7d": 7, "30d": 30}
    report["val_pairs_dt_days"] = {"pairs": len(dt),
                                   **{f"share_over_{k}": float((dt > d).mean()) for k, d in over.items()},
                                   "mean_weight": float(np.exp(-mp["time_decay"] * dt).mean())}
    log.info("val context pairs: %s", report["val_pairs_dt_days"])
    fit_config = FitConfig(seed=seed, **params["fit"])
    config = {"icd_grouping": vp["icd_grouping"], "embedding_dim": dim, "time_decay": mp["time_decay"],
              "vocab_size": len(vocab)}
    report["runs"] = {}
    if OUT.exists() and not args.resume:  # a fresh run leaves nothing of an older one
        shutil.rmtree(OUT)
    (OUT / "variants").mkdir(parents=True, exist_ok=True)
    # (name, lambda): the temporal model and its ablation, same data, seed and budget
    for name, decay in (("temporal", mp["time_decay"]), ("lambda0", 0.0)):
        start, cpu_start = time.time(), time.process_time()
        seed_everything(seed)
        model_config = {"vocab_size": len(vocab), "embedding_dim": dim, "time_decay": decay}
        model = TemporalMed2Vec(**model_config)
        result = fit(model, SkipGramTask(), batches["train"], batches["val"], fit_config,
                     checkpoint_dir=OUT / "checkpoints" / name, live_dir=LIVE / name, resume=args.resume,
                     device=device, metadata={"model": "med2vec", "model_config": model_config})
        frame = vectors_frame(vocab.codes, model.code_vectors())
        write_parquet(paths.MED2VEC_EMBEDDINGS if name == "temporal" else OUT / "variants" / f"{name}.parquet", frame)
        report["runs"][name] = {"time_decay_per_day": decay, "best_epoch": result.best_epoch + 1,
                                "epochs_run": result.epochs_run, "best_val_loss": result.best_metric,
                                "seconds": round(time.time() - start, 1),
                                "cpu_seconds": round(time.process_time() - cpu_start, 1)}
        log.info("%s: %s", name, report["runs"][name])
    start, cpu_start = time.time(), time.process_time()
    window = max(1, pp["n_contexts"] // 2)
    gensim = train_word2vec(patient_sentences(tables["train"], vocab), vector_size=dim, window=window,
                            negative=pp["n_negatives"], epochs=fit_config.epochs, seed=seed)
    write_parquet(OUT / "variants" / "gensim.parquet", gensim)
    report["runs"]["gensim"] = {"window": window, "epochs": fit_config.epochs, "codes": len(gensim),
                                "seconds": round(time.time() - start, 1),
                                "cpu_seconds": round(time.process_time() - cpu_start, 1)}
    log.info("gensim: %s", report["runs"]["gensim"])
    with atomic_path(OUT / "vocab.csv") as tmp:
        vocab.to_frame().to_csv(tmp, index=False)
    write_json(OUT / "config.json", config)
    report["cpu_seconds_total"] = round(time.process_time(), 1)  # the whole stage, reading included
    write_json(paths.metrics_json("train_med2vec"), {  # seconds: the report's run-cost table
        **report, "config": config, "seconds": round(time.time() - stage_start, 1),
        "seconds_by_phase": {name: run["seconds"] for name, run in report["runs"].items()}})
    log.info("wrote %s", OUT)


if __name__ == "__main__":
    main()
