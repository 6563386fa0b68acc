#!/usr/bin/env bash
# Create or reuse the virtual environment at .venv and install qsim-hooks with its dev extra.
# Re-installs only when pyproject.toml changed since the last successful install.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null 2>&1 || PY=python3
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
STAMP=.venv/.qsim-hooks-installed
WANT="$(sha256sum pyproject.toml tools/bootstrap.sh | sha256sum | cut -d' ' -f1)"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ]; then
    .venv/bin/python -m pip install --quiet --upgrade pip
    # torch and torchvision as a matched pair (PyPI's torchvision imports only beside its own torch)
    .venv/bin/python -m pip install --quiet "torch==2.14.1" "torchvision==0.29.1"
    .venv/bin/python -m pip install --quiet -e ".[dev]"
    echo "$WANT" > "$STAMP"
fi
# transformers 4.57 beside .venv (shares its torch) for the Graphormer attention test; a no-op once built
if ! bash tools/graphormer_env.sh; then
    echo "bootstrap: could not build .venv-tf457; tests/attention/test_graphormer.py will be skipped" >&2
fi
