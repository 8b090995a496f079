"""Which outputs named in dvc.lock this clone's DVC cache lacks.

`dvc exp run` saves every experiment as a commit of all outputs that dvc.lock names; in
a fresh clone (no DVC remote, empty cache) those objects do not exist, so an experiment
that re-runs one stage runs it and then fails with "failed to load directory ... .dir".
scripts/exp.sh asks this first and stops before running anything.

    python scripts/lock_cache.py [REPO]   # prints the missing outputs; exit 1 if any
"""
from __future__ import annotations

import sys
from pathlib import Path

import yaml


def missing_outputs(repo: str | Path) -> list[str]:
    repo = Path(repo)
    lock_path = repo / "dvc.lock"
    if not lock_path.exists():
        return []
    lock = yaml.safe_load(lock_path.read_text()) or {}
    cache = repo / ".dvc" / "cache" / "files" / "md5"
    missing = []
    for stage in (lock.get("stages") or {}).values():
        for out in stage.get("outs", []):
            md5 = out.get("md5")
            # An output in the workspace can be committed (that includes the cache: false
            # metrics, which git brings); one in neither place cannot.
            if md5 is None or (repo / out["path"]).exists():
                continue
            if not (cache / md5[:2] / md5[2:]).exists():
                missing.append(out["path"])
    return missing


if __name__ == "__main__":
    absent = missing_outputs(sys.argv[1] if len(sys.argv) > 1 else ".")
    for path in absent:
        print(path)
    sys.exit(1 if absent else 0)
