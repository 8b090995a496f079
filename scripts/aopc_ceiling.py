"""How high can a model's deletion AOPC go at all? A reference for `explain_MODEL.json`.

    python -P scripts/aopc_ceiling.py MODEL [MODEL ...]

On the stays `explain@MODEL` explains (its seeded sample of the test split, the same
`explain.max_stays`, `seed`, `batch_size`), prints per model, on the training-scale risk
(sigmoid of the logit) the AOPC is reported on:

- the mean risk with all events, and with every event removed (what the events carry);
- the AOPC of GREEDY deletion: at each k = 1..K remove the one event whose removal lowers
  the logit most, given the k - 1 already removed (K x its events forwards a stay),
  beside the AOPC of the event-ablation ranking on the same stays. Every explanation
  method fixes its ranking in advance; greedy deletion chooses with the model's answer
  at each step, so it is the usual empirical reference for the best deletion curve (not
  a proven bound): a method well below it falls short, one near it meets the model's
  ceiling.

Mortality token models and clinical_lf; survival_lstm's ceiling is its mean risk.
"""
import argparse
import logging

import numpy as np
import torch
from tqdm import tqdm

from ehrseq import paths
from ehrseq.explain.explainers import event_ablation, make_explainer
from ehrseq.explain.faithfulness import aopc, deletion_curve, greedy_deletion_curve, stacked_logits
from ehrseq.explain.inputs import collate_token_events, load_token_events
from ehrseq.explain.run import _batches, sample_indices
from ehrseq.io import setup_logging
from ehrseq.model_data import TOKEN_MODELS, checkpoint_encoder, load_model_data
from ehrseq.params import load_params
from ehrseq.torch_utils import pick_device
from ehrseq.training import load_trained_model

log = logging.getLogger("ehrseq.scripts.aopc_ceiling")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+")
    parser.add_argument("--max-stays", type=int, default=None,
                        help="the first N stays of the explained sample (default: all of explain.max_stays)")
    args = parser.parse_args()
    setup_logging()
    config = load_params("explain")["explain"]
    device = pick_device()
    for name in args.models:
        model, checkpoint = load_trained_model(paths.checkpoint(name, "finetune"), device)
        encoder = checkpoint_encoder(checkpoint)
        explainer = make_explainer(name, model, encoder)
        if name in TOKEN_MODELS:
            vocab_size = checkpoint["metadata"]["model_config"]["vocab_size"]
            test = load_token_events(paths.SEQUENCES / "test.parquet", vocab_size)
            collate_fn = collate_token_events
        elif name == "clinical_lf":
            data = load_model_data(name, ("test",), encoder=encoder)
            test, collate_fn = data.datasets["test"], data.collate_fn
        else:
            raise SystemExit(f"{name}: only mortality models (token models, clinical_lf)")
        indices = sample_indices(len(test), config["max_stays"], config["seed"])[: args.max_stays]
        curves, ablation, empty = [], [], []
        batches = _batches(test, indices, collate_fn, config["batch_size"], config["batch_tokens"], device)
        for _, batch in tqdm(batches, desc=name, disable=None):
            events = explainer.events(batch)
            without = explainer.logits_without(batch, events)
            curves.append(greedy_deletion_curve(without, events.padding, config["k_max"],
                                                config["perturbations_per_eval"]))
            scores = event_ablation(without, events, config["perturbations_per_eval"])
            ablation.append(deletion_curve(without, scores, events.padding, config["k_max"],
                                           config["perturbations_per_eval"]))
            empty.append(stacked_logits(without, (~events.padding)[None], 1)[0])
        risk = torch.sigmoid(torch.cat(curves))  # [N, K+1]
        by_ablation = torch.sigmoid(torch.cat(ablation))
        print(f"{name}: {len(risk)} stays; mean risk {risk[:, 0].mean():.3f}, every event removed "
              f"{torch.sigmoid(torch.cat(empty)).mean():.3f}; AOPC of greedy deletion {aopc(risk).mean():.4f} "
              f"(curve {np.round(risk.mean(0).double().numpy(), 3).tolist()}), of the event-ablation ranking on the "
              f"same stays {aopc(by_ablation).mean():.4f}", flush=True)


if __name__ == "__main__":
    main()
