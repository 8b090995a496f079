"""What the explain stage costs: its batching, sanity checks and deletion curves, the earlier way and now.

    python -P benchmarks/explain.py --models lstm transformer              # all three parts
    python -P benchmarks/explain.py --models gpt2 clinical_lf --parts batching

On the default data (the committed checkpoints, params.yaml's `explain` section), per
model:

- batching (the `max_stays` sample, and the parameter-randomisation cascade on the first
  `sanity_stays` of it): EARLIER batches of `batch_size` stays by length; NOW
  `length_batches` under `batch_tokens` (or each of `--batch-tokens N ...`). Prints wall
  and CPU seconds of explaining every batch with its deletion curves and of the cascade,
  each way, their ratios, the event ablation's work (rows x events x length summed over
  batches) against its minimum (each stay alone), and the largest difference of any
  stay's event score from the fixed-size batches';
- parameter-randomisation cascade (first `sanity_stays` stays), EARLIER: the trained model
  explained again, then every randomised model at `ig_steps`; NOW: the trained scores
  reused (explain_split has them), every randomised model at `sanity_ig_steps`. Prints
  wall and CPU seconds of both, their ratio, and the largest change of any stage's mean
  Spearman (the check's statistic);
- deletion curves, EARLIER one forward per (ranking, k); NOW every ranking's k = 1..K in
  forwards of `perturbations_per_eval` batch copies, k = 0 once. Prints both times, the
  ratio and the largest logit difference.

The two ways run back to back in one process, so they share the machine's load; CPU
seconds count both torch threads.
"""
import argparse
import dataclasses
import functools
import time

import numpy as np
import torch

from ehrseq import paths
from ehrseq.explain.explainers import event_ablation, make_explainer
from ehrseq.explain.faithfulness import deletion_curve, deletion_curves, random_scores
from ehrseq.explain.inputs import collate_token_events, load_token_events
from ehrseq.explain.run import ExplainConfig, _batches, _split_by_stay, sample_indices
from ehrseq.explain.sanity import SanityBatch, parameter_randomisation
from ehrseq.model_data import TOKEN_MODELS, checkpoint_encoder, load_model_data
from ehrseq.params import load_params
from ehrseq.torch_utils import pick_device
from ehrseq.training import load_trained_model


def timed(fn):
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - wall, time.process_time() - cpu


NO_BUDGET = 2**62  # batch_tokens that never binds: batches of batch_size stays, as before


def batching(name, explainer, test, collate_fn, indices, config, device, budgets=()) -> None:
    """Explain the sample (and run the cascade on its sanity stays) in batches of
    `batch_size` stays, then under each token budget; print the seconds, the ablation's
    work and the scores' largest difference from the fixed-size batches'."""
    rank_config = dataclasses.replace(config, ig_steps=config.sanity_ig_steps)
    lengths = np.asarray(test.lengths)
    runs = {}
    for tokens in (NO_BUDGET, *budgets):
        sample = _batches(test, indices, collate_fn, config.batch_size, tokens, device)
        sanity = [SanityBatch(b, explainer.events(b)) for _, b in _batches(
            test, indices[: config.sanity_stays], collate_fn, config.batch_size, tokens, device)]
        scores, work, least = {}, 0, 0

        def explain_sample():
            nonlocal work, least
            for chunk, batch in sample:
                events = explainer.events(batch)
                result = explainer.explain(batch, events, config)
                deletion_curves(explainer.logits_without(batch, events), result.scores, events.padding, config.k_max,
                                random_scores(batch["stay_id"], events.padding, config.n_random, config.seed),
                                config.perturbations_per_eval)
                scores.update(_split_by_stay(result.scores, events, batch["stay_id"]))
                # ablation: one forward per event column of the batch over every row, at its longest length
                work += len(chunk) * events.padding.shape[1] * int(lengths[chunk].max())
                least += int((events.n_events.cpu().numpy() * lengths[chunk]).sum())  # each stay alone

        _, wall, cpu = timed(explain_sample)
        _, cascade_wall, cascade_cpu = timed(lambda: parameter_randomisation(explainer, sanity, rank_config,
                                                                             config.seed))
        runs[tokens] = wall, cpu, cascade_wall, cascade_cpu, work / least, len(sample), len(sanity), scores
    w0, c0, cw0, cc0, k0, n0, s0, first = runs.pop(NO_BUDGET)
    print(f"{name} ({len(indices)} stays, {config.sanity_stays} in the cascade), batches of {config.batch_size} "
          f"stays: {n0} and {s0} batches, explaining {w0:.1f} s wall {c0:.1f} s CPU, cascade {cw0:.1f} s wall "
          f"{cc0:.1f} s CPU, ablation work {k0:.2f}x the minimum", flush=True)
    for tokens, (w, c, cw, cc, k, n, s, scores) in runs.items():
        diff = max(float((v - scores[stay][m]).abs().max()) for stay, by in first.items() for m, v in by.items())
        print(f"  under {tokens} tokens: {n} and {s} batches, explaining {w:.1f} s wall {c:.1f} s CPU "
              f"({w0 / w:.2f}x wall, {c0 / c:.2f}x CPU), cascade {cw:.1f} s wall {cc:.1f} s CPU ({cw0 / cw:.2f}x "
              f"wall, {cc0 / cc:.2f}x CPU), ablation work {k:.2f}x the minimum; largest event score difference "
              f"{diff:.1e}", flush=True)


def stage_spearman(report: dict) -> dict[tuple[str, str], float]:
    return {(m, s["randomised_down_to"]): s["spearman"] for m, r in report["methods"].items() for s in r["stages"]}


def cascade(name, explainer, test, collate_fn, indices, config, device) -> None:
    """The cascade on the sanity stays: the trained model explained again and every
    randomised model at `ig_steps` (earlier), against the carried scores and `sanity_ig_steps`."""
    chosen = _batches(test, indices[: config.sanity_stays], collate_fn, config.batch_size, NO_BUDGET, device)
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
          f"{old_cpu:.1f} s CPU, now {new_wall:.1f} s wall {new_cpu:.1f} s CPU: {old_wall / new_wall:.2f}x "
          f"wall, {old_cpu / new_cpu:.2f}x CPU; largest change of a stage's Spearman {moved[worst]:.3f} "
          f"({worst[0]}, {worst[1]}); verdicts earlier/now {verdicts}", flush=True)


def deletion(name, explainer, test, collate_fn, indices, config, device) -> None:
    """Deletion curves of event ablation and the random rankings: one forward per
    (ranking, k) against `deletion_curves`' stacked forwards."""
    times, diffs = np.zeros((2, 2)), []
    for _, batch in _batches(test, indices, collate_fn, config.batch_size, NO_BUDGET, device):
        events = explainer.events(batch)
        without = explainer.logits_without(batch, events)
        scores = {"event_ablation": event_ablation(without, events, config.perturbations_per_eval)}
        randoms = random_scores(batch["stay_id"], events.padding, config.n_random, config.seed)
        (stacked, wall, cpu) = timed(lambda: deletion_curves(
            without, scores, events.padding, config.k_max, randoms, config.perturbations_per_eval))
        times[1] += (wall, cpu)

        def one_by_one():
            out = {n: deletion_curve(without, s, events.padding, config.k_max) for n, s in scores.items()}
            out["random"] = torch.stack([deletion_curve(without, r, events.padding, config.k_max) for r in randoms])
            return out
        (single, wall, cpu) = timed(one_by_one)
        times[0] += (wall, cpu)
        diffs += [float((stacked[k] - single[k]).abs().max()) for k in single]
    print(f"{name} deletion curves ({len(indices)} stays, {1 + config.n_random} rankings, k_max "
          f"{config.k_max}): one forward per (ranking, k) {times[0, 0]:.1f} s wall {times[0, 1]:.1f} s CPU, "
          f"stacked {times[1, 0]:.1f} s wall {times[1, 1]:.1f} s CPU: {times[0, 0] / times[1, 0]:.2f}x wall, "
          f"{times[0, 1] / times[1, 1]:.2f}x CPU; largest logit difference {max(diffs):.2e}", flush=True)


PARTS = {"batching": batching, "cascade": cascade, "deletion": deletion}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["lstm"])
    parser.add_argument("--parts", nargs="+", choices=list(PARTS), default=list(PARTS))
    parser.add_argument("--batch-tokens", nargs="+", type=int, help="budgets to try (default: params.yaml's)")
    args = parser.parse_args()
    params = load_params("explain")["explain"]
    config = ExplainConfig(**{**params, "precision_k": tuple(params["precision_k"])})
    parts = {**PARTS, "batching": functools.partial(batching, budgets=args.batch_tokens or [config.batch_tokens])}
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
        for part in args.parts:
            parts[part](name, explainer, test, collate_fn, indices, config, device)


if __name__ == "__main__":
    main()
