#!/usr/bin/env bash
# `dvc exp run` that works from a fresh clone, or stops before running anything.
#
#   bash scripts/exp.sh -S train.lstm.lr=0.001            # as `dvc exp run`, same arguments
#   bash scripts/exp.sh -S data.source=mimic3 -S data.path=... extract
#
# An experiment is saved as a commit of every output dvc.lock names. A fresh clone has
# none of them (no DVC remote, empty cache), so plain `dvc exp run STAGE` there runs the
# stage and then fails with "failed to load directory ... .dir". This checks first.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
if ! missing=$(python scripts/lock_cache.py .); then
  echo "scripts/exp.sh: this clone does not have the pipeline's outputs yet ($(echo "$missing" | wc -l) of them," >&2
  echo "e.g. $(echo "$missing" | head -1)); an experiment could not be saved. Run this once first:" >&2
  echo "    bash scripts/run.sh" >&2
  exit 1
fi
exec dvc exp run "$@"
