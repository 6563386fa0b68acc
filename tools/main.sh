#!/usr/bin/env bash
# The README's main job: set up .venv if needed, then run the demo.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/tools/bootstrap.sh"
cd "$ROOT"
exec .venv/bin/python -m qsim_hooks "${@:-demo}"
