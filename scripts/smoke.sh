#!/usr/bin/env bash
# The smoke pipeline: the whole DVC pipeline on a few hundred synthetic patients (one
# epoch per model), its metrics compared with the committed baseline in reports/smoke/.
#
#   bash scripts/smoke.sh            # run, print `dvc metrics diff --md`, fail beyond tolerance
#   bash scripts/smoke.sh --update   # run, then make this run the committed baseline
#
# It runs in a temporary copy of the working tree (tracked and untracked, not ignored,
# files) whose git HEAD holds the baseline metrics, so the user's workspace, data and
# DVC cache are untouched and `dvc metrics diff` compares baseline (HEAD) with this run.
# The overrides are in scripts/smoke_params.yaml; tolerances in scripts/smoke.py.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh >/dev/null
export PATH="$PWD/.venv/bin:$PATH"
repo=$PWD
work=$(mktemp -d "${TMPDIR:-/tmp}/ehrseq-smoke.XXXXXX")
trap 'rm -rf "$work"' EXIT
git ls-files -co --exclude-standard -z | tar --null --ignore-failed-read -T - -cf - 2>/dev/null | tar -xf - -C "$work"
cd "$work"
export PYTHONPATH="$work/src"  # the copy's own code, whatever the venv's editable install points at
mkdir -p reports/metrics && rm -f reports/metrics/*.json
cp "$repo"/reports/smoke/*.json reports/metrics/ 2>/dev/null || echo "smoke: no baseline in reports/smoke/ yet"
python "$repo"/scripts/smoke.py apply-params scripts/smoke_params.yaml params.yaml
git init -q && git add -A && git -c user.name=smoke -c user.email=smoke@localhost commit -qm baseline
start=$(date +%s)
dvc repro
echo "smoke pipeline: $(( $(date +%s) - start )) s"
echo; echo "## dvc metrics diff (baseline -> this run)"
dvc metrics diff --md --precision 4 | tee metrics_diff.md
# SMOKE_DIFF_MD=path keeps the table (the GitHub workflow posts it on the pull request).
[ -z "${SMOKE_DIFF_MD:-}" ] || cp metrics_diff.md "$SMOKE_DIFF_MD"
if [ "${1:-}" = "--update" ]; then
  mkdir -p "$repo"/reports/smoke && rm -f "$repo"/reports/smoke/*.json && cp reports/metrics/*.json "$repo"/reports/smoke/
  echo "smoke: baseline updated in reports/smoke/ (commit it with the change that moved it)"
else
  python "$repo"/scripts/smoke.py compare "$repo"/reports/smoke reports/metrics
fi
