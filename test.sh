#!/usr/bin/env bash
# Set up (if needed) and run every test: library tests and every lecture and
# solution notebook under nbval. Usage: bash test.sh [extra pytest args]
set -uo pipefail
cd "$(dirname "$0")"
bash scripts/setup.sh dev || exit 1
bash scripts/install-browser.sh
export MPLBACKEND=Agg PYTHONHASHSEED=0
unset XAILAB_MAX_STEPS    # nbval compares outputs measured at the full step counts
.venv/bin/python -m pytest tests lectures solutions --nbval-lax --nbval-current-env -ra "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
  echo "test.sh: pytest collected no tests; that is a failure" >&2
  exit 1
fi
exit "$rc"
