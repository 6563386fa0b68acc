"""The README's snippets run as written: every ```python block is executed (in order, in a namespace holding the
obvious definitions it assumes: a tiny ``model``, ``x``, a ``loader``, stand-in attention classes), the TOML
block is loaded as a config and resolved against the model it names, and the command lines on
``examples/small_cnn.py`` run and exit 0. A snippet that stops working fails here, naming its line.

And the rules a snippet writes do what it says: no rule is overridden by a later one so that it decides
nothing in the plan it runs (the last matching rule wins, field by field: a ``match="*"`` rule after a
specific one undoes it); the attention snippet's rules are checked point by point and in a session."""

from __future__ import annotations

import math
import re
import shlex
import sys
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


class _Attention(nn.Module):
    """Q·Kᵀ -> softmax -> P·V on its input, the shape every attention point needs."""

    def forward(self, x):
        return torch.softmax(x @ x.transpose(-1, -2), dim=-1) @ x


class OPTAttention(_Attention):  # stand-ins for the classes the attention snippet names
    pass


class MyAttention(_Attention):  # a name the default attention pattern does not match
    pass


class SelfAttention(_Attention):  # matched by the default pattern: neither rule names it
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


def _labels(decided_by: str) -> set[str]:
    """The sources in a plan entry's ``decided_by`` (``"cfg+rule[1]"``, ``"rule[0](input)"``)."""
    return {re.sub(r"\(.*\)$", "", part) for part in decided_by.split("+")}


def shadowed(model: nn.Module, cfg: qh.QuantConfig, plan: qh.Plan) -> list[str]:
    """The rules of ``cfg`` that decide nothing in ``plan``: every field they set is overridden by a later rule
    (or they match only modules a later rule switches off). A rule that only marks attention modules decides
    when a module it matches has attention points; one that only sets an accumulator is not judged here."""
    named = dict(model.named_modules())
    decided = set().union(*(_labels(e.decided_by) for e in plan)) if len(plan) else set()
    attention = {e.module for e in plan if e.kind == "attention"}
    out = []
    for i, r in enumerate(cfg.rules):
        label = r.name or f"rule[{i}]"
        fields = {f for f, _ in r.set_fields()} - {"match", "types", "name"}
        if label in decided or fields <= {"accumulator"}:
            continue
        if fields == {"attention"} and any(r.matches(n, named[n]) for n in attention):
            continue
        out.append(f"{label} ({r.describe()})")
    return out


@pytest.fixture
def planned(monkeypatch):
    """Every (model, cfg, plan) the code under test resolved (``qh.plan``, ``qh.quantized``, ``qh.attach``), and
    the ids of the rules the README's own code wrote (not those a library function builds, as compat does)."""
    from qsim_hooks import session

    seen: list = []
    written: set[int] = set()
    real, real_init = session.resolve_functional, qh.Rule.__post_init__

    def recording(model, cfg):
        out = real(model, cfg)
        seen.append((model, cfg, out[0]))
        return out

    def noting(rule):
        real_init(rule)
        if sys._getframe(2).f_code.co_filename.startswith("README.md:"):  # the frame that called Rule(...)
            written.add(id(rule))

    monkeypatch.setattr(session, "resolve_functional", recording)
    monkeypatch.setattr(qh.Rule, "__post_init__", noting)
    return seen, written


@pytest.mark.parametrize("line, code", blocks("python"), ids=[f"line{n}" for n, _ in blocks("python")])
def test_python_snippet_runs(line, code, tmp_path, monkeypatch, eager_kernels, planned):
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
    # and no rule of a config it runs is overridden by a later one (the last matching rule wins, field by field)
    resolved, written = planned
    if "Rule(" in code and resolved:  # the rules the snippet writes are the ones judged (the check sees them)
        assert any(id(r) in written for _, cfg, _ in resolved for r in cfg.rules)
    for model, cfg, plan in resolved:
        if any(id(r) in written for r in cfg.rules):
            bad = shadowed(model, cfg, plan)
            assert not bad, f"README.md:{line}: rules deciding nothing: {bad}"


def test_the_attention_snippets_rules_each_apply():
    """``probs="bf16"`` reaches OPT's softmax output, the KV-cache rule every other attention module, and the
    marked class is instrumented: the plan says so, and a session quantizes the probabilities in bf16."""
    (line, code), = [(n, c) for n, c in blocks("python") if 'probs="bf16"' in c]
    cfg = eval(compile(code, f"README.md:{line}", "eval"), _namespace())
    model = nn.ModuleDict({"opt": OPTAttention(), "mine": MyAttention(), "other": SelfAttention()})
    model.forward = lambda x: sum(m(x) for m in model.values())  # an instance attribute: the class is untouched
    plan = qh.plan(model, cfg)
    got = {(e.module, e.point): (e.format_name, e.decided_by) for e in plan if e.kind == "attention"}
    assert got[("opt", "probs")] == ("bf16", "rule[1]")
    for m in ("opt", "mine", "other"):
        assert got[(m, "k")] == got[(m, "v")] == ("e4m3", "rule[0]")
        assert got[(m, "q")] == got[(m, "scores")] == got[(m, "context")] == ("-", "rule[0]")
    assert got[("mine", "probs")] == got[("other", "probs")] == ("-", "rule[0]")
    assert not shadowed(model, cfg, plan)
    x = torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), qh.quantized(model, cfg, stats=True) as qs:
        model(x)
    probs = {r["module"]: r for r in qs.stats() if r["point"] == "probs"}
    assert probs["opt"]["format"] == "bf16" and probs["opt"]["calls"] == 1
    k = x.to(torch.float8_e4m3fn).float()  # K in e4m3 (PyTorch's own cast), Q in full precision, as the plan says
    p = torch.softmax(x @ k.transpose(-1, -2), dim=-1)
    assert probs["opt"]["sqnr_db"] == pytest.approx(  # the noise of a bf16 cast of these very probabilities
        10 * math.log10(float((p ** 2).sum() / ((p - p.bfloat16().float()) ** 2).sum())), rel=1e-4)


def test_a_shadowed_rule_is_caught():
    """The check above on the snippet as it was: ``match="*"`` after the OPT rule set its probs back to None."""
    cfg = qh.QuantConfig(input="e4m3", rules=[qh.Rule(types=OPTAttention, probs="bf16"),
                                              qh.Rule(match="*", probs=None, k="e4m3")])
    model = nn.ModuleDict({"opt": OPTAttention()})
    assert shadowed(model, cfg, qh.plan(model, cfg)) == [f"rule[0] ({cfg.rules[0].describe()})"]


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


def test_the_first_screen_and_the_help_give_commands_that_parse():
    """What a newcomer sees first (the README's opening, up to the set-up section, and ``qsim-hooks --help``)
    shows a model being run; every such command is one the parser takes (the small-CNN one also runs above)."""
    lines = README.read_text(encoding="utf-8").splitlines()
    setup = next(i for i, ln in enumerate(lines) if ln.startswith("## Set-up"))
    assert setup <= 45  # one screen
    shown = [ln.split("#")[0].strip() for start, code in blocks("bash") if start < setup
             for ln in code.splitlines() if ln.startswith("qsim-hooks ")]
    shown += [ln.split("#")[0].strip() for ln in cli.EPILOG.splitlines() if ln.strip().startswith("qsim-hooks ")]
    runs = [ln for ln in shown if "--model" in ln]
    assert any("resnet18" in ln for ln in runs) and any("small_cnn" in ln for ln in runs)
    parser = cli.build_parser()
    for ln in shown:
        if ln.split()[1:] == ["--help"]:
            continue
        args = parser.parse_args(shlex.split(ln)[1:])
        assert args.command in cli.COMMANDS, ln


class _Parsed(Exception):
    pass


def _example_commands() -> list[list[str]]:
    text = (ROOT / "examples" / "README.md").read_text(encoding="utf-8").replace("\\\n", " ")
    return [ln.split("#")[0].split() for ln in text.splitlines()
            if re.match(r"(\.venv-tf457/bin/)?python examples/\S+\.py", ln.strip())]


@pytest.mark.parametrize("argv", _example_commands(), ids=lambda a: " ".join(a[1:3]))
def test_examples_readme_commands_parse(argv, monkeypatch):
    """examples/README.md's command lines (its other blocks are outputs, each under the command that printed it):
    the script exists and its own parser takes the line (parsing stops there: nothing is loaded or run)."""
    import argparse
    import importlib

    script = ROOT / argv[1]
    assert script.is_file(), argv[1]
    mod = importlib.import_module(".".join(script.relative_to(ROOT).with_suffix("").parts))

    def parsed(self, args=None, namespace=None):
        raise _Parsed(argparse.ArgumentParser.parse_known_args(self, args, namespace))

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parsed)
    with pytest.raises(_Parsed) as got:
        mod.main(argv[2:])
    ns, unknown = got.value.args[0]
    assert unknown == [], f"{argv[1]} does not take {unknown}"


def test_examples_readme_has_its_commands():
    assert len(_example_commands()) >= 16
