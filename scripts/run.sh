#!/usr/bin/env bash
# Sets up the environment (idempotent) and runs the whole pipeline on the default
# synthetic data: `dvc repro`. Extra arguments go to dvc repro (e.g. a stage name).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# A fresh clone has no DVC cache and no dvc.lock outputs: repro rebuilds from params.
.venv/bin/dvc repro "$@"
.venv/bin/dvc metrics show
