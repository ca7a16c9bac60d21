#!/usr/bin/env bash
# Set up (if needed) and open the course in JupyterLab.
#   bash course.sh            # opens JupyterLab on the course
#   bash course.sh --execute  # headless: executes every lecture and solution in place, HTML in build/
#   bash course.sh --site [--solutions hidden]  # the course website in build/site/ (no execution)
set -euo pipefail
cd "$(dirname "$0")"
if [ "${1:-}" = "--site" ]; then
  shift
  bash scripts/setup.sh instructor
  exec .venv/bin/python -m xailab.site "$@"
fi
bash scripts/setup.sh
if [ "${1:-}" = "--execute" ]; then
  exec .venv/bin/python -m xailab.course execute --html
fi
exec .venv/bin/jupyter lab "$@"
