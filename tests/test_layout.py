"""The layout's promises: dependencies point down, one home for paths, one list of models.

dvc.yaml, params.yaml and the code are read as files, so adding a stage, a path or a
model without declaring it everywhere fails here, not in a stale `dvc repro`.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

import numpy as np
import pytest
import yaml

from ehrseq import metrics, paths
from ehrseq.model_data import EMBEDDING_MODELS, PATIENT_MODELS, SURVIVAL_MODELS, TOKEN_MODELS
from ehrseq.models import OWN_STAGE_MODELS, REGISTRY

REPO = Path(__file__).resolve().parents[1]
DVC = yaml.safe_load((REPO / "dvc.yaml").read_text())
PARAMS = yaml.safe_load((REPO / "params.yaml").read_text())
DVC_MODELS = DVC["vars"][0]["models"]
PHASES = ("pretrain", "finetune", "denoise")  # training phases (denoise: prompt_bart's only one)
DVC_EXPLAINED = DVC["vars"][1]["explained"]  # the models explain@MODEL runs on (each needs an explainer)


# ------------------------------------------------------------- dependencies point down


def import_graph() -> dict[str, set[str]]:
    """ehrseq module -> every module it imports (top-level or inside a function: a lazy
    import is still a dependency), read from the source, so the whole graph costs no import."""
    src = REPO / "src"
    graph = {}
    for path in sorted((src / "ehrseq").rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        package = ".".join(parts[:-1])
        imports = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imports |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from . import x
                    base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + [base]).strip(".")
                imports.add(base)
                imports |= {f"{base}.{alias.name}" for alias in node.names}  # `from pkg import module`
        graph[name] = imports
    return graph


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    """Every module `start` imports, directly or through other ehrseq modules (a package's
    __init__ counts as imported with any of its modules)."""
    seen, todo = set(), [start]
    while todo:
        module = todo.pop()
        for imported in graph.get(module, ()):
            parents = [".".join(imported.split(".")[:i]) for i in range(1, imported.count(".") + 2)]
            for name in parents:
                if name not in seen:
                    seen.add(name)
                    todo.append(name)
    return seen


GRAPH = import_graph()


def test_the_import_graph_sees_the_known_edges():
    """The probe itself: edges that exist must be found (else the tests below pass vacuously)."""
    assert "ehrseq.explain.attributions" in reachable(GRAPH, "ehrseq.explain.run")
    assert "captum" in reachable(GRAPH, "ehrseq.explain.run")
    assert {"ehrseq.models", "ehrseq.torch_utils"} <= reachable(GRAPH, "ehrseq.training")
    assert "ehrseq.models.clinical_lf" in reachable(GRAPH, "ehrseq.model_data")  # through ehrseq.tasks


@pytest.mark.parametrize("module", ["ehrseq.training", "ehrseq.tasks", "ehrseq.model_data", "ehrseq.models.attention"])
def test_training_side_never_imports_explain_or_captum(module):
    reached = sorted(m for m in reachable(GRAPH, module) if m.startswith(("ehrseq.explain", "captum")))
    assert not reached, f"{module} imports {reached}"


def test_model_data_does_not_import_the_loop():
    assert "ehrseq.training" not in reachable(GRAPH, "ehrseq.model_data")


@pytest.mark.parametrize("module", sorted(m for m in GRAPH if m.startswith("ehrseq.models")))
def test_a_model_knows_no_loop_task_source_or_explanation(module):
    upward = ("ehrseq.training", "ehrseq.tasks", "ehrseq.model_data", "ehrseq.sources", "ehrseq.explain",
              "ehrseq.params")
    reached = sorted(m for m in reachable(GRAPH, module) if m.startswith(upward))
    assert not reached, f"{module} imports {reached}"


# ------------------------------------------------------------------ one list of models


def test_model_lists_agree_with_the_registry():
    registry = set(REGISTRY)
    assert set(DVC_MODELS) == registry, "dvc.yaml `vars: models` differs from ehrseq.models.REGISTRY"
    assert set(PARAMS["train"]) == registry | set(OWN_STAGE_MODELS), \
        "params.yaml `train:` sections differ from the registry and the own-stage models"
    for model in OWN_STAGE_MODELS:
        assert {f"train_{model}", f"evaluate_{model}"} <= set(DVC["stages"]), model
    groups = [set(TOKEN_MODELS), set(EMBEDDING_MODELS), set(PATIENT_MODELS), set(SURVIVAL_MODELS)]
    assert sum(map(len, groups)) == len(set().union(*groups)), "a model is in two input groups"
    assert set().union(*groups) == registry, "model_data's input groups differ from the registry"


def test_explained_models_are_registered_models_with_the_same_inputs():
    for model, item in DVC_EXPLAINED.items():
        inputs = {k: DVC_MODELS.get(model, {}).get(k) for k in ("data", "index")}
        assert inputs == item, f"dvc.yaml `vars: explained` {model}: inputs not as in `vars: models`"


def test_dvc_model_inputs_are_the_files_model_data_reads():
    reads = {**{m: (paths.SEQUENCES, paths.VOCAB) for m in TOKEN_MODELS},
             **{m: (paths.INTERIM, paths.TEXT_EMBEDDINGS) for m in EMBEDDING_MODELS},
             **{m: (paths.SEQUENCES, paths.VOCAB) for m in SURVIVAL_MODELS},  # paths.SURVIVAL_SEQUENCES
             # patient models build their data from INTERIM with this module: a change to it re-trains them
             **{m: (paths.INTERIM, Path("src/ehrseq/patient_visits.py")) for m in PATIENT_MODELS}}
    for model, item in DVC_MODELS.items():
        assert (Path(item["data"]), Path(item["index"])) == reads[model], model


# --------------------------------------------------------------- one home for paths


def _expand(stages: dict) -> dict[str, dict]:
    """dvc.yaml stages with `foreach: ${models}` (or `${explained}`) expanded the way DVC does (`train@lstm`)."""
    out = {}
    lists = {"${models}": DVC_MODELS, "${explained}": DVC_EXPLAINED}
    for name, stage in stages.items():
        if "foreach" not in stage:
            out[name] = stage
            continue
        assert stage["foreach"] in lists, f"{name}: unexpected foreach {stage['foreach']}"
        for key, item in lists[stage["foreach"]].items():
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


def _plot_files(dvc: dict) -> list[str]:
    """Files of top-level plots: a plot with an id names its files under `y` (file: field)."""
    files = []
    for entry in dvc.get("plots", []):
        name, spec = next(iter(entry.items())) if isinstance(entry, dict) else (entry, None)
        y = spec.get("y") if isinstance(spec, dict) else None
        files += list(y) if isinstance(y, dict) else [name]
    return files


def named_paths() -> set[Path]:
    """Every path `ehrseq.paths` names, for every stage and registered model."""
    constants = {v for v in vars(paths).values() if isinstance(v, Path)}
    curves = metrics.classification_curves(np.array([0, 1, 0, 1]), np.array([0.1, 0.8, 0.3, 0.6]), 2)
    per_model = set()
    for model in [*REGISTRY, "logreg"]:  # logreg: the baseline stage writes the same curves
        per_model |= {paths.model_dir(model), paths.train_reports(model), paths.metrics_json(model)}
        per_model |= {paths.plots_dir(model)} | {paths.plots_dir(model) / f"{name}.csv" for name in curves}
        per_model |= {paths.train_reports(model) / phase / "plots" / "metrics" for phase in PHASES}
        per_model |= {paths.explain_dir(model), paths.explain_metrics(model), paths.train_metrics(model)}
    per_model |= {paths.tertile_plot(model, suffix) for model in SURVIVAL_MODELS for suffix in ("csv", "png")}
    per_stage = {paths.metrics_json(name) for name in DVC["stages"]}
    return constants | per_model | per_stage


def test_every_pipeline_path_in_dvc_yaml_is_named_in_ehrseq_paths():
    named = named_paths()
    listed = [(s, f, e) for s, stage in STAGES.items() for f in ("deps", "outs", "metrics", "plots")
              for e in _entries(stage, f) if _pipeline_path(e)]
    listed += [("plots", "plots", e) for e in _plot_files(DVC)]
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
    roots = {paths.MODELS, paths.REPORTS, paths.METRICS, paths.EXPLAIN}  # parents of outputs, never outputs themselves
    for name, value in vars(paths).items():
        if isinstance(value, Path) and value not in roots:
            assert any(value == d or d in value.parents for d in declared), f"paths.{name} = {value} is in no stage"


def test_every_model_has_its_training_curves_in_dvc_plots():
    plotted = set(map(Path, _entries(DVC, "plots")))
    for model in REGISTRY:
        last_phase = "denoise" if model in PATIENT_MODELS else "finetune"
        assert paths.train_reports(model) / last_phase / "plots" / "metrics" in plotted, model


def test_every_params_key_dvc_yaml_tracks_exists_in_params_yaml():
    """A stage re-runs when a tracked key changes; a tracked key that does not exist (a
    typo in dvc.yaml, or a section renamed in params.yaml) would never trigger it."""
    for name, stage in STAGES.items():
        for key in stage.get("params", []):
            node = PARAMS
            for part in key.split("."):
                assert isinstance(node, dict) and part in node, f"{name}: params key {key} is not in params.yaml"
                node = node[part]


def test_dvc_lock_names_only_stages_of_dvc_yaml():
    """DVC keeps the lock entry of a stage removed from dvc.yaml (here once: `explain`, before
    it became explain@MODEL); its outputs then never exist, and scripts/exp.sh refuses every
    experiment because the lock names an output no run writes."""
    stages = set()
    for name, stage in DVC["stages"].items():
        if "foreach" not in stage:
            stages.add(name)
            continue
        keys = stage["foreach"]
        if isinstance(keys, str):  # ${models}: a dvc.yaml var
            var = keys.strip("${}")
            keys = next(v[var] for v in DVC["vars"] if var in v)
        stages |= {f"{name}@{key}" for key in keys}
    locked = set(yaml.safe_load((REPO / "dvc.lock").read_text())["stages"])
    assert locked <= stages, f"dvc.lock has stages dvc.yaml lacks: {sorted(locked - stages)}"


def test_every_stage_records_its_wall_seconds_in_the_smoke_baseline():
    """Each stage's metrics file carries `seconds`, so the report's run-cost table covers the
    whole pipeline (#15: "measure where the time goes first"). Read from the committed smoke
    baseline, which a real run of every stage wrote."""
    from ehrseq.report import cost_row

    missing = []
    for name, stage in STAGES.items():
        for entry in _entries(stage, "metrics"):
            baseline = REPO / "reports" / "smoke" / Path(entry).name
            assert baseline.exists(), f"{name}: {baseline} is not in the smoke baseline"
            if cost_row(baseline.stem, yaml.safe_load(baseline.read_text())) is None:
                missing.append(f"{name} ({baseline.name})")
    assert not missing, f"stages whose metrics record no seconds: {missing}"


@pytest.mark.parametrize("folder", ["benchmarks", "scripts"])
def test_no_script_shadows_a_standard_module(folder):
    """`python benchmarks/x.py` puts benchmarks/ first on sys.path: a benchmarks/tokenize.py
    replaced the stdlib `tokenize` that pandas imports, and every other benchmark failed.
    (stages/ run as `python -P`, which leaves the script's folder off the path.)"""
    import sys

    clashes = [p.name for p in (REPO / folder).glob("*.py") if p.stem in sys.stdlib_module_names]
    assert not clashes, f"{folder}/ scripts named like standard modules: {clashes}"


def test_model_stages_import_no_unused_heavy_library():
    """Every train/evaluate/explain stage imports the data, task and loop modules. They
    used to import transformers (through the embeddings package), pycox and
    scikit-survival (through the survival task) whatever the model: ~2 CPU seconds of
    imports in each of ~20 stages. Those load now only where used (gpt2, prompt_bart,
    the embed stage, survival_lstm's metrics)."""
    import subprocess
    import sys

    heavy = ("transformers", "pycox", "sksurv")
    lstm = "vocab_size=10, embedding_dim=4, hidden_size=4, num_layers=1, dropout=0.0, bidirectional=False"
    code = ("import sys, ehrseq.model_data, ehrseq.training, ehrseq.tasks, ehrseq.embeddings; "
            f"from ehrseq.models import build_model; build_model('lstm', {lstm}); "
            f"print(' '.join(m for m in {heavy!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"imported without being used: {out.stdout.strip()}"


# stage -> libraries importing its module must leave out: each stage is a new process
# (27 per `dvc repro`), and these cost 0.3-1.7 s of start-up each where nothing uses them.
# (train_med2vec and generate reach metrics and training through the same modules.)
UNUSED_BY_STAGE = {
    "train": ("sklearn",),  # metrics' curves are numpy
    "evaluate": ("sklearn", "dvclive"),  # dvclive (it imports dvc): only `fit` logs
    "explain": ("sklearn", "dvclive"),
    "report": ("torch", "sklearn"),  # the model registry is torch-free
    "logreg": ("torch",),  # it reads the sequence files with ehrseq.sequences, not ehrseq.data
}


@pytest.mark.parametrize("stage", sorted(UNUSED_BY_STAGE))
def test_a_stage_module_imports_no_library_it_does_not_use(stage):
    """Imports `stages/STAGE.py` as DVC runs it (`python -P`, `main()` not called) in a
    fresh interpreter."""
    import subprocess
    import sys

    unused = UNUSED_BY_STAGE[stage]
    code = ("import importlib.util, sys; "
            f"spec = importlib.util.spec_from_file_location('stage', {str(REPO / 'stages' / f'{stage}.py')!r}); "
            "spec.loader.exec_module(importlib.util.module_from_spec(spec)); "
            f"print(' '.join(m for m in {unused!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-P", "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"stages/{stage}.py imports without using: {out.stdout.strip()}"
