"""What the REPL and a notebook show, and result APIs that need no guessing: short reprs, ``__rich__`` and
``_repr_html_`` for every result; sweep and sensitivity results that are still lists of rows but also render
and export; capture results keyed by the strings ``points=`` takes; ``qs.stats(sort=, top=)``."""

import io
import json
import sys

import pytest
import torch
from rich.console import Console
from torch import nn

import qsim_hooks as qh
from qsim_hooks import report


@pytest.fixture(autouse=True)
def _eager(eager_kernels):
    yield


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)).eval()


X = torch.randn(6, 8, generator=torch.Generator().manual_seed(2))
CFG = qh.QuantConfig(input="int8", weight="int4", output="fp16", rules=[qh.Rule(match="2", weight="e4m3")])


def _console(width=100):
    buf = io.StringIO()
    return Console(file=buf, width=width), buf


def test_sweep_result_is_still_a_list_and_renders_and_exports():
    r = qh.sweep(_net(), CFG, ["int8", "e4m3", "int4"], X, progress=False)
    assert isinstance(r, qh.SweepResult) and isinstance(r, list) and len(r) == 3
    assert [row["format"] for row in r] == ["int8", "e4m3", "int4"] and r[0]["roles"] == "input,weight"
    assert r.rows == list(r) and type(r.rows) is list and r[:2] == r.rows[:2]
    assert json.loads(json.dumps(r)) == json.loads(json.dumps(r.rows))
    df = r.to_pandas()
    assert list(df["format"]) == ["int8", "e4m3", "int4"]
    assert list(df["output_sqnr_db"]) == [row["output_sqnr_db"] for row in r]
    con, buf = _console()
    assert r.render(con) is None
    assert "int4" in buf.getvalue() and "Output SQNR per format" in buf.getvalue()
    text = repr(r)
    assert text.startswith("<qsim_hooks.SweepResult: 3 formats on input,weight: int8 ") and len(text) < 200
    assert "<table>" in r._repr_html_() and "e4m3" in r._repr_html_()
    con, buf = _console()
    con.print(r)  # __rich__: the table
    assert "max" in buf.getvalue() and "int8" in buf.getvalue()


def test_sensitivity_result():
    r = qh.sensitivity(_net(), CFG, X, progress=False)
    assert isinstance(r, qh.SensitivityResult) and [row["rank"] for row in r] == [1, 2]
    assert r[0]["output_sqnr_db"] <= r[1]["output_sqnr_db"] and r[0]["metric"] is None
    assert "2 units ranked (one); first: " in repr(r) and len(repr(r)) < 160
    assert list(r.to_pandas()["layer"]) == [row["layer"] for row in r]
    con, buf = _console()
    r.render(con)
    assert "Sensitivity: one layer quantized at a time" in buf.getvalue()
    metric = lambda m, batches: float(m(batches[0]).detach().abs().mean())  # noqa: E731
    with_metric = qh.sensitivity(_net(), CFG, X, metric=metric, progress=False)
    full = metric(_net(), [X])
    assert all(row["metric_full"] == pytest.approx(full) and row["metric"] is not None for row in with_metric)
    con, buf = _console()
    with_metric.render(con)
    assert "metric in full precision" in buf.getvalue()


def test_to_pandas_without_pandas_says_how_to_install(monkeypatch):
    r = qh.sweep(_net(), CFG, ["int8"], X, progress=False)
    monkeypatch.setitem(sys.modules, "pandas", None)
    with pytest.raises(ImportError, match="pip install pandas"):
        r.to_pandas()


def test_capture_takes_the_strings_it_was_given():
    cap = qh.capture(_net(), CFG, X, points=["0:input", "2:weight", "2"])
    assert isinstance(cap, qh.Captures) and list(cap) == [("0", "input", "input"), ("2", "weight", "weight"),
                                                          ("2", "input", "input"), ("2", "output", "output")]
    assert cap["0:input"] is cap[("0", "input", "input")] and cap["2:weight"].point == "weight"
    assert cap[("2", "output")].name == "2:output"
    assert "2:weight" in cap and "0:weight" not in cap and cap.get("9:input") is None
    with pytest.raises(KeyError, match="names 3 captured points"):
        cap["2"]
    with pytest.raises(KeyError, match="is not a quantization point"):
        cap["nope:input"]
    assert torch.equal(cap["0:input"].data, X.flatten())
    assert repr(cap).startswith("<qsim_hooks.Captures: 4 points: 0:input (48 values)")


def test_stats_sort_and_top():
    m = _net()
    with torch.no_grad(), qh.quantized(m, CFG, stats=True) as qs:
        m(X)
    rows = qs.stats()
    worst = qs.stats(sort="sqnr", top=2)
    assert worst == [dict(r) for r in report.select_stats(rows, sort="sqnr", top=2)] and len(worst) == 2
    assert worst[0]["sqnr_db"] == min(r["sqnr_db"] for r in rows)
    assert [r["point"] for r in qs.stats(point="weight")] == ["weight", "weight"]


def test_reprs_are_short_and_nothing_echoes_by_accident():
    m = _net()
    with torch.no_grad(), qh.quantized(m, CFG, stats=True) as qs:
        m(X)
    con, buf = _console()
    assert qs.report(console=con) is None  # the REPL echoes nothing after the table
    assert "Quantization points" in buf.getvalue()
    res = qh.compare(m, CFG, X)
    text = repr(res)
    assert text.startswith("<qsim_hooks.Comparison: output SQNR ") and "6 points>" in text and len(text) < 200
    assert "stats" not in text and "signal_power" not in text
    html = res._repr_html_()
    assert "Simulated vs full precision" in html and "<table>" in html
    con, buf = _console()
    con.print(res)
    assert "output SQNR" in buf.getvalue() and "Quantization points" in buf.getvalue()
    p = qh.plan(m, CFG)
    assert repr(p) == "<qsim_hooks.Plan: 6 points on 2 modules, 6 quantized: int8 x2, int4 x1, fp16 x2, e4m3 x1>"
    assert "<table>" in p._repr_html_() and "decided_by" in p._repr_html_()
    con, buf = _console()
    con.print(p)
    assert "rule[0]" in buf.getvalue()
    text = repr(CFG)
    assert text == "QuantConfig(input int8, weight int4, output fp16; rule[0] match '2': weight e4m3)"
    assert "<pre>QuantConfig" in CFG._repr_html_()
    con, buf = _console()
    con.print(CFG)
    assert "rule[0] match '2': weight e4m3" in buf.getvalue()
    assert repr(qs) == "<qsim_hooks.Session detached: 6 points on Sequential>"
    assert "<table>" in qs._repr_html_()
    assert repr(qh.Rule(types=nn.Linear, weight_scaling="channel")) == "Rule(types=Linear, weight_scaling='channel')"


def test_a_long_config_repr_stays_one_line():
    cfg = qh.QuantConfig(input="int8", rules=[qh.Rule(match=f"layer{i}.*", weight="int4") for i in range(6)])
    text = repr(cfg)
    assert "\n" not in text and text.endswith(" ...)") and text.count("rule[") == 3
