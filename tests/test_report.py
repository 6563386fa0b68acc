"""The per-point report: ordering, filtering, rendering of a session's statistics."""

import io

import pytest
import torch
from rich.console import Console
from torch import nn

import qsim_hooks as qh
from qsim_hooks import report


def _session_rows():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    with qh.quantized(m, qh.QuantConfig(input="int8", weight="int2", output="fp16"), stats=True) as qs:
        m(torch.randn(16, 8))
    return qs, qs.stats()


def test_sort_by_worst_sqnr_and_top():
    _, rows = _session_rows()
    worst = report.select_stats(rows, sort="sqnr", top=2)
    assert [r["point"] for r in worst] == ["weight", "weight"]  # int2 weights are the worst points
    assert worst[0]["sqnr_db"] <= worst[1]["sqnr_db"] <= min(r["sqnr_db"] for r in rows if r["point"] != "weight")
    only_inputs = report.select_stats(rows, point="input")
    assert {r["point"] for r in only_inputs} == {"input"} and len(only_inputs) == 2
    with pytest.raises(ValueError, match="sort="):
        report.select_stats(rows, sort="best")
    with pytest.raises(ValueError, match="top="):
        report.select_stats(rows, top=0)


def test_report_renders_every_row_with_its_figures():
    qs, rows = _session_rows()
    buf = io.StringIO()
    qs.report(console=Console(file=buf, width=200))
    text = buf.getvalue()
    for r in rows:
        assert r["format"] in text
        assert f"{r['sqnr_db']:.2f}" in text
    assert text.count("\n") >= len(rows) + 3


def test_report_without_stats_says_how_to_get_them():
    m = nn.Linear(4, 4)
    with qh.quantized(m, weight="int8") as qs:
        m(torch.randn(2, 4))
    buf = io.StringIO()
    qs.report(console=Console(file=buf, width=200))
    assert "stats=True" in buf.getvalue()


def test_stats_export_json_and_csv_parse():
    import csv
    import json

    _, rows = _session_rows()
    data = json.loads(report.to_json(rows))
    assert [d["module"] for d in data] == [r["module"] for r in rows]
    parsed = list(csv.DictReader(io.StringIO(report.to_csv(rows, ["module", "point", "sqnr_db", "calls"]))))
    assert float(parsed[0]["sqnr_db"]) == pytest.approx(rows[0]["sqnr_db"])
