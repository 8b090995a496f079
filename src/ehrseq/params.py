"""Reading and validating params.yaml: only stage modules call this; library code takes plain arguments.

params.yaml is the one home of every default. `SCHEMA` below declares what each section
may hold: one entry per section (and per model under `train`). `load_params` checks the
whole file against it before a stage does any work, so a typo (`lrr: 0.1`, or
`dvc exp run -S +train.lstm.lrr=0.1`, which DVC accepts because of the `+`), a wrong type
(`lr: 1e-3` is a *string* to YAML 1.1, which needs a dot: `1.0e-3`) or split fractions
that do not sum to 1 stop the stage with the key, the value and what is allowed, instead
of being ignored or silently renormalised.

The architecture keys under `train.MODEL.model` are the model constructor's keyword
arguments; `check_model_kwargs` compares them with the constructor's signature (it
imports the model, so only the train stage calls it).

To add a section or a model: add its entry to `SCHEMA` (see `Spec` for the building
blocks), its keys to params.yaml with a comment each, and a line to README's table.
"""
from __future__ import annotations

import inspect
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import yaml


class ParamsError(ValueError):
    """params.yaml breaks the schema; the message lists every problem found, one a line."""


# --------------------------------------------------------------------------- specs


class Spec(ABC):
    """What one value may be. `check` returns problems ("expected ..."); empty means valid."""

    @abstractmethod
    def check(self, value: Any, key: str) -> list[str]: ...


def _show(value: Any) -> str:
    return f"{value!r} ({type(value).__name__})"


@dataclass(frozen=True)
class Num(Spec):
    """An int (`integer=True`) or a float (ints accepted), within [min, max]. Booleans are never numbers."""

    integer: bool = False
    min: float | None = None
    max: float | None = None

    def describe(self) -> str:
        kind = "an integer" if self.integer else "a number"
        bounds = [f">= {self.min}" if self.min is not None else "", f"<= {self.max}" if self.max is not None else ""]
        return " ".join([kind, " and ".join(b for b in bounds if b)]).strip()

    def check(self, value, key):
        types = (int,) if self.integer else (int, float)
        if isinstance(value, bool) or not isinstance(value, types) or (isinstance(value, float) and math.isnan(value)):
            return [f"{key} = {_show(value)}: expected {self.describe()}"]
        if (self.min is not None and value < self.min) or (self.max is not None and value > self.max):
            return [f"{key} = {value!r}: expected {self.describe()}"]
        return []


@dataclass(frozen=True)
class Type(Spec):
    """An instance of one Python type (bool, str)."""

    type: type

    def check(self, value, key):
        if not isinstance(value, self.type):
            return [f"{key} = {_show(value)}: expected a {self.type.__name__}"]
        return []


@dataclass(frozen=True)
class Choice(Spec):
    options: tuple

    def check(self, value, key):
        # `True in (1, 0)` holds in Python: a bool matches only a bool option, and vice versa.
        if isinstance(value, bool) != any(isinstance(o, bool) for o in self.options) or value not in self.options:
            return [f"{key} = {value!r}: expected one of {', '.join(map(repr, self.options))}"]
        return []


@dataclass(frozen=True)
class Nullable(Spec):
    """`null` or the inner spec."""

    inner: Spec

    def check(self, value, key):
        return [] if value is None else [p + " or null" for p in self.inner.check(value, key)]


@dataclass(frozen=True)
class Either(Spec):
    """One of several specs (`auto` or a positive integer)."""

    options: tuple[Spec, ...]

    def check(self, value, key):
        problems = [spec.check(value, key) for spec in self.options]
        return [] if any(not p for p in problems) else [" or ".join(p[0] for p in problems)]


@dataclass(frozen=True)
class ListOf(Spec):
    item: Spec
    min_items: int = 0

    def check(self, value, key):
        if not isinstance(value, list):
            return [f"{key} = {_show(value)}: expected a list"]
        if len(value) < self.min_items:
            return [f"{key} = {value!r}: expected at least {self.min_items} item(s)"]
        return [p for i, v in enumerate(value) for p in self.item.check(v, f"{key}[{i}]")]


@dataclass(frozen=True)
class AnyMapping(Spec):
    """A mapping whose keys another check owns (`train.MODEL.model`: `check_model_kwargs`)."""

    def check(self, value, key):
        return [] if isinstance(value, dict) else [f"{key} = {_show(value)}: expected a mapping"]


@dataclass(frozen=True)
class Omittable:
    """A key that may be absent (`Section` only)."""

    spec: Spec


class Section(Spec):
    """A mapping with exactly these keys (those wrapped in `Omittable` may be absent), and
    optional whole-section checks `(value, key) -> problems` that run once the keys are valid."""

    def __init__(self, fields: Mapping[str, Spec | Omittable], *checks: Callable[[dict, str], list[str]]):
        self.fields = dict(fields)
        self.checks = checks

    def check(self, value, key):
        if not isinstance(value, dict):
            return [f"{key or 'params.yaml'} = {_show(value)}: expected a mapping"]
        prefix = f"{key}." if key else ""
        allowed = ", ".join(self.fields)
        problems = [f"{prefix}{k} = {value[k]!r}: unknown key; allowed here: {allowed}"
                    for k in value if k not in self.fields]
        for name, spec in self.fields.items():
            if name not in value:
                if not isinstance(spec, Omittable):
                    problems.append(f"{prefix}{name}: missing (required; see params.yaml's comments)")
                continue
            problems += (spec.spec if isinstance(spec, Omittable) else spec).check(value[name], prefix + name)
        if not problems:
            for check in self.checks:
                problems += check(value, key)
        return problems


# ---------------------------------------------------------------------- the schema


def _fractions_sum_to_one(split: dict, key: str) -> list[str]:
    total = sum(split.values())
    if abs(total - 1) > 1e-6:
        shown = " + ".join(f"{name} {v!r}" for name, v in split.items())
        return [f"{key} = {split!r}: fractions must sum to 1, got {shown} = {total:.6g} "
                "(nothing is renormalised: say exactly the split you want)"]
    return []


INT = Num(integer=True)
COUNT = Num(integer=True, min=0)
POSITIVE = Num(integer=True, min=1)
FRACTION = Num(min=0, max=1)
NONNEG = Num(min=0)
BOOL = Type(bool)
STR = Type(str)

# Optimizer settings of a train.MODEL section; a phase (pretrain/finetune) may override any.
OPTIMIZER = {
    "lr": Num(min=0),
    "weight_decay": NONNEG,
    "warmup_steps": COUNT,
    "schedule": Choice(("cosine", "linear")),
    "min_lr_ratio": FRACTION,
    "grad_clip": Nullable(Num(min=0)),
}
PHASE = Section({"epochs": COUNT, "patience": Nullable(POSITIVE), **{k: Omittable(v) for k, v in OPTIMIZER.items()}})
TRAIN_COMMON = {
    "seed": INT,
    "batch_size": POSITIVE,
    "bucket_pool_batches": POSITIVE,
    "imbalance": Choice(("pos_weight", "sampler", "none")),
    "model": AnyMapping(),  # the constructor's keyword arguments: check_model_kwargs
    **OPTIMIZER,
    "nproc": Omittable(POSITIVE),  # > 1: torchrun with that many processes (DDP); absent: 1
    "compile": Omittable(BOOL),  # torch.compile the training steps; absent: false
}
TOKEN_MODEL = Section({**TRAIN_COMMON, "pretrain": Omittable(PHASE), "finetune": PHASE})
# TemporalMed2Vec code embeddings (stages train_med2vec / evaluate_med2vec; not a mortality model)
MED2VEC = Section({
    "seed": INT,
    "vocab": Section({"min_frequency": POSITIVE, "icd_grouping": BOOL}),
    "model": Section({"embedding_dim": Either((Choice(("auto",)), POSITIVE)), "time_decay": NONNEG}),
    "pairs": Section({"horizon_days": NONNEG, "n_contexts": POSITIVE, "n_negatives": POSITIVE, "batch_size": POSITIVE}),
    "fit": Section({"epochs": POSITIVE, "patience": Nullable(POSITIVE), **OPTIMIZER}),
    "evaluation": Section({"k": POSITIVE, "recall_k": ListOf(POSITIVE, min_items=1), "neighbour_codes": POSITIVE,
                           "seed": INT}),
})

# Sections, and models under `train`, may be absent from a file: a stage names the ones
# it reads (`load_params("cohort", ...)`), and those must be there.
SCHEMA = Section({name: Omittable(spec) for name, spec in {
    "synthetic": Section({"n_patients": POSITIVE, "seed": INT, "intubation_share": Num(min=0, max=1)}),
    "data": Section({
        "source": Choice(("synthetic", "mimic4", "mimic3")),
        "path": STR,
        "threads": Omittable(Nullable(POSITIVE)),
        "memory_limit": Omittable(Nullable(STR)),
    }),
    "cohort": Section({
        "observation_hours": Num(min=0),
        "min_age": NONNEG,
        "seed": INT,
        "split": Section({"train": FRACTION, "val": FRACTION, "test": FRACTION}, _fractions_sum_to_one),
    }),
    "vocab": Section({
        "min_frequency": POSITIVE,
        "value_bins": COUNT,
        "binned_event_types": ListOf(STR),
        "min_values_for_bins": COUNT,
        "icd_grouping": BOOL,
        "time_gap_tokens": BOOL,
    }),
    "tokenize": Section({"max_length": POSITIVE, "visit_hours": Num(min=0)}),
    "survival": Section({
        "horizon_hours": Num(min=0),
        "auc_hours": ListOf(Num(min=0), min_items=1),
        "tau_hours": Num(min=0),
        "n_bootstrap": POSITIVE,
        "cox": Section({"min_stays": POSITIVE, "l1_ratio": FRACTION, "n_alphas": POSITIVE}),
    }),
    "embed": Section({
        "model": STR,
        "pooling": Choice(("cls", "mean")),
        "max_length": POSITIVE,
        "batch_size": POSITIVE,
        "shard_size": POSITIVE,
        "cache_dir": Nullable(STR),  # null: the machine's cache (embeddings.default_cache_dir)
    }),
    "train": Section({name: Omittable(spec) for name, spec in {  # one entry per registered model
        "lstm": Section({**TOKEN_MODEL.fields, "init_embeddings": Omittable(Choice(("none", "med2vec")))}),
        "transformer": TOKEN_MODEL,
        "gpt2": TOKEN_MODEL,
        "clinical_lf": Section({
            **TRAIN_COMMON,
            "max_events": POSITIVE,
            "temporal_lambda": NONNEG,
            "attention_every": COUNT,
            "finetune": PHASE,
        }),
        # discrete-time survival: no class imbalance to correct, no pretraining
        "survival_lstm": Section({**{k: v for k, v in TRAIN_COMMON.items() if k != "imbalance"}, "finetune": PHASE}),
        "med2vec": MED2VEC,
        "prompt_bart": Section({
            **{k: v for k, v in TRAIN_COMMON.items() if k != "imbalance"},  # no labels to balance
            "max_length": POSITIVE,
            "corruption": Section({
                "full_mask_rate": FRACTION, "future_rate": FRACTION, "type_rate": FRACTION, "mask_rate": FRACTION,
                "infill_rate": FRACTION, "infill_lambda": NONNEG, "shuffle_rate": FRACTION,
            }),
            "denoise": PHASE,
        }),
    }.items()}),
    "generate": Section({
        "n_patients": POSITIVE,
        "seed": INT,
        "batch_size": POSITIVE,
        "temperature": Num(min=1e-6),
        "top_k": COUNT,
        "top_p": Num(min=1e-6, max=1),
        "max_visits": POSITIVE,
        "demographics_csv": Nullable(STR),
        "n_bootstrap": POSITIVE,
        "age_groups": ListOf(NONNEG, min_items=1),
        "n_age_codes": POSITIVE,
        "utility_candidates": POSITIVE,
    }),
    "evaluate": Section({"batch_size": POSITIVE, "n_bootstrap": POSITIVE, "calibration_bins": POSITIVE, "seed": INT}),
    "logreg": Section({"c_grid": ListOf(Num(min=0), min_items=1), "seed": INT}),
    "explain": Section({
        "batch_size": POSITIVE,
        "batch_tokens": POSITIVE,
        "ig_steps": POSITIVE,
        "internal_batch_size": Nullable(POSITIVE),
        "k_max": POSITIVE,
        "precision_k": ListOf(POSITIVE, min_items=1),
        "n_random": POSITIVE,
        "n_permutations": POSITIVE,
        "plot_stays": COUNT,
        "attention_batches": COUNT,
        "max_stays": Nullable(POSITIVE),
        "perturbations_per_eval": POSITIVE,
        "sanity_stays": POSITIVE,
        "sanity_ig_steps": POSITIVE,
        "label_shuffle": Section({"stays": POSITIVE, "epochs": POSITIVE, "seeds": POSITIVE,
                                  "tolerance": Num(min=0, max=0.5), "event_strata": POSITIVE, "n_bootstrap": POSITIVE,
                                  "untrained_models": POSITIVE}),
        "seed": INT,
    }),
}.items()})


# -------------------------------------------------------------------------- loading


def validate_params(params: Any, source: str = "params.yaml", sections: tuple[str, ...] = ()) -> dict[str, Any]:
    """`params` itself if it matches `SCHEMA` and holds `sections`; otherwise a `ParamsError`
    listing every problem."""
    problems = SCHEMA.check(params, "")
    for section in sections:
        node = params
        for part in section.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if node is None:
            problems.append(f"{section}: missing (this stage reads it)")
    if problems:
        raise ParamsError(f"{source}: {len(problems)} invalid parameter(s):\n  " + "\n  ".join(problems))
    return params


def load_params(*sections: str, path: str | Path = "params.yaml") -> dict[str, Any]:
    """params.yaml, validated (see the module docstring). Every stage starts with this,
    naming the sections it reads (dotted: `"train.lstm"`), which must be present; every
    section that is present is checked whichever stage reads the file."""
    with open(path) as f:
        params = yaml.safe_load(f)
    return validate_params(params, str(path), sections)


def check_model_kwargs(model: str, kwargs: dict[str, Any], data_inputs: Mapping[str, Any] = (),
                       source: str = "params.yaml") -> None:
    """`train.MODEL.model` against the registered constructor: no unknown key, none missing.

    `data_inputs` are the constructor arguments the data fixes (vocab_size, step_dim, ...);
    params.yaml must not set them. Types are the constructor's business (it validates what
    it cannot take); this check is about names, the typo that would otherwise surface only
    after the data has loaded, or never for an argument with a default.
    """
    from ehrseq.models import model_class  # imports the model (transformers for gpt2): train stage only

    signature = inspect.signature(model_class(model).__init__)
    names = [n for n in signature.parameters if n != "self"]
    settable = [n for n in names if n not in data_inputs]
    key = f"train.{model}.model"
    problems = [f"{key}.{k} = {v!r}: unknown key; allowed here: {', '.join(settable)}"
                for k, v in kwargs.items() if k not in settable]
    problems += [f"{key}.{n}: missing (required by {model}'s constructor)" for n in settable
                 if n not in kwargs and signature.parameters[n].default is inspect.Parameter.empty]
    if problems:
        raise ParamsError(f"{source}: {len(problems)} invalid parameter(s):\n  " + "\n  ".join(problems))
