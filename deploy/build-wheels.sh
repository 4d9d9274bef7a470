#!/usr/bin/env bash
# Wheels for the image: kqd itself (with its generated stubs) and every runtime dependency,
# so that `podman build` needs no network. Run from the repository root.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-.venv/bin/python}
rm -rf deploy/wheels
"$python" -m pip wheel --quiet --disable-pip-version-check --wheel-dir deploy/wheels .
ls deploy/wheels
