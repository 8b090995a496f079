"""The layout's promises: dependencies point down, one home for paths, one list of models.

dvc.yaml, params.yaml and the code are read as files, so adding a stage, a path or a
model without declaring it everywhere fails here, not in a stale `dvc repro`.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import yaml

from ehrseq import metrics, paths
from ehrseq.model_data import EMBEDDING_MODELS, TOKEN_MODELS
from ehrseq.models import REGISTRY

REPO = Path(__file__).resolve().parents[1]
DVC = yaml.safe_load((REPO / "dvc.yaml").read_text())
PARAMS = yaml.safe_load((REPO / "params.yaml").read_text())
DVC_MODELS = DVC["vars"][0]["models"]


# ------------------------------------------------------------- dependencies point down


def imported_modules(*modules: str) -> set[str]:
    """Every module `import *modules` loads, in a fresh interpreter (this one has imported everything)."""
    code = f"import json, sys, {', '.join(modules)}; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(json.loads(out.stdout))


def test_training_side_never_imports_explain_or_captum():
    # One interpreter for all four (each start costs a torch import): if none of them
    # together reaches explain, none does alone.
    modules = ("ehrseq.training", "ehrseq.tasks", "ehrseq.model_data", "ehrseq.models.attention")
    loaded = imported_modules(*modules)
    assert set(modules) <= loaded  # the probe really imported them
    reached = sorted(m for m in loaded if m.startswith(("ehrseq.explain", "captum")))
    assert not reached, f"{modules} import {reached[:5]}"


def test_model_data_does_not_import_the_loop():
    assert "ehrseq.training" not in imported_modules("ehrseq.model_data")


# ------------------------------------------------------------------ one list of models


def test_model_lists_agree_with_the_registry():
    registry = set(REGISTRY)
    assert set(DVC_MODELS) == registry, "dvc.yaml `vars: models` differs from ehrseq.models.REGISTRY"
    assert set(PARAMS["train"]) == registry, "params.yaml `train:` sections differ from the registry"
    assert not set(TOKEN_MODELS) & set(EMBEDDING_MODELS)
    assert set(TOKEN_MODELS) | set(EMBEDDING_MODELS) == registry, "model_data's input groups differ from the registry"


def test_dvc_model_inputs_are_the_files_model_data_reads():
    reads = {**{m: (paths.SEQUENCES, paths.VOCAB) for m in TOKEN_MODELS},
             **{m: (paths.INTERIM, paths.TEXT_EMBEDDINGS) for m in EMBEDDING_MODELS}}
    for model, item in DVC_MODELS.items():
        assert (Path(item["data"]), Path(item["index"])) == reads[model], model


# --------------------------------------------------------------- one home for paths


def _expand(stages: dict) -> dict[str, dict]:
    """dvc.yaml stages with `foreach: ${models}` expanded the way DVC does (`train@lstm`)."""
    out = {}
    for name, stage in stages.items():
        if "foreach" not in stage:
            out[name] = stage
            continue
        assert stage["foreach"] == "${models}", f"{name}: unexpected foreach {stage['foreach']}"
        for key, item in DVC_MODELS.items():
            text = yaml.safe_dump(stage["do"]).replace("${key}", key)
            text = re.sub(r"\$\{item\.(\w+)\}", lambda m: item[m.group(1)], text)
            out[f"{name}@{key}"] = yaml.safe_load(text)
    return out


STAGES = _expand(DVC["stages"])


def _entries(stage: dict, field: str) -> list[str]:
    return [next(iter(e)) if isinstance(e, dict) else e for e in stage.get(field, [])]


def _pipeline_path(entry: str) -> bool:
    """Files the pipeline writes (not code, not a parameter-named folder such as ${data.path})."""
    return entry.startswith(("data/", "models/", "reports/"))


def named_paths() -> set[Path]:
    """Every path `ehrseq.paths` names, for every stage and registered model."""
    constants = {v for v in vars(paths).values() if isinstance(v, Path)}
    curves = metrics.classification_curves(np.array([0, 1, 0, 1]), np.array([0.1, 0.8, 0.3, 0.6]), 2)
    per_model = set()
    for model in REGISTRY:
        per_model |= {paths.model_dir(model), paths.train_reports(model), paths.metrics_json(model)}
        per_model |= {paths.plots_dir(model) / f"{name}.csv" for name in curves}
        per_model |= {paths.train_reports(model) / phase / "plots" / "metrics" for phase in ("pretrain", "finetune")}
    per_stage = {paths.metrics_json(name) for name in DVC["stages"]}
    return constants | per_model | per_stage


def test_every_pipeline_path_in_dvc_yaml_is_named_in_ehrseq_paths():
    named = named_paths()
    listed = [(s, f, e) for s, stage in STAGES.items() for f in ("deps", "outs", "metrics", "plots")
              for e in _entries(stage, f) if _pipeline_path(e)]
    listed += [("plots", "plots", e) for e in _entries(DVC, "plots")]
    stray = [(s, f, e) for s, f, e in listed if Path(e) not in named]
    assert not stray, f"dvc.yaml paths not named in ehrseq.paths: {stray}"


def test_every_dep_is_some_stage_output():
    outs = {Path(e) for stage in STAGES.values() for f in ("outs", "metrics", "plots") for e in _entries(stage, f)}
    for name, stage in STAGES.items():
        for dep in filter(_pipeline_path, _entries(stage, "deps")):
            dep = Path(dep)
            assert any(dep == o or o in dep.parents or dep in o.parents for o in outs), f"{name}: {dep} is no output"


def test_every_named_path_is_declared_in_dvc_yaml():
    declared = {Path(e) for stage in STAGES.values() for f in ("deps", "outs", "metrics", "plots")
                for e in _entries(stage, f)}
    roots = {paths.MODELS, paths.REPORTS, paths.METRICS}  # parents of outputs, never outputs themselves
    for name, value in vars(paths).items():
        if isinstance(value, Path) and value not in roots:
            assert any(value == d or d in value.parents for d in declared), f"paths.{name} = {value} is in no stage"


def test_every_model_has_its_training_curves_in_dvc_plots():
    plotted = set(map(Path, _entries(DVC, "plots")))
    for model in REGISTRY:
        assert paths.train_reports(model) / "finetune" / "plots" / "metrics" in plotted, model
