"""The README's snippets run as written: every ```python block is executed (in order, in a namespace holding the
obvious definitions it assumes: a tiny ``model``, ``x``, a ``loader``, stand-in attention classes), the TOML
block is loaded as a config and resolved against the model it names, and the command lines on
``examples/small_cnn.py`` run and exit 0. A snippet that stops working fails here, naming its line."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

import qsim_hooks as qh
from qsim_hooks import cli

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def blocks(lang: str) -> list[tuple[int, str]]:
    """(first line number, code) of every fenced ``lang`` block of the README."""
    out, lines = [], README.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        if lines[i].strip() == f"```{lang}":
            j = lines.index("```", i + 1)
            out.append((i + 2, "\n".join(lines[i + 1:j])))
            i = j
        i += 1
    return out


class OPTAttention(nn.Module):  # stand-ins for the classes the attention snippet names
    pass


class MyAttention(nn.Module):
    pass


def _namespace() -> dict:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 5)).eval()
    g = torch.Generator().manual_seed(1)
    loader = [torch.randn(2, 3, 8, 8, generator=g) for _ in range(3)]
    return {"model": model, "x": loader[0], "loader": loader, "OPTAttention": OPTAttention,
            "MyAttention": MyAttention, "torch": torch, "qh": qh,
            "cfg": qh.QuantConfig(input="int8", weight="int8", output="fp16")}  # the config of the text above


#: what makes a snippet tiny (the README's figures stay as they are): resnet18 on 2 images of 64 pixels
SMALLER = {"torch.randn(8, 3, 224, 224)": "torch.randn(2, 3, 64, 64)"}


def test_the_readme_has_the_snippets_this_test_knows():
    assert len(blocks("python")) >= 5 and len(blocks("toml")) >= 1 and len(blocks("bash")) >= 2


@pytest.mark.parametrize("line, code", blocks("python"), ids=[f"line{n}" for n, _ in blocks("python")])
def test_python_snippet_runs(line, code, tmp_path, monkeypatch, eager_kernels):
    if "fully_shard" in code:
        # needs a process group on every rank: tests/distributed/test_fsdp.py runs this QAT loop under FSDP2 on
        # 2 and 4 gloo processes; here only that it is valid Python and uses what that test runs
        compile(code, f"README.md:{line}", "exec")
        dist_test = (ROOT / "tests" / "distributed" / "test_fsdp.py").read_text()
        assert "fully_shard" in dist_test and "qh.quantized" in dist_test and "backward" in dist_test
        return
    if "torchvision" in code:
        pytest.importorskip("torchvision")  # the [vision] extra (installed with [dev])
    for a, b in SMALLER.items():
        code = code.replace(a, b)
    monkeypatch.chdir(tmp_path)  # snippets that save files save them here
    ns = _namespace()
    exec(compile(code, f"README.md:{line}", "exec"), ns)
    # every snippet gives the model back as it was (a with-block left, attach detached, compat detached)
    assert not any(parametrize.is_parametrized(m) or m._forward_hooks or m._forward_pre_hooks
                   for m in ns["model"].modules())


def test_the_toml_snippet_is_a_config_for_resnet18(tmp_path):
    tv = pytest.importorskip("torchvision")
    (line, text), = blocks("toml")
    path = tmp_path / "cfg.toml"
    path.write_text(text)
    cfg = qh.QuantConfig.load(path)
    assert cfg == qh.QuantConfig(input="int8", weight="int4", rules=(qh.Rule(match="layer4.*", weight="e4m3"),
                                                                        qh.Rule(match="fc", enabled=False)))
    entries = {(e.module, e.point): e for e in qh.plan(tv.models.resnet18(), cfg).entries}
    assert entries[("layer4.0.conv1", "weight")].format.name == "e4m3"
    assert ("fc", "weight") not in entries or entries[("fc", "weight")].format is None


def _commands() -> list[list[str]]:
    out = []
    for _, code in blocks("bash"):
        for ln in code.splitlines():
            ln = ln.split("#")[0].strip()
            if ln.startswith("qsim-hooks ") and "small_cnn" in ln:
                out.append(shlex.split(ln)[1:])
    return out


@pytest.mark.parametrize("argv", _commands(), ids=lambda a: a[0])
def test_the_command_lines_on_the_small_cnn_run(argv, tmp_path, monkeypatch, capsys):
    if "--plot" in argv:
        pytest.importorskip("matplotlib")
    monkeypatch.setenv("QSIM_HOOKS_BACKEND", "eager")
    monkeypatch.chdir(tmp_path)
    argv = [str(ROOT / a) if re.fullmatch(r"examples/\S+\.py", a) else a for a in argv]
    assert cli.main([*argv, "--no-progress"]) == 0
    assert capsys.readouterr().out
