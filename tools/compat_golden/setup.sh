#!/usr/bin/env bash
# Build .venv-intfpqsim: the old tool, INT-FP-QSim, runnable beside qsim-hooks, as the oracle of
# tools/compat_golden/make_golden.py and tools/bench_compat.py. Never used by the tests or CI.
#
# * No second torch: the venv is made from the main .venv's interpreter and a .pth line adds the main
#   .venv's site-packages after its own. Only pytorch-quantization 2.1.3 (NVIDIA's TensorRT toolkit, a
#   pure-Python wheel; 2.2.1 on PyPI is a placeholder that does not build) and absl-py go into it.
# * The old tool's source is copied from the reference (unmodified there) into
#   .venv-intfpqsim/int-fp-qsim/ (git-ignored, never in the repository) and patched there so that it
#   imports on torch 2 / transformers 5 (see shared/reference/README.md):
#     1. the graphormer import is optional (transformers 5 removed Graphormer);
#     2. mf.DetrAttention is subclassed and mapped only where it exists;
#     3. its MultiheadAttention.forward accepts and ignores is_causal= (torch 2 passes it).
#   Two more adaptations are made at run time by make_golden.py, not here: TensorRT's mse calibration
#   calls .cuda() (a no-op around that call), and the old BertSelfAttention.forward predates
#   transformers 5's call signature (an adapter around the call).
#
# Idempotent: does nothing (one stamp comparison) unless this script, the reference, the checkout's
# location or the main .venv's interpreter changed.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
MAIN_PY="$ROOT/.venv/bin/python"
ENV="$ROOT/.venv-intfpqsim"
REF="${INT_FP_QSIM_REFERENCE:-/work/shared/reference/int-fp-qsim}"
if [ ! -x "$MAIN_PY" ]; then
    echo "compat_golden/setup.sh: no .venv here; run tools/bootstrap.sh first" >&2
    exit 1
fi
if [ ! -f "$REF/int_fp_qsim/replace.py" ]; then
    echo "compat_golden/setup.sh: the INT-FP-QSim reference is not at $REF (set INT_FP_QSIM_REFERENCE)" >&2
    exit 1
fi
STAMP="$ENV/.qsim-hooks-intfpqsim"
WANT="$(sha256sum tools/compat_golden/setup.sh | cut -d' ' -f1) $(cat "$REF"/int_fp_qsim/*.py | sha256sum | cut -d' ' -f1) $ROOT $(readlink -f "$MAIN_PY")"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ]; then
    exit 0
fi
rm -rf "$ENV"
"$MAIN_PY" -m venv --without-pip "$ENV"
MAIN_SITE="$("$MAIN_PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
SITE="$("$ENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
printf 'import site; site.addsitedir(%s)\n' "'$MAIN_SITE'" > "$SITE/_qsim_hooks_main_venv.pth"
"$MAIN_PY" -m pip --python "$ENV/bin/python" install --quiet --disable-pip-version-check \
    --no-deps --ignore-installed "pytorch-quantization==2.1.3" "absl-py"

# the old tool: a patched copy outside the repository's tracked files, importable as int_fp_qsim
cp -r "$REF" "$ENV/int-fp-qsim"
chmod -R u+w "$ENV/int-fp-qsim"
echo "$ENV/int-fp-qsim" > "$SITE/_int_fp_qsim.pth"
"$MAIN_PY" - "$ENV/int-fp-qsim/int_fp_qsim" <<'PY'
import pathlib
import sys

pkg = pathlib.Path(sys.argv[1])


def patch(name, old, new):
    path = pkg / name
    text = path.read_text()
    if text.count(old) != 1:
        sys.exit(f"compat_golden/setup.sh: patch target not found once in {name}: {old!r}")
    path.write_text(text.replace(old, new))


# 1. graphormer is gone from transformers 5
patch("replace.py", "import transformers.models.graphormer.modeling_graphormer as gp\n",
      "try:\n    import transformers.models.graphormer.modeling_graphormer as gp\nexcept ImportError:\n"
      "    gp = None\n")
patch("replace.py", "    gp.GraphormerMultiheadAttention: GraphormerMultiheadAttention,\n}\n",
      "}\nif gp is not None:\n    DEFAULT_MAPPING[gp.GraphormerMultiheadAttention] = GraphormerMultiheadAttention\n")
# 2. maskformer's DetrAttention is gone too
patch("attention.py", "class DetrAttention(mf.DetrAttention, QuantMixin):",
      "class DetrAttention(getattr(mf, \"DetrAttention\", torch.nn.Module), QuantMixin):")
patch("replace.py", "    mf.DetrAttention: DetrAttention,\n", "")
patch("replace.py", "}\nif gp is not None:",
      "}\nif hasattr(mf, \"DetrAttention\"):\n    DEFAULT_MAPPING[mf.DetrAttention] = DetrAttention\nif gp is not None:")
# 3. torch 2's TransformerEncoderLayer passes is_causal= to self_attn
patch("attention.py", "        average_attn_weights=True,\n    ):\n        # Based on Pytorch MultiheadAttention",
      "        average_attn_weights=True,\n        is_causal=False,\n    ):\n        # Based on Pytorch MultiheadAttention")
PY

"$ENV/bin/python" - <<'PY'
import torch
import int_fp_qsim.replace  # noqa: F401
import pytorch_quantization  # noqa: F401

assert "/.venv-intfpqsim/" not in torch.__file__, "a second torch was installed"
assert pytorch_quantization.__version__ == "2.1.3", pytorch_quantization.__version__
PY
echo "$WANT" > "$STAMP"
echo "compat_golden/setup.sh: $ENV ready (INT-FP-QSim from $REF, pytorch-quantization 2.1.3)"
