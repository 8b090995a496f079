#!/usr/bin/env bash
# Sets up the environment (idempotent), lints the tree, then runs the whole test suite.
# Arguments go to pytest, e.g. `bash scripts/test.sh -m "not slow"` skips the end-to-end
# stage runs. pytest exits 5 when it collects no tests: that is a failure here, never a pass.
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh || exit 1
# ruff's rules are in pyproject.toml ([tool.ruff]): pyflakes, import order, line length.
if ! .venv/bin/ruff check src stages tests benchmarks scripts; then
  echo "scripts/test.sh: ruff found problems (fix them, or \`.venv/bin/ruff check --fix\` for the fixable ones)" >&2
  exit 1
fi
.venv/bin/python -m pytest "$@"
status=$?
if [ "$status" -eq 5 ]; then
  echo "scripts/test.sh: pytest collected no tests; failing" >&2
  exit 1
fi
exit "$status"
