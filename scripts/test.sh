#!/usr/bin/env bash
# Sets up the environment (idempotent) and runs the whole test suite.
# pytest exits 5 when it collects no tests: that is a failure here, never a pass.
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh || exit 1
.venv/bin/python -m pytest "$@"
status=$?
if [ "$status" -eq 5 ]; then
  echo "scripts/test.sh: pytest collected no tests; failing" >&2
  exit 1
fi
exit "$status"
