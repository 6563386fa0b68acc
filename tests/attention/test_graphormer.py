"""Graphormer's GraphormerMultiheadAttention, which only transformers <= 4.57 ships (transformers 5 removed it).

The check runs in ``.venv-tf457`` (tools/graphormer_env.sh, built by tools/bootstrap.sh: transformers 4.57
over the main .venv's torch) as a subprocess: tools/graphormer_check.py asserts the plan (a), identity
formats bit-identical to the un-instrumented model (b), every point fired (c), a real format changes the
result (d) and nothing left behind (e), and prints its measurements as JSON.
"""

import json
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PY = ROOT / ".venv-tf457" / "bin" / "python"


@pytest.mark.slow
@pytest.mark.skipif(not (ROOT / ".venv-tf457" / ".qsim-hooks-tf457").exists(),
                    reason=".venv-tf457 is not built: run tools/graphormer_env.sh (tools/test.sh does)")
def test_graphormer_attention_in_transformers_4_57():
    r = subprocess.run([str(PY), str(ROOT / "tools" / "graphormer_check.py")], cwd=ROOT, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-6000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert got["transformers"].startswith("4.57.")
    assert got["attention_modules"] == ["encoder.graph_encoder.layers.0.self_attn",
                                        "encoder.graph_encoder.layers.1.self_attn"]
    assert got["identity_bit_identical"] and got["full_e4m3_rel"] > 1e-3 and got["kv_e4m3_rel"] > 0
