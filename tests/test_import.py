"""``import qsim_hooks`` compiles nothing and imports none of its optional dependencies nor any model library.

qtorch builds a C++ extension when imported, so it must only be imported when
a qtorch object is actually used; torchvision (the [vision] extra), matplotlib
(the [plot] extra) and the model libraries are imported only by the function
that needs them. Checked in a fresh interpreter, where ``sys.modules`` shows
exactly what the import pulled in.
"""

from __future__ import annotations

import json
import subprocess
import sys

FORBIDDEN = ("qtorch", "transformers", "diffusers", "accelerate", "torchvision", "matplotlib", "sklearn",
             "torch.utils.cpp_extension", "torch._inductor")


def _modules_after(code: str) -> list[str]:
    script = f"import sys, json\n{code}\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=120)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _loaded(mods: list[str], prefix: str) -> list[str]:
    return [m for m in mods if m == prefix or m.startswith(prefix + ".")]


def test_import_pulls_in_no_qtorch_and_no_model_library() -> None:
    mods = _modules_after("import qsim_hooks\nimport qsim_hooks.formats\nimport qsim_hooks.compat\n"
                          "import qsim_hooks.cli, qsim_hooks.plots")
    assert {"qsim_hooks", "qsim_hooks.compat", "qsim_hooks.cli", "qsim_hooks.plots"} <= set(mods)
    for name in FORBIDDEN:
        assert not _loaded(mods, name), f"import qsim_hooks imported {_loaded(mods, name)}"


def test_using_formats_does_not_import_qtorch() -> None:
    code = ("import torch, qsim_hooks\n"
            "from qsim_hooks.formats import get, names\n"
            "[get(n) for n in names()]\n"
            "get('e4m3')(torch.randn(8)); get('int8')(torch.randn(8))\n"
            "from qsim_hooks.compat import INT8, E2M1\n"
            "INT8(torch.randn(8)); E2M1(torch.randn(8))")
    mods = _modules_after(code)
    assert not _loaded(mods, "qtorch")

