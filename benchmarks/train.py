"""Training throughput of the token models: padded vs packed vs length-bucketed batches.

    python benchmarks/train.py [--sequences data/processed/sequences/train.parquet] [--task pretrain]
                               [--attention-dropout 0.1 0]
    python benchmarks/train.py --models survival_lstm [--sequences data/processed/sequences/survival/train.parquet]

Times full training steps (forward, backward, AdamW) on the same examples and reports
real (non-padding) tokens per second, for random batches (much padding) and
length-bucketed ones (little), and for the LSTM with its input padded (it steps over
the padding) or packed (`pack_padded_sequence`: it does not). The attention models run
at each `--attention-dropout` (the first on random and bucketed batches, the others on
bucketed ones): on CPU any value > 0 sends SDPA to its math kernel.
Without --sequences it draws long-tailed lengths like the tokenize stage's output (most
stays 30-150 tokens, a few up to 512).
`survival_lstm` is timed the same way on visit batches (its task: the discrete-time
loss over every at-risk state), reporting real visits per second; without --sequences it
draws 8 pre-cutoff visits plus 0-27 post-cutoff ones (most stays survive the 28-bin
horizon), 1-60 codes per visit.

    python benchmarks/train.py --processes 1 2 [--models lstm transformer] [--batches 40]

instead times training steps as `training.fit` runs them with `train.MODEL.nproc` 1 and
2: the same length-bucketed global batches, each process its share (DistributedDataParallel,
gloo on CPU, nccl on CUDA with one GPU per process), `--threads` per process. It prints
real tokens/s, the ratio to 1 process, and the CPU seconds per 1,000 tokens (on a busy
machine wall time measures the scheduler's share; CPU time does not). On CUDA it adds
model FLOPs utilisation: 6 FLOPs per weight (not the embedding tables) per token for
forward and backward, plus attention's 12 x layers x width x mean length, against
`--peak-tflops` (default 312: A100 bf16).
"""
import argparse
import os
import socket
import time

import numpy as np
import pandas as pd
import torch

from ehrseq.data import TokenSequenceDataset, token_loader
from ehrseq.models import build_model
from ehrseq.schema import BOS_ID, EOS_ID, SPECIAL_TOKENS
from ehrseq.sequences import load_sequences
from ehrseq.survival_data import SurvivalDataset, collate_visits, load_survival
from ehrseq.tasks import MortalityTask, NextTokenTask, SurvivalTask
from ehrseq.torch_utils import autocast, to_device
from ehrseq.training import TaskLoss, make_optimizer

MODELS = {
    "lstm": dict(embedding_dim=64, hidden_size=128, num_layers=1, dropout=0.1, bidirectional=False),
    "lstm_bidirectional": dict(embedding_dim=64, hidden_size=128, num_layers=1, dropout=0.1, bidirectional=True),
    "transformer": dict(d_model=64, n_layers=2, n_heads=4, dropout=0.1, max_positions=512),
    "gpt2": dict(n_embd=64, n_layer=2, n_head=4, dropout=0.1, max_positions=512),
    "survival_lstm": dict(embedding_dim=64, hidden_size=64, num_layers=1, dropout=0.1, initial_hazard=None),
}


def skewed_sequences(n: int, vocab_size: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    lengths = np.clip(rng.lognormal(np.log(70), 0.75, n), 8, 512).astype(int)
    first = len(SPECIAL_TOKENS)
    ids = [np.r_[BOS_ID, rng.integers(first, vocab_size, k - 2), EOS_ID] for k in lengths]
    return pd.DataFrame({"stay_id": np.arange(n), "subject_id": np.arange(n), "input_ids": ids,
                         "mortality": (rng.random(n) < 0.12).astype(np.int8)})


def skewed_visits(n: int, vocab_size: int, seed: int, horizon: int = 28, n_pre: int = 8) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    first = len(SPECIAL_TOKENS)
    rows = []
    for i in range(n):
        event_bin = horizon if rng.random() < 0.6 else int(rng.integers(1, horizon + 1))
        n_visits = n_pre + max(event_bin - 1, 0)
        codes = np.clip(rng.lognormal(np.log(15), 0.8, n_visits), 1, 60).astype(int)
        rows.append({"stay_id": i, "subject_id": i, "pre_visits": n_pre, "event_bin": event_bin,
                     "event": int(event_bin < horizon), "time_hours": 6.0 * event_bin, "horizon_bins": horizon,
                     "visits": [np.sort(rng.choice(np.arange(first, vocab_size), k, replace=False)) for k in codes]})
    return pd.DataFrame(rows)


def survival_benchmark(args) -> None:
    """Packed vs padded visits for survival_lstm, on random and length-bucketed batches."""
    device = torch.device("cpu")
    if args.sequences:
        frame, _ = load_survival(args.sequences)
        vocab_size = int(max(int(v.max()) for visits in frame["visits"] for v in visits if len(v))) + 1
    else:
        frame, vocab_size = skewed_visits(args.stays, args.vocab_size, seed=0), args.vocab_size
    dataset = SurvivalDataset(frame)
    print(f"{len(dataset)} stays, visits per stay: median {np.median(dataset.lengths):.0f}, "
          f"max {dataset.lengths.max()}; "
          f"batch {args.batch_size}, {args.batches} timed batches, {args.threads} thread(s)")
    task = SurvivalTask()
    print(f"\n{'model':<20}{'batches':<10}{'visits':<12}{'visits/s':>10}   vs random+padded")
    baseline = None
    for pool_batches, batch_kind in ((1, "random"), (50, "bucketed")):
        loader = token_loader(dataset, args.batch_size, device=device, seed=0, pool_batches=pool_batches,
                              collate_fn=collate_visits)
        batches = [b for _, b in zip(range(args.batches), loader)]
        real = sum(int(b["sequence_mask"].sum()) for b in batches)
        padding = 1 - real / sum(b["sequence_mask"].numel() for b in batches)
        for packed in (False, True):
            torch.manual_seed(0)
            model = build_model("survival_lstm", vocab_size=vocab_size, horizon_bins=dataset.horizon_bins,
                                **MODELS["survival_lstm"], packed=packed)
            speed = steps_per_second(model, task, batches, lambda b: int(b["sequence_mask"].sum()))
            baseline = baseline or speed
            print(f"{'survival_lstm':<20}{batch_kind:<10}{'packed' if packed else 'padded':<12}{speed:10.0f}   "
                  f"{speed / baseline:.2f}x   ({100 * padding:.0f}% padded visits)")


def tokens_per_second(model, task, batches) -> float:
    return steps_per_second(model, task, batches, lambda b: int(b["attention_mask"].sum()))


def steps_per_second(model, task, batches, count) -> float:
    """Real items (tokens, visits: `count(batch)`) per second of full training steps."""
    optimizer = make_optimizer(model, 1e-3, 0.01)
    model.train()

    def step(batch):
        loss, _ = task.loss(model, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step(batches[0])  # warm-up: allocations and lazy initialisation
    start = time.perf_counter()
    for batch in batches:
        step(batch)
    return sum(count(b) for b in batches) / (time.perf_counter() - start)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def flops_per_token(model: torch.nn.Module, config: dict, mean_length: float) -> float:
    """Forward + backward FLOPs per real token: 6 per weight used in a matmul (embedding
    tables are lookups), plus attention scores and values (12 x layers x width x length)."""
    embeddings = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Embedding))
    weights = sum(p.numel() for p in model.parameters()) - embeddings
    layers = config.get("n_layers", config.get("n_layer", 0))
    width = config.get("d_model", config.get("n_embd", 0))
    return 6 * weights + 12 * layers * width * mean_length


def _rank_worker(rank: int, world_size: int, port: int, name: str, dataset, vocab_size: int, args, out) -> None:
    """One process of the processes comparison: time its share of the same global batches."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(args.threads)
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", rank) if cuda else torch.device("cpu")
    if world_size > 1:
        torch.distributed.init_process_group("nccl" if cuda else "gloo", rank=rank, world_size=world_size)
    loader = token_loader(dataset, args.batch_size, device=device, seed=0, pool_batches=50, rank=rank,
                          world_size=world_size)
    batches = [to_device(b, device) for _, b in zip(range(args.batches + 1), loader)]
    torch.manual_seed(0)
    registry_name = "lstm" if name.startswith("lstm") else name
    extra = {} if registry_name == "lstm" else {"attention_dropout": args.attention_dropout[0]}
    model = build_model(registry_name, vocab_size=vocab_size, **MODELS[name], **extra).to(device)
    task = MortalityTask() if args.task == "mortality" else NextTokenTask()
    step_model = TaskLoss(model, task)
    if world_size > 1:
        step_model = torch.nn.parallel.DistributedDataParallel(
            step_model, device_ids=[device] if cuda else None, find_unused_parameters=True)
    optimizer = make_optimizer(model, 1e-3, 0.01)

    def step(batch):
        with autocast(device):
            loss, _ = step_model(batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step(batches[0])  # warm-up: allocations, lazy initialisation, DDP's first-iteration setup
    if cuda:
        torch.cuda.synchronize(device)
    wall, cpu = time.perf_counter(), time.process_time()
    for batch in batches[1:]:
        step(batch)
    if cuda:
        torch.cuda.synchronize(device)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    tokens = sum(int(b["attention_mask"].sum()) for b in batches[1:])
    totals = torch.tensor([tokens, cpu, wall], dtype=torch.float64, device=device)
    if world_size > 1:  # tokens and CPU seconds summed over ranks; wall: the slowest rank
        summed = totals.clone()
        torch.distributed.all_reduce(summed)
        slowest = totals.clone()
        torch.distributed.all_reduce(slowest, op=torch.distributed.ReduceOp.MAX)
        totals = torch.stack([summed[0], summed[1], slowest[2]])
        torch.distributed.destroy_process_group()
    if rank == 0:
        mean_length = tokens / sum(len(b["attention_mask"]) for b in batches[1:])
        out.put((*totals.tolist(), flops_per_token(model, MODELS[name], mean_length)))


def processes_benchmark(args, dataset, vocab_size: int) -> None:
    import torch.multiprocessing as mp

    cuda = torch.cuda.is_available()
    print(f"\n{'model':<20}{'processes':<11}{'tokens/s':>10}{'vs 1':>7}{'CPU s / 1k tokens':>20}"
          + ("   MFU" if cuda else ""))
    context = mp.get_context("spawn")
    for name in args.models:
        baseline = None
        for world_size in args.processes:
            out = context.SimpleQueue()
            mp.spawn(_rank_worker, args=(world_size, _free_port(), name, dataset, vocab_size, args, out),
                     nprocs=world_size, join=True)
            tokens, cpu, wall, flops = out.get()
            speed = tokens / wall
            baseline = baseline or speed
            mfu = f"   {100 * flops * speed / (world_size * args.peak_tflops * 1e12):.1f}%" if cuda else ""
            print(f"{name:<20}{world_size:<11}{speed:10.0f}{speed / baseline:6.2f}x{1000 * cpu / tokens:20.3f}{mfu}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sequences", help="a sequences parquet; default: synthetic long-tailed lengths")
    parser.add_argument("--stays", type=int, default=2000, help="synthetic stays to draw")
    parser.add_argument("--vocab-size", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--batches", type=int, default=12, help="timed batches per configuration")
    parser.add_argument("--task", choices=["mortality", "pretrain"], default="mortality")
    parser.add_argument("--models", nargs="+", default=[m for m in MODELS if m != "survival_lstm"],
                        choices=list(MODELS))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--attention-dropout", type=float, nargs="+", default=[0.0],
                        help="the attention models at each of these values (e.g. 0.1 0)")
    parser.add_argument("--processes", type=int, nargs="+",
                        help="compare training steps in this many processes (e.g. 1 2) instead")
    parser.add_argument("--peak-tflops", type=float, default=312.0, help="per GPU, for MFU (CUDA only)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device("cpu")  # the comparison is about CPU work skipped; GPUs hide it differently
    if "survival_lstm" in args.models:
        survival_benchmark(args)
        args.models = [m for m in args.models if m != "survival_lstm"]
        if not args.models:
            return

    if args.sequences:
        frame = load_sequences(args.sequences)
        vocab_size = int(max(ids.max() for ids in frame["input_ids"])) + 1
    else:
        frame, vocab_size = skewed_sequences(args.stays, args.vocab_size, seed=0), args.vocab_size
    dataset = TokenSequenceDataset(frame)
    if args.processes:
        print(f"{len(dataset)} stays, median {np.median(dataset.lengths):.0f} tokens; task {args.task}, global "
              f"batch {args.batch_size}, {args.batches} timed batches, {args.threads} thread(s) per process, "
              f"{'CUDA (nccl, bf16 autocast)' if torch.cuda.is_available() else 'CPU (gloo)'}")
        return processes_benchmark(args, dataset, vocab_size)
    task = MortalityTask() if args.task == "mortality" else NextTokenTask()
    lengths = dataset.lengths
    print(f"{len(dataset)} stays, tokens per stay: median {np.median(lengths):.0f}, "
          f"p90 {np.percentile(lengths, 90):.0f}, max {lengths.max()}; task {args.task}, "
          f"batch {args.batch_size}, {args.batches} timed batches, {args.threads} thread(s)")

    def batches(pool_batches: int) -> list[dict]:
        loader = token_loader(dataset, args.batch_size, device=device, seed=0, pool_batches=pool_batches)
        return [to_device(b, device) for _, b in zip(range(args.batches), loader)]

    random_batches, bucketed_batches = batches(1), batches(50)
    for name, batch_list in (("random", random_batches), ("bucketed", bucketed_batches)):
        real = sum(int(b["attention_mask"].sum()) for b in batch_list)
        total = sum(b["attention_mask"].numel() for b in batch_list)
        print(f"  {name} batches: {100 * (1 - real / total):.0f}% padding")

    print(f"\n{'model':<20}{'batches':<10}{'variant':<16}{'tokens/s':>10}   vs the first row")
    for name in args.models:
        registry_name = "lstm" if name.startswith("lstm") else name
        # (batches, variant): the LSTM's input padded or packed; the attention models (no
        # packed mode: they mask padding) at each attention dropout
        if registry_name == "lstm":
            modes = [(kind, {"packed": packed}) for kind in ("random", "bucketed") for packed in (False, True)]
        else:
            first, *others = args.attention_dropout
            modes = [(kind, {"attention_dropout": first}) for kind in ("random", "bucketed")]
            modes += [("bucketed", {"attention_dropout": value}) for value in others]
        baseline = None
        for batch_kind, variant in modes:
            torch.manual_seed(0)
            model = build_model(registry_name, vocab_size=vocab_size, **MODELS[name], **variant).to(device)
            speed = tokens_per_second(model, task, random_batches if batch_kind == "random" else bucketed_batches)
            baseline = baseline or speed
            label = ("packed" if variant["packed"] else "padded") if "packed" in variant \
                else f"attn drop {variant['attention_dropout']:g}"
            print(f"{name:<20}{batch_kind:<10}{label:<16}{speed:10.0f}   {speed / baseline:.2f}x")

if __name__ == "__main__":
    main()
