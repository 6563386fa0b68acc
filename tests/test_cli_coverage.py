"""``qsim-hooks report`` prints the session's coverage line and puts the summary in its JSON (issue 11).

The expected counts are worked out from the model file by hand: three Linears, two batches, so six GEMM
calls; a rule turning ``fc3`` off leaves its two calls not simulated.
"""

import json
import textwrap

import pytest

from qsim_hooks import cli, formats

MODEL = textwrap.dedent('''
    import torch
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential()
    model.add_module("fc1", nn.Linear(16, 32))
    model.add_module("act", nn.ReLU())
    model.add_module("fc2", nn.Linear(32, 32))
    model.add_module("fc3", nn.Linear(32, 10))
    model = model.eval()
    _gen = torch.Generator().manual_seed(0)
    batches = [torch.randn(8, 16, generator=_gen) for _ in range(2)]
''')
CONFIG = textwrap.dedent('''
    input = "int8"
    weight = "int8"

    [[rules]]
    match = "fc3"
    enabled = false
    name = "head"
''')


@pytest.fixture
def files(tmp_path):
    (tmp_path / "three.py").write_text(MODEL)
    (tmp_path / "cfg.toml").write_text(CONFIG)
    before = formats.get_backend()
    formats.set_backend("eager")
    yield tmp_path
    formats.set_backend(before)


def test_report_prints_the_coverage_line(files, capsys):
    assert cli.main(["report", "--model", str(files / "three.py"), "--config", str(files / "cfg.toml")]) == 0
    out = capsys.readouterr().out
    (line,) = [ln for ln in out.splitlines() if ln.startswith("coverage: ")]
    assert line.startswith("coverage: 6 GEMMs: 4 fully simulated, 2 not: fc3 (")
    assert "weight: off by head" in line and "against the config" not in line


def test_report_json_carries_the_coverage_summary(files, capsys):
    argv = ["report", "--model", str(files / "three.py"), "--input", "int8", "--weight", "int8", "--json"]
    assert cli.main(argv) == 0
    cov = json.loads(capsys.readouterr().out)["summary"]["coverage"]
    assert (cov["gemms"], cov["simulated"], cov["not_simulated"], cov["against_config"]) == (6, 6, 0, 0)
    assert cov["fraction"] == 1.0 and cov["missing"] == [] and cov["never_fired"] == []


def test_report_coverage_table_on_request(files, capsys):
    argv = ["report", "--model", str(files / "three.py"), "--config", str(files / "cfg.toml")]
    assert cli.main(argv) == 0
    assert "GEMM coverage" not in capsys.readouterr().out
    assert cli.main([*argv, "--coverage"]) == 0
    out = capsys.readouterr().out
    table = out[out.index("GEMM coverage"):]
    lines = {ln.split()[0]: ln for ln in table.splitlines()[1:] if ln.startswith("fc")}
    assert sorted(lines) == ["fc1", "fc2", "fc3"] and "not simulated" in lines["fc3"]
    assert "fc1[input]" in lines["fc1"] and "fc1.weight" in lines["fc1"]
    assert cli.main([*argv, "--coverage", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["coverage"]
    assert [(r["module"], r["calls"], r["status"]) for r in rows] == [
        ("fc1", 2, "simulated"), ("fc2", 2, "simulated"), ("fc3", 2, "not simulated")]
