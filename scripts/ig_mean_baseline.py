"""Would LayerIG from the train-mean event embedding beat the `<unk>` baseline? A one-off check.

    python -P scripts/ig_mean_baseline.py MODEL      # lstm, transformer or gpt2

On the stays `explain@MODEL` explains (same sample, batches, `ig_steps`), runs the token
models' LayerIG twice -- baseline `<unk>` at every event token (the pipeline's), and the
train split's frequency-weighted mean event-token embedding there -- and prints each
one's deletion AOPC (training-scale risk, as explain_MODEL.json) and strict
recall-precision@5, and the mean baseline's median |completeness gap|.

Captum's LayerIG takes baselines in INPUT space and passes them through the layer; the
mean embedding is no token, so a forward hook on the embedding writes it at the
baseline's event positions (marked by `<pad>` there, and only there: input positions are
never replaced). During the integration Captum overrides the layer's output itself, so
the hook only shapes the two end points, which is what defines the path.
"""
import argparse

import numpy as np
import pandas as pd
import torch
from captum.attr import LayerIntegratedGradients

from ehrseq import paths
from ehrseq.explain.events import to_events
from ehrseq.explain.explainers import make_explainer
from ehrseq.explain.faithfulness import aopc, curves_to_risk, deletion_curves, precision_at_k, random_scores
from ehrseq.explain.inputs import collate_token_events, load_token_events, read_truth
from ehrseq.explain.run import _batches, sample_indices, truth_masks
from ehrseq.params import load_params
from ehrseq.schema import PAD_ID, UNK_ID
from ehrseq.torch_utils import pick_device
from ehrseq.training import load_trained_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", choices=["lstm", "transformer", "gpt2"])
    args = parser.parse_args()
    config = load_params("explain")["explain"]
    device = pick_device()
    model, checkpoint = load_trained_model(paths.checkpoint(args.model, "finetune"), device)
    explainer = make_explainer(args.model, model)
    vocab_size = checkpoint["metadata"]["model_config"]["vocab_size"]
    train = pd.read_parquet(paths.SEQUENCES / "train.parquet", columns=["input_ids", "event_row"])
    ids, rows = np.concatenate(train["input_ids"].to_numpy()), np.concatenate(train["event_row"].to_numpy())
    counts = torch.tensor(np.bincount(ids[rows >= 0], minlength=vocab_size), dtype=torch.float32, device=device)
    weight = explainer.embedding.weight.detach()
    mean = (counts / counts.sum()) @ weight  # [D]: the average event token
    marked = [None]  # [B, T, 1] True where the baseline holds the mean embedding

    def hook(module, inputs, out):
        if marked[0] is None:
            return out
        mark = marked[0].repeat(out.shape[0] // marked[0].shape[0], 1, 1)  # Captum stacks copies along dim 0
        return torch.where((inputs[0] == PAD_ID)[..., None] & mark, mean.expand_as(out), out)

    handle = explainer.embedding.register_forward_hook(hook)
    test = load_token_events(paths.SEQUENCES / "test.parquet", vocab_size)
    truth = read_truth(paths.TRUTH)
    batches = _batches(test, sample_indices(len(test), config["max_stays"], config["seed"]), collate_token_events,
                       config["batch_size"], config["batch_tokens"], device)
    aopcs, precision, gaps = {"unk": [], "mean": []}, {"unk": [], "mean": []}, []
    for _, batch in batches:
        events = explainer.events(batch)
        input_ids, mask = batch["input_ids"], batch["attention_mask"]
        scores = {}
        for kind, token in (("unk", UNK_ID), ("mean", PAD_ID)):
            baseline = torch.where(events.index >= 0, torch.full_like(input_ids, token), input_ids)
            marked[0] = (events.index >= 0)[..., None] if kind == "mean" else None
            with explainer._gradients():
                attr, delta = LayerIntegratedGradients(explainer._forward, explainer.embedding).attribute(
                    input_ids, baselines=baseline, additional_forward_args=(mask,), n_steps=config["ig_steps"],
                    internal_batch_size=config["internal_batch_size"], return_convergence_delta=True)
            marked[0] = None
            scores[kind] = to_events(attr.detach().sum(-1), events)
            if kind == "mean":
                gaps.append(delta.abs())
        randoms = random_scores(batch["stay_id"], events.padding, 2, config["seed"])  # [2, B, E]
        curves = curves_to_risk(deletion_curves(explainer.logits_without(batch, events), scores, events.padding,
                                                config["k_max"], randoms, config["perturbations_per_eval"]))
        planted, _, counted = truth_masks(events, truth)
        for kind, s in scores.items():
            aopcs[kind].append(aopc(curves[kind]))
            precision[kind].append(precision_at_k(s, events.padding, planted, counted, batch["stay_id"], 5))
    handle.remove()
    for kind in aopcs:
        p = pd.concat(precision[kind])
        print(f"{args.model} baseline {kind}: AOPC {float(torch.cat(aopcs[kind]).mean()):.4f}, strict "
              f"recall-precision@5 {p['recall_precision'].mean():.3f} ({len(p)} stays)")
    print(f"mean baseline: median |completeness gap| {float(torch.cat(gaps).median()):.2e}")


if __name__ == "__main__":
    main()
