"""Train the toy LSTM with `training.fit`, in one process or under torchrun (tests/test_distributed.py).

    python tests/ddp_fit.py OUT [--dropout P] [--kill-after STEPS] [--resume]
    torchrun --standalone --nproc_per_node=2 tests/ddp_fit.py OUT ...

The same toy data, global batches, seeds and initial weights whatever the number of
processes; rank 0 writes OUT/result.json (the history) and OUT/weights.pt (the final
weights). `--kill-after` makes every rank raise after that many training steps, as a
killed run stops; `--resume` picks the run in OUT up again.
"""
import argparse
import json
import sys
from pathlib import Path

import torch

from conftest import TOY_VOCAB, KilledAfter, toy_sequences
from ehrseq.data import TokenSequenceDataset, token_loader
from ehrseq.models import build_model
from ehrseq.tasks import MortalityTask
from ehrseq.torch_utils import start_distributed
from ehrseq.training import FitConfig, fit

BATCH, VAL_BATCH = 16, 32
TRAIN_STAYS, VAL_STAYS = 160, 61  # 10 full train batches; val batches of 32 and 29 (29 pads one row on 2 ranks)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--dropout", type=float, default=0.0)
    parser.add_argument("--kill-after", type=int)
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    ctx = start_distributed()
    train, val = TokenSequenceDataset(toy_sequences(TRAIN_STAYS, seed=1)), TokenSequenceDataset(
        toy_sequences(VAL_STAYS, seed=2))
    shard = {"rank": ctx.rank, "world_size": ctx.world_size}
    train_loader = token_loader(train, BATCH, device=ctx.device, seed=3, pool_batches=4, **shard)
    val_loader = token_loader(val, VAL_BATCH, device=ctx.device, shuffle=False, **shard)
    torch.manual_seed(123)
    model = build_model("lstm", vocab_size=TOY_VOCAB, embedding_dim=8, hidden_size=16, num_layers=1,
                        dropout=args.dropout, bidirectional=True)
    task = MortalityTask(pos_weight=3.0) if args.kill_after is None else KilledAfter(args.kill_after, pos_weight=3.0)
    config = FitConfig(epochs=3, lr=1e-2, weight_decay=0.01, warmup_steps=2, schedule="cosine", min_lr_ratio=0.1,
                       grad_clip=1.0, patience=None, seed=7)
    result = fit(model, task, train_loader, val_loader, config, checkpoint_dir=args.out / "ckpt",
                 live_dir=args.out / "live", resume=args.resume, device=ctx.device)
    if ctx.is_main:
        (args.out / "result.json").write_text(json.dumps({"history": result.history, "world_size": ctx.world_size}))
        torch.save(model.state_dict(), args.out / "weights.pt")


if __name__ == "__main__":
    sys.exit(main())
