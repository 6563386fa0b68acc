"""``qsim-hooks report`` prints the session's coverage line and puts the summary in its JSON (issue 11).

The expected counts are worked out from the model file by hand (``tests/test_cli_report.py``'s Fragile
model): three Linears, two batches, so six GEMM calls; its config's rule turning ``fc3`` off leaves its
two calls not simulated.
"""

import json

import pytest

from qsim_hooks import cli, formats
from tests.test_cli_report import files as report_files  # noqa: F401  (the model file and its config)


@pytest.fixture
def files(report_files):  # noqa: F811
    before = formats.get_backend()
    formats.set_backend("eager")
    yield {"model": str(report_files / "fragile.py"), "config": str(report_files / "cfg.toml")}
    formats.set_backend(before)


def test_report_prints_the_coverage_line(files, capsys):
    assert cli.main(["report", "--model", files["model"], "--config", files["config"]]) == 0
    out = " ".join(capsys.readouterr().out.split())  # the console wraps long lines at its width
    line = out[out.index("coverage: "):]
    assert line.startswith("coverage: 6 GEMMs: 4 fully simulated, 2 not: fc3 (")
    assert "weight: off by rule 'fc3-full-precision')" in line and "against the config" not in line


def test_report_json_carries_the_coverage_summary(files, capsys):
    argv = ["report", "--model", files["model"], "--input", "int8", "--weight", "int8", "--json"]
    assert cli.main(argv) == 0
    cov = json.loads(capsys.readouterr().out)["summary"]["coverage"]
    assert (cov["gemms"], cov["simulated"], cov["not_simulated"], cov["against_config"]) == (6, 6, 0, 0)
    assert cov["fraction"] == 1.0 and cov["missing"] == [] and cov["never_fired"] == []


def test_report_coverage_table_on_request(files, capsys):
    argv = ["report", "--model", files["model"], "--config", files["config"]]
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


def test_a_comparison_renders_its_coverage_line_and_table_on_request():
    import io

    import torch
    from rich.console import Console
    from torch import nn

    import qsim_hooks as qh

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)).eval()
    cfg = qh.QuantConfig(input="int8", weight="int8", rules=[qh.Rule("2", enabled=False)])
    r = qh.compare(net, cfg, torch.randn(3, 4))
    assert (r.coverage.gemms, r.coverage.simulated) == (2, 1) and len(r.coverage_rows) == 2
    assert "coverage_rows" not in r.as_dict(stats=False) and r.as_dict()["coverage"]["fraction"] == 0.5
    for table in (False, True):
        buf = io.StringIO()
        r.render(Console(file=buf, width=160), coverage=table)
        text = buf.getvalue()
        assert "coverage: 2 GEMMs: 1 fully simulated, 1 not: 2 (activation: off by rule[0]; weight: off by rule[0])" \
            in text and ("GEMM coverage" in text) == table
