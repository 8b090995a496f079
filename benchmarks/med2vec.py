"""TemporalMed2Vec training step: negatives scored row by row against read from one [B, V] matmul.

    python benchmarks/med2vec.py                       # vocabulary of the default data (655 codes)
    python benchmarks/med2vec.py --vocab 5000 --dim 128 --repeat 5

Measured on this machine (best of 2): 2.67x at 655 codes (dim 64), 2.42x at 999 (64),
1.64x at 2,000 (128), 0.77x at 5,000 (128), 0.42x at 20,000 (256): hence
`tasks.SkipGramTask.score_all_max_vocab` = 3000.

One training step (forward, negative-sampling loss, backward, Adam step) on random
batches shaped like train_med2vec's (batch_size targets, n_contexts contexts, n_negatives
noise codes per pair). "rows": every negative's context vector is gathered
(`model.score`), so the backward scatters B x C x K rows into the context table; "matrix":
`model.score_all(target).gather(...)`, what `tasks.SkipGramTask` does. Both give the same
loss and gradients (tests/test_med2vec.py); the script checks the losses agree and prints
CPU seconds per step and their ratio. CPU time (`time.process_time`), best of `--repeat`,
so a busy shared machine slows both alike.
"""
from __future__ import annotations

import argparse
import time

import torch

from ehrseq.models.med2vec import TemporalMed2Vec, negative_sampling_loss


def step_seconds(way: str, batches, vocab: int, dim: int, steps: int) -> tuple[float, float]:
    torch.manual_seed(0)
    model = TemporalMed2Vec(vocab, dim, time_decay=0.1)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    start = time.process_time()
    for batch in batches[:steps]:
        out = model(batch["target"], batch["context"], batch["dt"], batch["context_mask"])
        negatives = batch["negatives"]  # [B, C, K]
        if way == "rows":
            neg = model.score(batch["target"], negatives.flatten(1))
        else:
            neg = model.score_all(batch["target"]).gather(1, negatives.flatten(1))
        loss = negative_sampling_loss(out["scores"], neg.view(negatives.shape), out["weights"])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return (time.process_time() - start) / steps, loss.item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab", type=int, default=655)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--contexts", type=int, default=10)
    parser.add_argument("--negatives", type=int, default=5)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    B, C, K, V = args.batch_size, args.contexts, args.negatives, args.vocab
    batches = [{"target": torch.randint(V, (B,), generator=g), "context": torch.randint(V, (B, C), generator=g),
                "dt": torch.rand(B, C, generator=g) * 5, "context_mask": torch.ones(B, C, dtype=torch.bool),
                "negatives": torch.randint(V, (B, C, K), generator=g)} for _ in range(args.steps)]
    best = {}
    for _ in range(args.repeat):
        for way in ("rows", "matrix"):
            seconds, loss = step_seconds(way, batches, V, args.dim, args.steps)
            best[way] = min(best.get(way, (float("inf"), loss)), (seconds, loss))
    assert abs(best["rows"][1] - best["matrix"][1]) < 1e-4 * max(1.0, abs(best["rows"][1])), best
    print(f"vocab {V}, dim {args.dim}, batch {B} x {C} contexts x {K} negatives, one thread, best of {args.repeat}")
    for way, (seconds, loss) in best.items():
        print(f"  {way:6s} {1000 * seconds:7.1f} ms CPU per step (final loss {loss:.4f})")
    print(f"  speed-up matrix / rows: {best['rows'][0] / best['matrix'][0]:.2f}x")


if __name__ == "__main__":
    main()
