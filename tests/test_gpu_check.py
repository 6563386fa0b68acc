"""tools/gpu_check.sh and its Python parts, in their CPU dry mode (the real run needs a CUDA device).

The dry run compares the kernels on the CPU with themselves through the same code the device run uses
(CPU eager against "device" eager and "fused" eager, stochastic rounding included), so a broken
comparison or a crashing format shows here before a GPU is lent.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
from pathlib import Path

import pytest

TOOLS = Path(__file__).resolve().parents[1] / "tools"


def _gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", TOOLS / "gpu_check.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_the_script_parses() -> None:
    subprocess.run(["bash", "-n", str(TOOLS / "gpu_check.sh")], check=True)


def test_dry_agreement_runs_every_family(capsys: pytest.CaptureFixture[str]) -> None:
    mod = _gpu_check()
    assert mod.main(["--dry", "--skip", "bandwidth,overhead"]) == 0
    out = capsys.readouterr().out
    names = [n for n, _ in mod._formats()]
    for family in ("e4m3", "int8 per tensor", "mxfp4", "nvfp4", "e4m3 stochastic"):
        assert family in names
    assert all(f"  {n} " in out for n in names) and "FAIL" not in out
    assert "all bit-identical" in out


def test_dry_figures_print(capsys: pytest.CaptureFixture[str]) -> None:
    mod = _gpu_check()
    mod.bandwidth(mod.torch.device("cpu"), 1 << 12, 1, "eager")
    out = capsys.readouterr().out
    assert all(name in out for name in ("e4m3", "int8", "mxfp4", "nvfp4")) and "of a copy" in out
