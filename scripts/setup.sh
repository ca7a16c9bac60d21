#!/usr/bin/env bash
# Create .venv (Python >= 3.11) and install xailab with its dependencies.
# Usage: scripts/setup.sh [dev|instructor]   -- "dev" adds the test tools and reference
# libraries, "instructor" the website builder and nbgrader.
# Installs only when pyproject.toml changed since the last install (stamp file).
set -euo pipefail
cd "$(dirname "$0")/.."
extra="${1:-}"
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  for c in python3.11 python3.12 python3.13 python3; do
    if command -v "$c" >/dev/null && "$c" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then PY="$c"; break; fi
  done
fi
[ -n "$PY" ] || { echo "xailab needs Python >= 3.11; install it and rerun" >&2; exit 1; }
[ -x .venv/bin/python ] || "$PY" -m venv .venv
spec="."; [ -n "$extra" ] && spec=".[$extra]"
stamp=".venv/.xailab-installed-$extra-$(sha256sum pyproject.toml | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  # the pinned torch wheel is the CUDA build (it runs on the CPU too): about 7 GB in .venv
  free_kb=$(df -Pk . 2>/dev/null | awk 'NR == 2 {print $4}' || true)
  if [ "${free_kb:-0}" -lt 8000000 ]; then
    echo "setup: only $((free_kb / 1000000)) GB free here; installing needs about 8 GB (torch alone is ~5.5 GB)." \
         "If pip stops with 'No space left on device', free some space and rerun." >&2
  fi
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -e "$spec"
  touch "$stamp"
fi
# Web assets for the offline slides, HTML and website, and the JupyterHub proxy
# (package.json at the root): installed with npm ci when package-lock.json changed.
lock_stamp="node_modules/.xailab-installed-$(sha256sum package-lock.json | cut -c1-16)"
if [ ! -f "$lock_stamp" ]; then
  if command -v npm >/dev/null; then
    npm ci --no-audit --no-fund --loglevel=error
    touch "$lock_stamp"
  else
    echo "setup: npm not found: install Node.js >= 18 (with npm) for offline slides, the website and the hub test" >&2
  fi
fi
