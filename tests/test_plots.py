"""Pictures: grid limits as data, the histogram and sweep PNGs, the error without matplotlib."""

import sys

import pytest
import torch
from torch import nn

import qsim_hooks as qh
from qsim_hooks import plots

PNG = b"\x89PNG\r\n\x1a\n"


def test_grid_limits_of_a_cast_and_of_scaled_formats():
    e4m3 = plots.grid_limits("e4m3")
    assert e4m3["max"] == 448.0 and e4m3["min_subnormal"] == 2.0**-9 and not e4m3["scaled"]
    int8 = plots.grid_limits("int8", data_amax=2.54)  # dynamic: the data's amax maps onto 127
    assert int8["max"] == 2.54 and int8["min_subnormal"] == pytest.approx(2.54 / 127) and int8["amax"] is None
    cal = plots.grid_limits("int8", amax=[1.0, 4.0], data_amax=9.0)  # static: the calibrated amax decides
    assert cal["max"] == 4.0 and cal["amax"] == 4.0 and cal["min_subnormal"] == pytest.approx(4.0 / 127)
    mx = plots.grid_limits("mxfp4", data_amax=6.0)
    assert mx["per_tensor_equivalent"] and mx["min_subnormal"] == pytest.approx(0.5)
    assert plots.grid_limits(None)["max"] is None


def test_histogram_of_a_captured_point_is_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    cap = qh.capture(m, qh.QuantConfig(input="int8", weight="e4m3"), torch.randn(32, 8), points=["0", "2:input"])
    assert len(cap) == 3
    for i, c in enumerate(cap.values()):
        out = plots.histogram(c, tmp_path / "sub" / f"{i}.png")
        assert out.read_bytes()[:8] == PNG
    raw = plots.histogram(torch.tensor([0.0, 1e-4, 3.0, 1000.0, float("nan")]), tmp_path / "raw.png", fmt="e4m3",
                          amax=100.0, title="a tensor")
    assert raw.read_bytes()[:8] == PNG
    empty = plots.histogram(torch.zeros(4), tmp_path / "zeros.png", fmt="int8")
    assert empty.read_bytes()[:8] == PNG


def test_sweep_plot_is_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    rows = [{"format": "fp32", "output_sqnr_db": float("inf"), "metric": 0.9, "metric_full": 0.9},
            {"format": "int8", "output_sqnr_db": 31.2, "metric": 0.88, "metric_full": 0.9},
            {"format": "int4", "output_sqnr_db": 9.5, "metric": 0.5, "metric_full": 0.9}]
    assert plots.sweep_plot(rows, tmp_path / "sweep.png").read_bytes()[:8] == PNG
    with pytest.raises(ValueError, match="no rows"):
        plots.sweep_plot([], tmp_path / "none.png")


def test_without_matplotlib_the_error_says_what_to_install(monkeypatch, tmp_path):
    for name in ("matplotlib", "matplotlib.figure", "matplotlib.backends", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(ImportError, match=r"qsim-hooks\[plot\]"):
        plots.histogram(torch.randn(10), tmp_path / "x.png", fmt="e4m3")
    assert not (tmp_path / "x.png").exists()
    assert plots.grid_limits("e4m3")["max"] == 448.0  # the data needs no matplotlib


# what goes into the figures (plain data, then the artists drawn from it), not pixels
# ---------------------------------------------------------------------------

def _captured(point_cfg, points, calibrated):
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4)).eval()
    x = torch.randn(64, 32)
    cal = qh.calibrate(m, point_cfg, [x], progress=False) if calibrated else None
    return {c.name: c for c in qh.capture(m, point_cfg, x, points=points, calibration=cal, progress=False).values()}


def test_a_calibrated_amax_that_is_the_grid_max_is_one_marker_not_two_lines_on_one_spot():
    cap = _captured(qh.QuantConfig(input="int8", weight="int8"), ["0"], calibrated=True)
    h = plots.histogram_data(cap["0:input"])
    amax = cap["0:input"].amax[0]
    assert [m.kind for m in h.markers] == ["max=amax", "min"]  # int8 maps the calibrated amax onto 127
    assert h.markers[0].x == pytest.approx(amax) and "calibrated amax" in h.markers[0].label
    assert h.markers[1].x == pytest.approx(amax / 127)
    # a cast keeps its own max: the calibrated amax is a line of its own, at its own place
    cast = plots.histogram_data(torch.linspace(-3, 3, 101), fmt="e4m3", amax=2.5)
    assert [(m.kind, m.x) for m in cast.markers] == [("max", 448.0), ("min", 2.0**-9), ("amax", 2.5)]
    # dynamic: no calibrated amax at all
    dyn = plots.histogram_data(torch.linspace(-3, 3, 101), fmt="int8")
    assert [m.kind for m in dyn.markers] == ["max", "min"] and dyn.markers[0].x == 3.0


def test_weights_get_linear_bins_by_default_activations_log_bins():
    cap = _captured(qh.QuantConfig(input="int8", weight="int8"), ["0"], calibrated=False)
    w, a = plots.histogram_data(cap["0:weight"]), plots.histogram_data(cap["0:input"])
    assert (w.scale, a.scale) == ("linear", "log")
    assert w.edges[0] == 0.0 and w.edges[-1] == pytest.approx(float(cap["0:weight"].data.abs().max()))
    assert a.edges[0] == pytest.approx(float(cap["0:input"].data.abs().min()))
    assert plots.histogram_data(cap["0:weight"], scale="log").scale == "log"  # asked for: given
    with pytest.raises(ValueError, match="scale='ln'"):
        plots.histogram_data(cap["0:weight"], scale="ln")


def test_uniform_values_are_flat_on_linear_bins_and_a_ramp_on_log_bins():
    u = torch.rand(200_000, generator=torch.Generator().manual_seed(0)) * 2 - 1  # |u| uniform on [0, 1)
    lin = plots.histogram_data(u, bins=10, scale="linear")
    assert max(lin.counts) / min(lin.counts) < 1.1 and sum(lin.counts) == 200_000
    log = plots.histogram_data(u, bins=10, scale="log")  # a log bin's count grows with its width, ~10x a decade
    assert log.counts[-1] > 50 * log.counts[3]


def test_on_linear_axes_a_limit_far_beyond_the_data_is_named_not_drawn():
    w = torch.linspace(-0.1, 0.1, 201)
    h = plots.histogram_data(w, fmt="e4m3", scale="linear")
    assert h.xlim == (0.0, pytest.approx(0.103))
    assert {m.kind: m.on_axis for m in h.markers} == {"max": False, "min": True}
    pytest.importorskip("matplotlib")
    fig = plots._histogram_figure(h)
    ax = fig.axes[0]
    drawn = [ln for ln in ax.lines if len(ln.get_xdata()) == 2 and ln.get_xdata()[0] == ln.get_xdata()[1]]
    assert [float(ln.get_xdata()[0]) for ln in drawn] == [2.0**-9]  # only the limit inside the axis
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any("grid max 448" in t and "beyond the axis" in t for t in legend)
    assert ax.get_xscale() == "linear" and ax.get_xlim() == pytest.approx(h.xlim)


def test_the_merged_marker_is_the_only_line_at_the_calibrated_amax():
    pytest.importorskip("matplotlib")
    cap = _captured(qh.QuantConfig(input="int8", weight="int8"), ["0:input"], calibrated=True)
    h = plots.histogram_data(cap["0:input"])
    ax = plots._histogram_figure(h).axes[0]
    xs = [float(ln.get_xdata()[0]) for ln in ax.lines if len(ln.get_xdata()) == 2]
    assert xs.count(pytest.approx(cap["0:input"].amax[0])) == 1 and len(xs) == 2
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"


def test_the_sweep_chart_draws_bars_and_unconnected_markers_in_the_rows_order():
    rows = [{"format": "int8", "output_sqnr_db": 31.2, "metric": 0.88, "metric_full": 0.9},
            {"format": "fp16", "output_sqnr_db": float("inf"), "metric": 0.9, "metric_full": 0.9},
            {"format": "int4", "output_sqnr_db": None, "metric": None, "metric_full": 0.9}]
    d = plots.sweep_data(rows)
    assert d.formats == ("int8", "fp16", "int4") and d.labels == ("31.2", "inf", "-")
    assert d.top == pytest.approx(41.2) and d.heights == (31.2, d.top, 0.0)
    assert d.metric == (0.88, 0.9, None) and d.metric_full == 0.9
    assert plots.sweep_data([{"format": "e4m3", "output_sqnr_db": 20.0}]).metric is None
    pytest.importorskip("matplotlib")
    fig = plots._sweep_figure(d)
    bars, metric = fig.axes
    assert [p.get_height() for p in bars.patches] == pytest.approx(list(d.heights))
    assert [t.get_text() for t in bars.get_xticklabels()] == ["int8\n31.2 dB", "fp16\ninf dB", "int4\n-"]
    assert [p.get_hatch() or None for p in bars.patches] == [None, "//", None]  # the exact format's bar is no height
    assert not bars.texts  # no value over a bar, where it would collide with the markers
    dots = [ln for ln in metric.lines if ln.get_label() == "metric"]
    assert len(dots) == 1 and dots[0].get_linestyle() == "None" and dots[0].get_marker() == "D"  # no line joins them
