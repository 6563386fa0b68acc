"""The accumulator axis of ``qh.sweep`` and the command line's ``--accumulator`` / ``--accumulators``."""

from __future__ import annotations

import json
import textwrap

import pytest
import torch
from torch import nn

import qsim_hooks as qh
from qsim_hooks import cli

MODEL = textwrap.dedent('''
    import torch
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 8)).eval()
    batches = [torch.randn(16, 64, generator=torch.Generator().manual_seed(1)) * 50]
''')


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 8)).eval(), torch.randn(16, 64) * 50


def test_sweep_runs_each_format_once_per_accumulator():
    m, x = _mlp()
    rows = qh.sweep(m, None, ["e4m3", "int8"], x, accumulators=[None, "fp16", qh.Accumulator("bf16", chunk=8)])
    assert [(r["format"], r["accumulator"]) for r in rows] == [
        (f, a) for f in ("e4m3", "int8") for a in ("exact", "fp16", "bf16-c8>fp32")]
    plain = qh.sweep(m, None, ["e4m3", "int8"], x)
    assert "accumulator" not in plain[0]
    assert rows[0]["output_sqnr_db"] == plain[0]["output_sqnr_db"]  # exact sums: the sweep without the axis
    by = {(r["format"], r["accumulator"]): r["output_sqnr_db"] for r in rows}
    assert by["e4m3", "bf16-c8>fp32"] < by["e4m3", "exact"]  # bf16 sums cost SQNR on top of e4m3 operands
    assert "accumulator" in str(rows.table().columns[2].header)


def test_sweep_over_accumulators_alone_keeps_the_configs_formats():
    m, x = _mlp()
    rows = qh.sweep(m, qh.QuantConfig(weight="e4m3"), [], x, accumulators=["fp32", "bf16"])
    assert [(r["format"], r["accumulator"]) for r in rows] == [("config", "fp32"), ("config", "bf16")]
    assert rows[1]["output_sqnr_db"] < rows[0]["output_sqnr_db"]


@pytest.mark.parametrize("accs,match", [(["fp17"], r"accumulators\[0\]"), ("fp16", "non-empty list"),
                                        ([], "non-empty list")])
def test_sweep_bad_accumulators_are_named(accs, match):
    m, x = _mlp()
    with pytest.raises(ValueError, match=match):
        qh.sweep(m, None, ["e4m3"], x, accumulators=accs)


def test_cli_sweep_accumulators_and_report_accumulator(tmp_path, capsys):
    f = tmp_path / "mlp.py"
    f.write_text(MODEL)
    assert cli.main(["sweep", "--model", str(f), "--formats", "e4m3", "--accumulators", "none,bf16,hopper_fp8",
                     "--json", "--no-progress"]) == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert [r["accumulator"] for r in rows] == ["exact", "bf16", "hopper-fp8-promote128"]
    assert rows[1]["output_sqnr_db"] != rows[0]["output_sqnr_db"]  # the sums changed the output
    assert cli.main(["report", "--model", str(f), "--accumulator", "bf16", "--json", "--no-progress"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert "bf16" in json.dumps(data["config"])
    with pytest.raises(SystemExit) as exc:
        cli.main(["sweep", "--model", str(f), "--accumulators", "fp16,fp17"])
    assert exc.value.code == 2 and "fp17" in capsys.readouterr().err
