#!/usr/bin/env bash
# Create or reuse .venv-tf457: transformers 4.57, the last release that ships Graphormer (transformers 5
# removed it), for tests/attention/test_graphormer.py.
#
# No second torch: the venv is made from the main .venv's interpreter and a .pth file adds the main .venv's
# site-packages *after* its own (site.addsitedir, so the main .venv's .pth files - the editable qsim_hooks -
# work too). Only the three packages whose 4.57 pins differ from the main .venv are installed here, and they
# shadow the main ones: transformers 4.57.6, huggingface-hub 0.36.2 (4.57 needs < 1.0) and tokenizers 0.22.2
# (4.57 needs <= 0.23.0). Their other requirements (numpy, safetensors, regex, requests, pyyaml, tqdm,
# filelock, fsspec, hf-xet, packaging) are satisfied by the main .venv; the import check below proves it.
#
# Idempotent: does nothing (one stamp comparison) unless this script, the checkout's location or the main
# .venv's interpreter changed.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
MAIN_PY="$ROOT/.venv/bin/python"
ENV="$ROOT/.venv-tf457"
if [ ! -x "$MAIN_PY" ]; then
    echo "graphormer_env.sh: no .venv here; run tools/bootstrap.sh first" >&2
    exit 1
fi
STAMP="$ENV/.qsim-hooks-tf457"
WANT="$(sha256sum tools/graphormer_env.sh | cut -d' ' -f1) $ROOT $(readlink -f "$MAIN_PY")"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ]; then
    exit 0
fi
rm -rf "$ENV"
"$MAIN_PY" -m venv --without-pip "$ENV"
MAIN_SITE="$("$MAIN_PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
SITE="$("$ENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
printf 'import site; site.addsitedir(%s)\n' "'$MAIN_SITE'" > "$SITE/_qsim_hooks_main_venv.pth"
# the main .venv's pip installs into the new venv; --ignore-installed: do not look at (or try to remove)
# the main .venv's transformers 5 / huggingface-hub 1.x / tokenizers that the .pth makes visible
"$MAIN_PY" -m pip --python "$ENV/bin/python" install --quiet --disable-pip-version-check \
    --no-deps --ignore-installed "transformers==4.57.6" "huggingface-hub==0.36.2" "tokenizers==0.22.2"
"$ENV/bin/python" - <<'EOF'
import torch, transformers, qsim_hooks  # noqa: F401
from transformers import GraphormerConfig, GraphormerForGraphClassification  # noqa: F401

assert transformers.__version__.startswith("4.57."), transformers.__version__
assert "/.venv-tf457/" not in torch.__file__, "a second torch was installed"
EOF
echo "$WANT" > "$STAMP"
