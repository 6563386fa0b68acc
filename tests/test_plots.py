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
