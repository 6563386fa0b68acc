"""Run INT-FP-QSim's attention replacements on tiny modules and write their outputs as golden data.

Usage (by hand, when the data must change; the old tool is never installed in CI)::

    tools/compat_golden/setup.sh
    .venv-intfpqsim/bin/python tools/compat_golden/make_attention_golden.py

Writes ``tests/compat/golden/attention.pt``: for each module of ``tests.compat.models.attention_modules()``
(the old default mapping's attention classes that transformers 5 / diffusers still have and the old
replacement runs on; seeds in that function), its inputs, a weight fingerprint, the fp32 output and the
output after the old ``replace_layers(module, qi, qw, qo)`` for E4M3/E4M3/FP16, INT8/INT8/FP16 and
E2M1/E2M1/FP16, plus the environment (torch version, ATen CPU capability; one thread). The old
``nn.MultiheadAttention`` and ``BertSelfAttention`` outputs are in ``models.pt`` (make_golden.py).
"""

from __future__ import annotations

import pathlib
import sys

import torch

try:
    from int_fp_qsim import formats as old
    from int_fp_qsim.replace import replace_layers
except ImportError as exc:  # pragma: no cover - a usage error
    sys.exit(f"make_attention_golden.py needs the old tool: run tools/compat_golden/setup.sh, then "
             f".venv-intfpqsim/bin/python {sys.argv[0]} ({exc})")

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from tests.compat.models import attention_modules, fingerprint  # noqa: E402  (plain torch, shared with the tests)

assert "qsim_hooks" not in sys.modules, "the oracle must not import qsim_hooks"
CONFIGS = ("E4M3/E4M3/FP16", "INT8/INT8/FP16", "E2M1/E2M1/FP16")


def _first(y):
    return y[0] if isinstance(y, tuple) else y


def main() -> None:
    torch.set_num_threads(1)
    data: dict = {"environment": {"torch": str(torch.__version__),
                                  "cpu_capability": torch.backends.cpu.get_cpu_capability(), "threads": 1},
                  "configs": list(CONFIGS), "modules": {}}
    names = list(attention_modules())
    for name in names:
        m, kw = attention_modules()[name]
        entry = {"inputs": kw, "fingerprint": fingerprint(m)}
        with torch.no_grad():
            entry["fp32"] = _first(m(**kw))
            for cfg in CONFIGS:
                mod, kw = attention_modules()[name]
                q = replace_layers(mod, *(getattr(old, n) for n in cfg.split("/")))
                entry[cfg] = _first(q(**kw))
        data["modules"][name] = entry
    out = ROOT / "tests" / "compat" / "golden" / "attention.pt"
    torch.save(data, out)
    print(f"wrote {out} ({out.stat().st_size} bytes): {', '.join(names)}")


if __name__ == "__main__":
    main()
