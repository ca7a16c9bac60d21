#!/usr/bin/env bash
# Start one student's Jupyter server: the Spawner's command (deploy/jupyterhub_config.py).
# Gives the student their own copy of the labs in ~/xailab/labs: files they do not
# have yet are copied from the shared, read-only course folder ($XAILAB_COURSE);
# files they already have (their work) are never overwritten. Labs added to the
# course later appear at their next start.
set -euo pipefail
course="${XAILAB_COURSE:-/srv/xailab}"
labs="$HOME/xailab/labs"
mkdir -p "$labs"
for lab in "$course"/labs/*.ipynb; do
  mine="$labs/$(basename "$lab")"
  [ -e "$mine" ] || { cp "$lab" "$mine" && chmod u+w "$mine"; }
done
exec "${XAILAB_SINGLEUSER:-jupyterhub-singleuser}" "$@"
