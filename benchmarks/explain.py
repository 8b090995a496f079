"""What the explain stage's sanity checks and deletion curves cost, the earlier way and now.

    python -P benchmarks/explain.py --models lstm transformer

On the default data (the committed checkpoints, params.yaml's `explain` section), per
model, on the first `explain.sanity_stays` stays of the explained sample:

- parameter-randomisation cascade, EARLIER: the trained model explained again, then every
  randomised model at `ig_steps`; NOW: the trained scores reused (explain_split has them),
  every randomised model at `sanity_ig_steps`. Prints wall and CPU seconds of both, their
  ratio, and the largest change of any stage's mean Spearman (the check's statistic);
- deletion curves, EARLIER one forward per (ranking, k); NOW every ranking's k = 1..K in
  forwards of `perturbations_per_eval` batch copies, k = 0 once. Prints both times, the
  ratio and the largest logit difference.

The two ways run back to back in one process, so they share the machine's load; CPU
seconds count both torch threads.
"""
import argparse
import dataclasses
import time

import numpy as np
import torch

from ehrseq import paths
from ehrseq.explain.explainers import event_ablation, make_explainer
from ehrseq.explain.faithfulness import deletion_curve, deletion_curves, random_scores
from ehrseq.explain.inputs import collate_token_events, load_token_events
from ehrseq.explain.run import ExplainConfig, _batches, sample_indices
from ehrseq.explain.sanity import SanityBatch, parameter_randomisation
from ehrseq.model_data import TOKEN_MODELS, checkpoint_encoder, load_model_data
from ehrseq.params import load_params
from ehrseq.torch_utils import pick_device
from ehrseq.training import load_trained_model


def timed(fn):
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - wall, time.process_time() - cpu


def stage_spearman(report: dict) -> dict[tuple[str, str], float]:
    return {(m, s["randomised_down_to"]): s["spearman"] for m, r in report["methods"].items() for s in r["stages"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["lstm"])
    args = parser.parse_args()
    params = load_params("explain")["explain"]
    config = ExplainConfig(**{**params, "precision_k": tuple(params["precision_k"])})
    device = pick_device()
    print(f"torch threads {torch.get_num_threads()}; ig_steps {config.ig_steps}, sanity_ig_steps "
          f"{config.sanity_ig_steps}, perturbations_per_eval {config.perturbations_per_eval}")
    for name in args.models:
        model, checkpoint = load_trained_model(paths.checkpoint(name, "finetune"), device)
        encoder = checkpoint_encoder(checkpoint)
        explainer = make_explainer(name, model, encoder)
        if name in TOKEN_MODELS:
            test = load_token_events(paths.SEQUENCES / "test.parquet",
                                     checkpoint["metadata"]["model_config"]["vocab_size"])
            collate_fn = collate_token_events
        else:  # clinical_lf
            data = load_model_data(name, ("test",), encoder=encoder)
            test, collate_fn = data.datasets["test"], data.collate_fn
        indices = sample_indices(len(test), config.max_stays, config.seed)
        chosen = _batches(test, indices[: config.sanity_stays], collate_fn, config.batch_size, device)
        batches = [SanityBatch(b, explainer.events(b)) for _, b in chosen]

        def earlier():
            return parameter_randomisation(explainer, batches, config, config.seed)

        def now(trained):
            rank_config = dataclasses.replace(config, ig_steps=config.sanity_ig_steps)
            carried = [SanityBatch(b.batch, b.events, t) for b, t in zip(batches, trained)]
            return parameter_randomisation(explainer, carried, rank_config, config.seed)

        trained = [explainer.explain(b.batch, b.events, config).scores for b in batches]  # explain_split's part
        old, old_wall, old_cpu = timed(earlier)
        new, new_wall, new_cpu = timed(lambda: now(trained))
        a, b = stage_spearman(old), stage_spearman(new)
        moved = {k: abs(a[k] - b[k]) for k in a if a[k] is not None and b[k] is not None}
        worst = max(moved, key=moved.get)
        verdicts = {m: (old["methods"][m]["passes"], new["methods"][m]["passes"]) for m in old["methods"]}
        print(f"{name} cascade ({sum(len(x.events.padding) for x in batches)} stays): earlier {old_wall:.1f} s wall "
              f"{old_cpu:.1f} s CPU, now {new_wall:.1f} s wall {new_cpu:.1f} s CPU: {old_wall / new_wall:.2f}x wall, "
              f"{old_cpu / new_cpu:.2f}x CPU; largest change of a stage's Spearman {moved[worst]:.3f} "
              f"({worst[0]}, {worst[1]}); verdicts earlier/now {verdicts}", flush=True)

        sample = _batches(test, indices, collate_fn, config.batch_size, device)
        times, diffs = np.zeros((2, 2)), []
        for _, batch in sample:
            events = explainer.events(batch)
            without = explainer.logits_without(batch, events)
            scores = {"event_ablation": event_ablation(without, events, config.perturbations_per_eval)}
            generator = torch.Generator(device=device).manual_seed(config.seed)
            (stacked, wall, cpu) = timed(lambda: deletion_curves(
                without, scores, events.padding, config.k_max, config.n_random, generator,
                config.perturbations_per_eval))
            times[1] += (wall, cpu)
            generator = torch.Generator(device=device).manual_seed(config.seed)

            def one_by_one():
                out = {n: deletion_curve(without, s, events.padding, config.k_max) for n, s in scores.items()}
                out["random"] = torch.stack([deletion_curve(without, random_scores(events.padding, generator),
                                                            events.padding, config.k_max)
                                             for _ in range(config.n_random)])
                return out
            (single, wall, cpu) = timed(one_by_one)
            times[0] += (wall, cpu)
            diffs += [float((stacked[k] - single[k]).abs().max()) for k in single]
        print(f"{name} deletion curves ({len(indices)} stays, {1 + config.n_random} rankings, k_max {config.k_max}): "
              f"one forward per (ranking, k) {times[0, 0]:.1f} s wall {times[0, 1]:.1f} s CPU, stacked "
              f"{times[1, 0]:.1f} s wall {times[1, 1]:.1f} s CPU: {times[0, 0] / times[1, 0]:.2f}x wall, "
              f"{times[0, 1] / times[1, 1]:.2f}x CPU; largest logit difference {max(diffs):.2e}", flush=True)


if __name__ == "__main__":
    main()
