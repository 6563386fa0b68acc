"""qh.calibrate: the session's own points, what gets an amax, bad input, files, and evaluation with it."""

import json
import warnings

import pytest
import torch
from torch import nn

import qsim_hooks as qh
from qsim_hooks import progress as progress_mod
from qsim_hooks.calibration import Calibration, PointCalibration
from qsim_hooks.formats import FloatFormat, Scaling

from ..core.model_check import snapshot, verify_unchanged

FP8 = FloatFormat(4, 3, specials="fn", scaling=Scaling())


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8)).eval()


def _data(n=4, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(64, 16, generator=g) for _ in range(n)]


def _input_sqnr(model, cfg, calib, data):
    with torch.no_grad(), qh.quantized(model, cfg, stats=True, calibration=calib) as qs:
        for x in data:
            model(x)
    return {(r["module"], r["point"]): r["sqnr_db"] for r in qs.stats()}


@pytest.mark.parametrize("bits", [4, 8])
def test_max_returns_the_max_and_mse_entropy_raise_the_reported_sqnr(bits):
    model = nn.Sequential(nn.Linear(64, 4)).eval()
    data = [torch.randn(512, 64, generator=torch.Generator().manual_seed(i)) for i in range(4)]
    cfg = qh.QuantConfig(input=f"int{bits}")
    cal = {m: qh.calibrate(model, cfg, data, method=m) for m in ("max", "mse", "entropy")}
    mx = torch.cat(data).abs().max().item()
    assert cal["max"].amax("0", "input") == mx
    sq = {m: _input_sqnr(model, cfg, c, data)[("0", "input")] for m, c in cal.items()}
    for m in ("mse", "entropy"):
        assert cal[m].amax("0", "input") < (0.8 if bits == 4 else 0.95) * mx
        assert sq[m] > sq["max"] + (1.0 if bits == 4 else 0.3), sq
    assert sq["mse"] >= sq["entropy"] - 0.05  # mse optimises exactly what SQNR measures


def test_every_scaled_point_is_observed_in_full_precision_through_the_session():
    model = _net()
    seen = []
    model[2].register_forward_pre_hook(lambda m, a: seen.append(a[0].clone()))
    data = _data(2)
    cfg = qh.QuantConfig(input="int4", weight="int4", output="int4")
    calib = qh.calibrate(model, cfg, data)
    assert set(calib.keys()) == {(m, p, t) for m in ("0", "2") for p, t in
                                 (("input", "input"), ("weight", "weight"), ("output", "output"))}
    # the observed input of layer 2 is the full-precision ReLU output: quantization was off
    assert calib.amax("2", "input") == max(s.abs().max().item() for s in seen)
    assert calib.amax("0", "weight") == model[0].weight.abs().max().item()
    with torch.no_grad():
        assert calib.amax("0", "output") == max(model[0](x).abs().max().item() for x in data)
    for h in list(model[2]._forward_pre_hooks):
        del model[2]._forward_pre_hooks[h]


def test_model_unchanged_and_points_restored_even_when_forward_fails():
    model = _net()
    snap = snapshot(model)
    calls = []

    def forward(m, batch):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("boom")
        return m(batch)

    with pytest.raises(RuntimeError, match="boom"):
        qh.calibrate(model, qh.QuantConfig(input="int8", weight="int8"), _data(3), forward=forward)
    verify_unchanged(model, snap)
    qh.calibrate(model, qh.QuantConfig(input="int8", weight="int8"), _data(3))
    verify_unchanged(model, snap)
    with qh.quantized(model, qh.QuantConfig(input="int8")):  # no session left behind
        pass


def test_unscaled_and_block_formats_get_no_amax_nvfp4_its_tensor_level():
    model = _net()
    cfg = qh.QuantConfig(input="nvfp4", weight="mxfp4", output="e4m3",
                         rules=[qh.Rule(match="2", input=FP8, weight="fp16", output="bf16")])
    calib = qh.calibrate(model, cfg, _data(2))
    assert set(calib.keys()) == {("0", "input", "input"), ("2", "input", "input")}
    assert "unscaled cast" in calib.skipped[("0", "output", "output")]
    assert "block scales" in calib.skipped[("0", "weight", "weight")]
    assert calib[("0", "input", "input")].granularity == "tensor"
    with pytest.warns(UserWarning, match="cannot score a two-level block format.*0\\[input\\]"):
        c2 = qh.calibrate(model, cfg, _data(2), method="mse")
    assert c2[("0", "input", "input")].method == "max" and c2[("2", "input", "input")].method == "mse"
    out = _input_sqnr(model, cfg, calib, _data(2))
    assert all(v is not None for v in out.values())


def test_nothing_scalable_warns_and_returns_an_empty_calibration():
    with pytest.warns(UserWarning, match="no point has a format that takes a static scale"):
        calib = qh.calibrate(_net(), qh.QuantConfig(input="e4m3", weight="fp16"), _data(1))
    assert len(calib) == 0 and calib.skipped


def test_per_channel_weights_follow_the_plan_axis():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ConvTranspose2d(4, 5, 3)).eval()
    cfg = qh.QuantConfig(weight="int4", rules=[qh.Rule(weight_scaling="channel")])
    calib = qh.calibrate(model, cfg, [torch.randn(1, 3, 8, 8)])
    conv, convt = calib[("0", "weight", "weight")], calib[("1", "weight", "weight")]
    assert conv.shape == (4, 1, 1, 1) and convt.shape == (1, 5, 1, 1)
    assert list(conv.amax) == model[0].weight.abs().amax(dim=(1, 2, 3)).tolist()
    assert list(convt.amax) == model[1].weight.abs().amax(dim=(0, 2, 3)).tolist()
    with torch.no_grad(), qh.quantized(model, cfg, calibration=calib) as qs:
        model(torch.randn(1, 3, 8, 8))
    assert qs.points[("0", "weight", "weight")].amax.shape == (4, 1, 1, 1)


def test_method_per_point_name_and_batches_by_type():
    model = _net()
    data = _data(3)
    calib = qh.calibrate(model, qh.QuantConfig(input="int8", weight="int8"), data,
                         method={"weight": "max", "default": "mse"})
    assert {p.method for p in calib if p.point == "weight"} == {"max"}
    assert {p.method for p in calib if p.point == "input"} == {"mse"}
    # batches: a tuple is unpacked, a dict goes by keyword, one tensor is one batch
    got = []

    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x, scale=1.0):
            got.append(scale)
            return self.fc(x) * scale

    two = Two().eval()
    cfg = qh.QuantConfig(input="int8")
    qh.calibrate(two, cfg, [(torch.randn(2, 4), 2.0), {"x": torch.randn(2, 4), "scale": 3.0}])
    c = qh.calibrate(two, cfg, torch.ones(2, 4))
    assert got == [2.0, 3.0, 1.0] and c.num_batches == 1 and c.amax("fc", "input") == 1.0
    c = qh.calibrate(two, cfg, (torch.randn(2, 4) for _ in range(10)), num_batches=3)
    assert c.num_batches == 3


@pytest.mark.parametrize("bad, match", [
    (dict(method="median"), "method='median' is not a calibration method"),
    (dict(method={"input": "kl"}), "method\\['input'\\]='kl'"),
    (dict(method="percentile", percentile=0), "percentile=0 must be in \\(0, 100\\]"),
    (dict(method="percentile", percentile=100.5), "percentile=100.5"),
    (dict(percentile=float("nan")), "percentile=nan"),
    (dict(num_batches=0), "num_batches=0"),
    (dict(bins=4), "bins=4"),
], ids=["method", "method_map", "p0", "p100.5", "p_nan", "num_batches", "bins"])
def test_bad_arguments_are_value_errors_naming_them(bad, match):
    with pytest.raises(ValueError, match=match):
        qh.calibrate(_net(), qh.QuantConfig(input="int8"), _data(1), **bad)


def test_empty_loader_is_an_error_and_leaves_the_model_alone():
    model = _net()
    snap = snapshot(model)
    with pytest.raises(ValueError, match="yielded no batches"):
        qh.calibrate(model, qh.QuantConfig(input="int8"), [])
    with pytest.raises(ValueError, match="yielded no batches"):
        qh.calibrate(model, qh.QuantConfig(input="int8"), torch.utils.data.DataLoader(torch.empty(0, 16)))
    verify_unchanged(model, snap)
    with pytest.raises(TypeError, match="iterable of batches"):
        qh.calibrate(model, qh.QuantConfig(input="int8"), 3)


def test_points_without_data_warn_by_name_and_no_data_at_all_is_an_error():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.used, self.unused = nn.Linear(4, 4), nn.Linear(4, 4)

        def forward(self, x):
            return self.used(x)

    m = Branchy().eval()
    with pytest.warns(UserWarning, match="1 point\\(s\\) saw no data.*unused\\[input\\]"):
        calib = qh.calibrate(m, qh.QuantConfig(input="int8", weight="int8"), [torch.randn(2, 4)])
    assert ("unused", "input", "input") not in calib and calib.skipped[("unused", "input", "input")] == "saw no data"
    assert ("unused", "weight", "weight") in calib  # weights are read once, used or not
    with pytest.raises(ValueError, match="none of the 2 points saw finite data.*forward"):
        qh.calibrate(m, qh.QuantConfig(input="int8"), [torch.randn(2, 4)], forward=lambda model, b: None)


def test_only_zeros_or_only_nonfinite_never_give_a_zero_scale():
    m = nn.Sequential(nn.Linear(4, 4)).eval()
    with pytest.warns(UserWarning, match="saw only zeros.*0\\[input\\]"):
        calib = qh.calibrate(m, qh.QuantConfig(input="int8"), [torch.zeros(2, 4)], method="percentile")
    assert len(calib) == 0
    with pytest.raises(ValueError, match="none of the 1 points saw finite data \\(0\\[input\\] \\(saw only Inf/NaN"):
        qh.calibrate(m, qh.QuantConfig(input="int8"), [torch.full((2, 4), float("nan"))])
    x = torch.randn(2, 4)
    x[0, 0] = float("inf")
    calib = qh.calibrate(m, qh.QuantConfig(input="int8"), [x])
    p = calib[("0", "input", "input")]
    assert p.nonfinite == 1 and p.numel == 7 and p.amax == x[torch.isfinite(x)].abs().max().item()


def test_save_load_round_trip_gives_bit_identical_outputs(tmp_path):
    model = _net()
    data = _data(3)
    cfg = qh.QuantConfig(input="int4", weight=FP8, output="int8", rules=[qh.Rule(match="2", weight_scaling="channel")])
    with pytest.warns(UserWarning, match="entropy compares distributions"):  # on 8 KB of data
        calib = qh.calibrate(model, cfg, data, method="entropy")
    path = tmp_path / "calib.json"
    calib.save(path)
    loaded = qh.Calibration.load(path, model=model)
    assert loaded.points == calib.points and loaded.skipped == calib.skipped
    d = json.loads(path.read_text())
    assert d["format"] == "qsim_hooks.calibration" and d["qsim_hooks_version"] == qh.__version__
    assert d["method"] == "entropy" and {p["format"] for p in d["points"]} == {"int4", "e4m3fn", "int8"}
    outs = []
    for c in (calib, loaded):
        with torch.no_grad(), qh.quantized(model, cfg, calibration=c):
            outs.append(torch.cat([model(x) for x in data]))
    assert torch.equal(outs[0].view(torch.int32), outs[1].view(torch.int32))
    with torch.no_grad(), qh.quantized(model, cfg):  # the static scales made a difference
        dyn = torch.cat([model(x) for x in data])
    assert not torch.equal(dyn, outs[0])


def test_a_calibration_for_another_model_is_refused_by_name(tmp_path):
    calib = qh.calibrate(_net(), qh.QuantConfig(input="int8", weight="int8"), _data(1))
    other = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Identity(), nn.Linear(32, 8)).eval()  # '2' is Identity
    path = tmp_path / "c.json"
    calib.save(path)
    with pytest.raises(ValueError, match="2.weight: the module has no tensor 'weight'"):
        qh.Calibration.load(path, model=other)
    renamed = nn.Sequential()
    renamed.add_module("enc", nn.Linear(16, 32))
    with pytest.raises(ValueError, match="modules not in the model: '0', '2'"):
        calib.validate(renamed)
    bad = tmp_path / "bad.json"
    bad.write_text("{\"points\": []}")
    with pytest.raises(ValueError, match="is not a qsim_hooks calibration"):
        qh.Calibration.load(bad)
    bad.write_text("not json")
    with pytest.raises(ValueError, match="not a JSON calibration"):
        qh.Calibration.load(bad)


def test_amax_for_checks_the_format_it_is_used_with():
    model = _net()
    cfg = qh.QuantConfig(weight="int4", rules=[qh.Rule(weight_scaling="channel")])
    calib = qh.calibrate(model, cfg, _data(1))
    with pytest.raises(ValueError, match="0.weight was calibrated per channel.*per tensor"):
        qh.quantized(model, qh.QuantConfig(weight="int4"), calibration=calib).attach()
    with pytest.warns(UserWarning, match="format now takes none"):
        with qh.quantized(model, qh.QuantConfig(weight="e4m3"), calibration=calib):
            pass
    mse = qh.calibrate(model, qh.QuantConfig(input="int8"), _data(1), method="mse")
    with pytest.warns(UserWarning, match="calibrated \\(mse\\) for int8 and is used with int4"):
        with qh.quantized(model, qh.QuantConfig(input="int4"), calibration=mse):
            pass
    with pytest.raises(ValueError, match="amax must be finite and > 0"):
        PointCalibration("fc", "input", "input", 0.0, "int8", "max")


def test_merged_and_lookup():
    model = _net()
    a = qh.calibrate(model, qh.QuantConfig(input="int8"), _data(1))
    b = qh.calibrate(model, qh.QuantConfig(weight="int8"), _data(1))
    m = a.merged(b)
    assert len(m) == len(a) + len(b) and isinstance(m, Calibration)
    with pytest.raises(KeyError, match="no calibrated amax"):
        a[("0", "weight", "weight")]
    assert "2 points" in repr(a)


def test_progress_bar_off_or_forced_prints_nothing_to_stdout(capsys, monkeypatch):
    bars = []

    class Recording(progress_mod.Progress):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.log = []
            bars.append(self)

        def add_task(self, description, total=None, **kwargs):
            self.log.append(("total", total))
            return super().add_task(description, total=total, **kwargs)

        def advance(self, task_id, advance=1):
            self.log.append("advance")
            super().advance(task_id, advance)

        def stop(self):
            self.log.append("stop")
            super().stop()

    monkeypatch.setattr(progress_mod, "Progress", Recording)  # the one progress helper calibrate uses
    model = _net()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        qh.calibrate(model, qh.QuantConfig(input="int8"), _data(2), progress=False)
        qh.calibrate(model, qh.QuantConfig(input="int8"), _data(2))  # not a terminal: off
    assert capsys.readouterr().out == "" and bars == []
    qh.calibrate(model, qh.QuantConfig(input="int8"), _data(3), num_batches=2, progress=True)  # forced: transient
    assert [b.log for b in bars] == [[("total", 2), "advance", "advance", "stop"]]
    assert bars[0].finished and "calibrating" not in capsys.readouterr().out


def test_training_mode_is_warned_about():
    model = _net().train()
    with pytest.warns(UserWarning, match="training mode"):
        qh.calibrate(model, qh.QuantConfig(input="int8"), _data(1))
