"""Every stage of dvc.yaml depends on all the code it runs.

A stage's code is its stage module (the `stages/*.py` its cmd runs) and the transitive
closure of the `ehrseq` modules that module imports, found statically: every `import` /
`from ... import` of a module's AST (one inside a function -- a lazy import -- counts
when any file of the closure uses that function's or class's name, so `params.py`
importing the model registry inside `check_model_kwargs` ties only the train stage to
the models), each imported module's parent packages (importing `ehrseq.models.lstm` runs
`ehrseq/__init__.py` and `ehrseq/models/__init__.py`), and string constants naming an
`ehrseq` module (the model registry imports "ehrseq.models.lstm:LSTMTokenModel" by name).
Each of those files must be a dep of the stage or lie under a folder that is. Otherwise
editing it leaves `dvc repro` "up to date" with stale outputs.

dvc.yaml is read with yaml and expanded as DVC does: `${...}` from `vars` and params.yaml,
`foreach` over a list or dict (`${key}`, `${item}`), `matrix`; so a new stage or a new
module is checked without touching this test.
"""
from __future__ import annotations

import ast
import itertools
import re
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
PACKAGE = "ehrseq"
_INTERPOLATION = re.compile(r"\$\{\s*([^}]+?)\s*\}")
_MODULE_STRING = re.compile(rf"{PACKAGE}(?:\.\w+)+")


# ------------------------------------------------------------------ dvc.yaml expansion

def _lookup(context: dict, dotted: str):
    value = context
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            raise KeyError(f"${{{dotted}}} is not defined")
        value = value[part]
    return value


def interpolate(value, context: dict):
    """Resolve `${a.b}` in strings, lists and dicts; a string that is exactly one
    interpolation takes the value itself (a dict for `foreach`)."""
    if isinstance(value, str):
        whole = _INTERPOLATION.fullmatch(value)
        if whole:
            return _lookup(context, whole.group(1))
        return _INTERPOLATION.sub(lambda m: str(_lookup(context, m.group(1))), value)
    if isinstance(value, list):
        return [interpolate(v, context) for v in value]
    if isinstance(value, dict):
        return {k: interpolate(v, context) for k, v in value.items()}
    return value


def _global_context(root: Path, dvc: dict) -> dict:
    context = {}
    params = root / "params.yaml"
    if params.exists():
        context.update(yaml.safe_load(params.read_text()) or {})
    for entry in dvc.get("vars", []):
        if isinstance(entry, str):  # a params file, optionally `file:key`
            path, _, key = entry.partition(":")
            loaded = yaml.safe_load((root / path).read_text()) or {}
            context.update({key: _lookup(loaded, key)} if key else loaded)
        else:
            context.update(entry)
    return context


def expand_stages(root: Path) -> dict[str, dict]:
    """Stage name (`train@lstm` for foreach/matrix) -> its definition with `${}` resolved."""
    dvc = yaml.safe_load((root / "dvc.yaml").read_text())
    context = _global_context(root, dvc)
    stages = {}
    for name, stage in dvc["stages"].items():
        if "foreach" in stage:
            items = interpolate(stage["foreach"], context)
            pairs = items.items() if isinstance(items, dict) else (
                (item if isinstance(item, (str, int, float)) else i, item) for i, item in enumerate(items))
            for key, item in pairs:
                stages[f"{name}@{key}"] = interpolate(stage["do"], {**context, "key": key, "item": item})
        elif "matrix" in stage:
            axes = {axis: interpolate(values, context) for axis, values in stage["matrix"].items()}
            for combo in itertools.product(*axes.values()):
                item = dict(zip(axes, combo))
                body = {k: v for k, v in stage.items() if k != "matrix"}
                stages[f"{name}@{'-'.join(map(str, combo))}"] = interpolate(body, {**context, "item": item})
        else:
            stages[name] = interpolate(stage, context)
    return stages


def dep_paths(stage: dict) -> list[str]:
    """Deps as repo-relative paths (a dep may be written `path:` with options)."""
    deps = [next(iter(d)) if isinstance(d, dict) else d for d in stage.get("deps", [])]
    return [Path(d).as_posix().removeprefix("./") for d in deps]


# ------------------------------------------------------------------ import closure

def module_file(src: Path, name: str) -> Path | None:
    """The file that defines module `name` under `src`, if it is one of ours."""
    base = src.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _with_parents(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


def _module_names(node: ast.AST, package: str) -> set[str]:
    """Module names an import statement or a string constant names (not yet filtered)."""
    if isinstance(node, ast.Import):
        return {alias.name for alias in node.names}
    if isinstance(node, ast.ImportFrom):
        if node.level:
            anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
            base = ".".join([*anchor, *([node.module] if node.module else [])])
        else:
            base = node.module
        return {base} | {f"{base}.{alias.name}" for alias in node.names}  # `from pkg import module`
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return set(_MODULE_STRING.findall(node.value))
    return set()


def scan_module(path: Path, src: Path) -> tuple[set[str], dict[str, set[str]], set[str]]:
    """What running `path` may import: (modules named at import time, {top-level name:
    modules named inside its functions}, every identifier the file uses).

    An import inside a function (a lazy import) runs only if that function is called, so
    it is keyed by the top-level function or class holding it; `import_closure` follows it
    only when some file of the closure uses that name."""
    tree = ast.parse(path.read_text(), filename=str(path))
    if path.is_relative_to(src):
        own = ".".join(path.relative_to(src).with_suffix("").parts).removesuffix(".__init__")
        package = own if path.name == "__init__.py" else own.rpartition(".")[0]
    else:
        package = ""  # a stage script: no relative imports
    eager: set[str] = set()
    lazy: dict[str, set[str]] = {}
    names: set[str] = set()

    def visit(node: ast.AST, owner: str | None, in_function: bool) -> None:
        found = _module_names(node, package)
        (lazy.setdefault(owner, set()) if in_function else eager).update(found)
        if isinstance(node, ast.Name):
            names.add(node.id)
        elif isinstance(node, ast.Attribute):
            names.add(node.attr)
        elif isinstance(node, ast.ImportFrom):
            names.update(alias.asname or alias.name for alias in node.names)
        for child in ast.iter_child_nodes(node):
            is_function = isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            visit(child, owner or getattr(child, "name", None), in_function or is_function)

    for statement in tree.body:
        is_function = isinstance(statement, (ast.FunctionDef, ast.AsyncFunctionDef))
        visit(statement, getattr(statement, "name", None), is_function)

    def ours(found: set[str]) -> set[str]:
        return {parent for n in found if n == PACKAGE or n.startswith(PACKAGE + ".")
                for parent in _with_parents(n) if module_file(src, parent)}

    return ours(eager), {owner: ours(found) for owner, found in lazy.items()}, names


def import_closure(script: Path, src: Path) -> set[Path]:
    """The script and every `ehrseq` module file it may run, transitively."""
    scans: dict[Path, tuple] = {}
    files, changed = {script}, True
    while changed:
        changed = False
        for path in list(files):
            scans.setdefault(path, scan_module(path, src))
        used = set().union(*(names for _, _, names in scans.values()))
        for eager, lazy, _ in list(scans.values()):
            wanted = set(eager).union(*(found for owner, found in lazy.items() if owner in used))
            for name in wanted:
                path = module_file(src, name)
                if path not in files:
                    files.add(path)
                    changed = True
    return files


def stage_code(root: Path, stage: dict) -> set[str]:
    """Repo-relative files of every stage script the cmd runs and of their import closure."""
    scripts = re.findall(r"stages/\w+\.py", stage["cmd"] if isinstance(stage["cmd"], str) else " ".join(stage["cmd"]))
    return {path.relative_to(root).as_posix() for script in scripts
            for path in import_closure(root / script, root / "src")}


def uncovered(root: Path, stage: dict) -> list[str]:
    """Files the stage's code runs that none of its deps covers."""
    deps = dep_paths(stage)
    return sorted(rel for rel in stage_code(root, stage)
                  if not any(rel == d or rel.startswith(d.rstrip("/") + "/") for d in deps))


def unneeded(root: Path, stage: dict) -> list[str]:
    """Python files the stage depends on but never runs (each one re-runs it for nothing)."""
    code = stage_code(root, stage)
    return sorted(d for d in dep_paths(stage) if d.endswith(".py") and d not in code)


# ------------------------------------------------------------------ the check

STAGES = expand_stages(REPO)


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_depends_on_every_module_it_imports(name):
    stage = STAGES[name]
    assert re.search(r"stages/\w+\.py", str(stage["cmd"])), f"{name}: no stages/*.py in cmd {stage['cmd']!r}"
    missing = uncovered(REPO, stage)
    assert not missing, f"dvc.yaml stage {name!r} runs these files but does not depend on them: {missing}"


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_depends_on_no_module_it_does_not_run(name):
    extra = unneeded(REPO, STAGES[name])
    assert not extra, f"dvc.yaml stage {name!r} depends on modules it never imports (needless re-runs): {extra}"


# ------------------------------------------------------------------ the checker itself

def test_the_checker_finds_a_missing_module_through_foreach_and_transitive_imports(tmp_path):
    """A planted repo: stage `run@a` imports ehrseq.a and calls a.f, which lazily imports
    ehrseq.sub.deep (relative import) and names ehrseq.reg by string; only `run@b` declares
    all of them. a.never_called's lazy import of ehrseq.unused is never needed."""
    src = tmp_path / "src" / PACKAGE
    (src / "sub").mkdir(parents=True)
    (src / "__init__.py").write_text("")
    (src / "sub" / "__init__.py").write_text("")
    (src / "a.py").write_text("def f():\n    from .sub import deep\n    return 'ehrseq.reg:Thing'\n\n\n"
                              "def never_called():\n    from ehrseq import unused\n")
    (src / "sub" / "deep.py").write_text("import os\n")
    (src / "reg.py").write_text("")
    (src / "unused.py").write_text("")
    (tmp_path / "stages").mkdir()
    (tmp_path / "stages" / "run.py").write_text("from ehrseq import a\n\na.f()\n")
    (tmp_path / "params.yaml").write_text("code: {dir: src/ehrseq}\n")
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({
        "vars": [{"variants": {"a": {"extra": "src/ehrseq/a.py"}, "b": {"extra": "src/ehrseq"}}}],
        "stages": {"run": {"foreach": "${variants}", "do": {
            "cmd": "python -P stages/run.py ${key}",
            "deps": ["stages/run.py", "${code.dir}/__init__.py", "${item.extra}"]}}},
    }))
    stages = expand_stages(tmp_path)
    assert set(stages) == {"run@a", "run@b"}
    assert stages["run@a"]["deps"][1:] == ["src/ehrseq/__init__.py", "src/ehrseq/a.py"]  # params and item
    assert uncovered(tmp_path, stages["run@a"]) == [
        "src/ehrseq/reg.py", "src/ehrseq/sub/__init__.py", "src/ehrseq/sub/deep.py"]
    assert uncovered(tmp_path, stages["run@b"]) == []
    assert unneeded(tmp_path, stages["run@a"]) == [] and unneeded(tmp_path, stages["run@b"]) == []
    stages["run@a"]["deps"].append("src/ehrseq/unused.py")
    assert unneeded(tmp_path, stages["run@a"]) == ["src/ehrseq/unused.py"]
