"""Issue 12, calibration: bad files refused entry by entry, the float32 range end to end, weights written
through ``.data`` between batches, meta models, threads.

References: a file's entries are the ones :meth:`Calibration.save` writes, edited one field at a time;
an amax from data spanning float32's range is checked against the same data scaled by a power of two
(``2**-100``: every bin, count and candidate scales exactly, so the amax must scale exactly), and
against the data's max.
"""

from __future__ import annotations

import copy
import json
import math
import threading

import pytest
import torch
from torch import nn

import qsim_hooks as qh
from qsim_hooks.calibration import PointCalibration
from qsim_hooks.formats import FloatFormat, Scaling

FP8 = FloatFormat(4, 3, specials="fn", scaling=Scaling())


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8)).eval()


def _data(n: int = 2, seed: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(64, 16, generator=g) for _ in range(n)]


# ---------------------------------------------------------------------------
# files
# ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def saved() -> dict:
    cfg = qh.QuantConfig(input="int8", weight="int8", rules=[qh.Rule(match="2", weight_scaling="channel")])
    return qh.calibrate(_net(), cfg, _data()).to_dict()


def _entry(d: dict, module: str, point: str) -> int:
    return next(i for i, p in enumerate(d["points"]) if p["module"] == module and p["point"] == point)


BAD = {  # name -> (edit of the saved dict, what the message must say)
    "amax 1e39": (lambda d, i: d["points"][i].update(amax=1e39), r"amax 1e\+39 is not usable.*float32 makes it inf"),
    "amax 1e-46": (lambda d, i: d["points"][i].update(amax=1e-46), r"amax 1e-46 is not usable.*makes it 0\.0"),
    "amax true": (lambda d, i: d["points"][i].update(amax=True), r"amax must be a number.*got True"),
    "amax string": (lambda d, i: d["points"][i].update(amax="1.5"), r"amax must be a number.*got '1\.5'"),
    "amax nan": (lambda d, i: d["points"][i].update(amax=math.nan), r"amax nan is not usable"),
    "amax negative": (lambda d, i: d["points"][i].update(amax=-2.0), r"amax -2\.0 is not usable"),
    "amax empty list": (lambda d, i: d["points"][i].update(amax=[], granularity="channel"), r"amax is empty"),
    "unknown point": (lambda d, i: d["points"][i].update(point="inptu", tensor="inptu"),
                      r"point 'inptu' is not a point name; allowed: input, weight, output, q, k"),
    "tensor not the point's": (lambda d, i: d["points"][i].update(tensor="weight"),
                               r"the tensor of a 'input' point is 'input', got 'weight'"),
    "duplicate": (lambda d, i: d["points"].append(copy.deepcopy(d["points"][i])), r"repeats points\[\d\]"),
    "unknown key": (lambda d, i: d["points"][i].update(amx=1.0), r"unknown keys \['amx'\]"),
    "missing amax": (lambda d, i: d["points"][i].pop("amax"), r"missing amax"),
    "granularity": (lambda d, i: d["points"][i].update(granularity="channel"), r"granularity 'channel' does not fit"),
    "numel": (lambda d, i: d["points"][i].update(numel=-3), r"numel must be an int >= 0, got -3"),
    "not an object": (lambda d, i: d["points"].__setitem__(i, [1, 2]), r"must be an object"),
    "module not a string": (lambda d, i: d["points"][i].update(module=3), r"module must be a string, got 3"),
    "points not a list": (lambda d, i: d.update(points={"a": 1}), r"points must be a list"),
    "skipped point": (lambda d, i: d.update(skipped=[{"module": "0", "point": "bogus", "tensor": "x"}]),
                      r"skipped\[0\] must be an object with module, point"),
}


@pytest.mark.parametrize("name", list(BAD), ids=list(BAD))
def test_a_bad_entry_is_refused_naming_the_file_and_the_entry(saved, tmp_path, name):
    edit, message = BAD[name]
    d = copy.deepcopy(saved)
    i = _entry(d, "0", "input")
    edit(d, i)
    path = tmp_path / "calib.json"
    path.write_text(json.dumps(d))
    with pytest.raises(ValueError, match=message) as err:
        qh.Calibration.load(path)
    text = str(err.value)
    assert text.startswith(repr(str(path)))
    if name not in ("points not a list", "skipped point", "duplicate"):
        assert f"points[{i}]" in text
    if name in ("amax 1e39", "unknown point", "granularity"):
        assert "(0, input, " in text or "(0, inptu, " in text  # the entry's point is named


def test_a_saved_calibration_still_loads(saved, tmp_path):
    path = tmp_path / "calib.json"
    path.write_text(json.dumps(saved))
    loaded = qh.Calibration.load(path, model=_net())
    assert loaded.to_dict()["points"] == saved["points"]


@pytest.mark.parametrize("amax", [1e39, 1e-46, (1.0, 1e39)], ids=["1e39", "1e-46", "per channel"])
def test_a_point_calibration_checks_its_amax_in_float32(amax):
    gran = "channel" if isinstance(amax, tuple) else "tensor"
    with pytest.raises(ValueError, match="amax must be finite and > 0 in float32"):
        PointCalibration("fc", "input", "input", amax, "int8", "max", gran)


# ---------------------------------------------------------------------------
# the float32 range, end to end
# ---------------------------------------------------------------------------
def _calibrate_input(x: torch.Tensor, method: str, fmt) -> float:
    lin = nn.Linear(x.shape[-1], 2).eval()
    return qh.calibrate(lin, qh.QuantConfig(input=fmt), [x], method=method).amax("", "input")


@pytest.mark.parametrize("fmt", ["int8", FP8], ids=["int8", "scaled e4m3"])
@pytest.mark.parametrize("method", ["percentile", "mse", "entropy"])
def test_histogram_methods_scale_exactly_up_to_float32_max_and_down_to_1e_30(method, fmt):
    g = torch.Generator().manual_seed(3)
    base = torch.randn(64, 64, generator=g)
    base[0, :4] = torch.tensor([6.0, -7.0, 7.5, 7.9])  # max |x| just below 8 = 2**3
    scales = {"near float32 max": 2.0**124, "1e-30": 2.0**-100}  # 7.9 * 2**124 = 1.68e38
    ref = _calibrate_input(base, method, fmt)
    assert 0 < ref <= float(base.abs().max())
    for what, s in scales.items():
        x = base * s
        got = _calibrate_input(x, method, fmt)
        assert math.isfinite(got) and got <= float(x.abs().max()), what
        assert got == ref * s, (what, got / s, ref)


@pytest.mark.filterwarnings("ignore:calibration. entropy compares distributions")
def test_values_near_float32_max_calibrate_with_every_method():
    x = torch.tensor([[3e38, 1e38, -2e38, 1.0] * 16])
    for method in ("max", "percentile", "mse", "entropy"):
        amax = _calibrate_input(x, method, "int8")
        assert 0 < amax <= 3e38 * (1 + 2**-23), method
        lin = nn.Linear(64, 2).eval()
        calib = qh.calibrate(lin, qh.QuantConfig(input="int8"), [x], method=method)
        with torch.no_grad(), qh.quantized(lin, qh.QuantConfig(input="int8"), calibration=calib, stats=True) as qs:
            lin(x)
        assert math.isfinite(qs.stats()[0]["sqnr_db"])  # the amax is usable: finite in, finite out


# ---------------------------------------------------------------------------
# weights written between batches, meta models, threads
# ---------------------------------------------------------------------------
def test_a_weight_written_through_data_between_batches_is_observed_again():
    model = _net()
    w = model[0].weight
    first_max = float(w.detach().abs().max())

    def forward(m, batch):
        m(batch)
        w.data.mul_(2.0)  # an EMA or a custom update: no version bump

    calib = qh.calibrate(model, qh.QuantConfig(weight="int8"), _data(2), forward=forward)
    # read once before the batches, seen again unchanged by batch 1 (skipped), then doubled by batch 2
    assert calib.amax("0", "weight") == 2 * first_max
    model = _net()
    same = qh.calibrate(model, qh.QuantConfig(weight="int8"), _data(3))
    assert same[("0", "weight", "weight")].numel == model[0].weight.numel()  # unchanged: counted once


def test_a_meta_model_cannot_calibrate_and_is_told_why():
    with torch.device("meta"):
        model = _net()
    with pytest.raises(ValueError, match=r"saw only meta tensors.*meta device, which holds no values"):
        qh.calibrate(model, qh.QuantConfig(input="int8"), [torch.empty(4, 16, device="meta")])


@pytest.mark.parametrize("method", ["max", "percentile"])
def test_threads_feeding_one_calibration_count_every_value_once(method):
    model = _net()
    data = _data(1)[0].repeat(8, 1)  # 512 rows

    def forward(m, batch):
        parts = batch.chunk(8)
        ts = [threading.Thread(target=lambda p=p: m(p)) for p in parts]
        for t in ts:
            t.start()
        for t in ts:
            t.join()

    calib = qh.calibrate(model, qh.QuantConfig(input="int8"), [data] * 6, forward=forward, method=method)
    assert calib[("0", "input", "input")].numel == 6 * data.numel()
    single = qh.calibrate(model, qh.QuantConfig(input="int8"), [data] * 6, method=method)
    assert calib.amax("0", "input") == single.amax("0", "input")
