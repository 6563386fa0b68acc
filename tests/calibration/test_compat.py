"""INT-FP-QSim's calibrate_inputs / calibrate_weights on replace_layers sessions and plain models."""

import pytest
import torch
from torch import nn

import qsim_hooks as qh
from qsim_hooks.compat import E4M3, INT4, INT8, apply_calibration, calibrate_inputs, calibrate_weights, replace_layers

from ..core.model_check import snapshot, verify_unchanged


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.ConvTranspose2d(4, 2, 3), nn.Flatten(),
                         nn.Linear(2 * 8 * 8, 5)).eval()


def _loader(n=8, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(2, 3, 8, 8, generator=g) for _ in range(n)]


def test_on_a_replace_layers_session_scales_reach_the_layers():
    model = _net()
    snap = snapshot(model)
    data = _loader()
    mq = replace_layers(model, INT8, INT8, None)
    seen = []
    calib = calibrate_inputs(mq, 8, data, num_samples=3, batch_process_func=lambda m, b: seen.append(m(b)))
    assert len(seen) == 3  # num_samples batches, fed by batch_process_func
    cw = calibrate_weights(mq, 8, False, perchannel=True)
    amax0 = calib.amax("0", "input")
    assert amax0 == max(x.abs().max().item() for x in data[:3])  # "max" over the first num_samples batches
    assert torch.equal(mq.points[("0", "input", "input")].amax, torch.tensor(amax0))
    w = model[2].parametrizations.weight.original
    assert cw[("2", "weight", "weight")].shape == (1, 2, 1, 1)  # ConvTranspose: output channels on axis 1
    assert torch.equal(mq.points[("2", "weight", "weight")].amax.flatten(), w.abs().amax(dim=(0, 2, 3)))
    # the layer now computes with INT-FP-QSim's static scales
    x = data[5]
    y = mq(x)
    w0 = model[0].parametrizations.weight.original
    ref0 = nn.functional.conv2d(INT8(x, static_scale=amax0),
                                INT8(w0, static_scale=w0.abs().amax(dim=(1, 2, 3), keepdim=True)), model[0].bias)
    with torch.no_grad():
        h = model[0](x)
    assert torch.equal(h, ref0)
    assert y.shape == (2, 5)
    mq.detach()
    verify_unchanged(model, snap)


def test_on_a_plain_model_they_return_calibrations_to_apply():
    model = _net()
    snap = snapshot(model)
    ci = calibrate_inputs(model, 4, _loader(), method="MSE")  # INT-FP-QSim spells it in capitals
    cw = calibrate_weights(model, 4, False, method="percentile", percentile=99.0, perchannel=False)
    verify_unchanged(model, snap)
    assert {k[1] for k in ci.keys()} == {"input"} and {k[1] for k in cw.keys()} == {"weight"}
    assert all(p.format == "int4" and p.method == "mse" for p in ci)
    both = ci.merged(cw)
    mq = replace_layers(model, INT4, INT4, None)
    applied = apply_calibration(mq, both)
    assert len(applied) == 6
    mq(_loader(1)[0])
    mq.detach()
    # a quantizer that takes no scale keeps none, and says so
    mq = replace_layers(model, E4M3, INT4, None)
    with pytest.warns(UserWarning, match="not applied to 3 point.*0\\[input\\].*unscaled cast"):
        applied = apply_calibration(mq, both)
    assert len(applied) == 3 and mq.points[("0", "input", "input")].amax is None
    mq.detach()
    verify_unchanged(model, snap)


def test_the_same_calibration_serves_qh_quantized():
    model = _net()
    cw = calibrate_weights(model, 8, False, perchannel=True)
    cfg = qh.QuantConfig(weight=qh.IntFormat(8), rules=[qh.Rule(weight_scaling="channel")])
    with torch.no_grad(), qh.quantized(model, cfg, calibration=cw) as qs:
        model(_loader(1)[0])
    assert all(qp.amax is not None for qp in qs.points.values())


def test_bad_arguments():
    model = _net()
    with pytest.raises(ValueError, match="method='kl' is not a calibration method"):
        calibrate_inputs(model, 8, _loader(), method="kl")
    with pytest.raises(ValueError, match="num_bits=1"):
        calibrate_weights(model, 1, False)
    with pytest.raises(TypeError, match="unsigned must be a bool"):
        calibrate_weights(model, 8, "no")
    with pytest.raises(ValueError, match="yielded no batches"):
        calibrate_inputs(model, 8, [])
    mq = replace_layers(model, INT8, None, None)
    mq.detach()
    with pytest.raises(RuntimeError, match="detached"):
        calibrate_inputs(mq, 8, _loader())


def test_unsigned_calibration_scores_an_unsigned_grid():
    model = _net()
    relu_data = [x.relu() for x in _loader()]
    c = calibrate_inputs(model, 8, relu_data, unsigned=True, method="mse")
    assert c[("0", "input", "input")].format == "uint8"
