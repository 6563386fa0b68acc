"""INT-FP-QSim's calibrate_inputs / calibrate_weights in both orders (the old tool's numbers: compat/test_golden.py)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import qsim_hooks as qh
from qsim_hooks import compat
from qsim_hooks.compat import E4M3, INT4, INT8, apply_calibration, calibrate_inputs, calibrate_weights, replace_layers

from ..core.model_check import snapshot, verify_unchanged


@pytest.fixture(autouse=True)
def _one_thread():
    """TensorRT's mse / entropy score thousands of candidates in small tensor operations, which a second
    thread only slows down."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.ConvTranspose2d(4, 2, 3), nn.Flatten(),
                         nn.Linear(2 * 8 * 8, 5)).eval()


def _loader(n=8, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(2, 3, 8, 8, generator=g) for _ in range(n)]


def test_replace_then_calibrate_sees_the_quantized_model_and_sets_the_points():
    model = _net()
    snap = snapshot(model)
    data = _loader()
    mq = replace_layers(model, INT8, INT8, None)
    seen = []
    calib = calibrate_inputs(mq, 8, data, num_samples=3, batch_process_func=lambda m, b: seen.append(m(b)))
    assert len(seen) == 3  # num_samples batches, fed by batch_process_func
    amax0 = max(x.abs().max().item() for x in data[:3])  # "max" over the first num_samples batches
    assert calib.amax("0", "input") == amax0 and model[0].amax_input.item() == amax0
    # layer 2 is calibrated on what it receives in the quantized model: relu(conv(INT8(x), INT8(w)) + b)
    w0 = model[0].parametrizations.weight.original
    with torch.no_grad():
        h = [F.conv2d(INT8(x), INT8(w0), model[0].bias).relu() for x in data[:3]]
    assert calib.amax("2", "input") == max(t.abs().max().item() for t in h)
    session = compat.session_of(mq)
    assert torch.equal(session.points[("0", "input", "input")].amax, torch.tensor(amax0))
    cw = calibrate_weights(mq, 8, False, perchannel=True)
    w2 = model[2].parametrizations.weight.original
    assert cw[("2", "weight", "weight")].shape == (1, 2, 1, 1)  # ConvTranspose: output channels on axis 1
    assert model[2].amax_weight.shape == (1, 2, 1, 1) and isinstance(model[2].amax_weight, np.ndarray)
    assert torch.equal(session.points[("2", "weight", "weight")].amax.flatten(), w2.abs().amax(dim=(0, 2, 3)))
    # the layers now compute with the static scales
    x = data[5]
    with torch.no_grad():
        h = model[0](x)
        ref = F.conv2d(INT8(x, static_scale=amax0),
                       INT8(w0, static_scale=w0.abs().amax(dim=(1, 2, 3), keepdim=True)), model[0].bias)
    assert torch.equal(h, ref)
    compat.detach(model)
    verify_unchanged(model, snap)
    assert compat.clear_scales(model) == 6  # INT-FP-QSim's attributes were the only thing left


def test_calibrate_then_replace_honours_the_attributes():
    model = _net()
    ci = calibrate_inputs(model, 4, _loader(), method="MSE")  # INT-FP-QSim's README spells it in capitals
    cw = calibrate_weights(model, 4, False, method="percentile", percentile=99.0, perchannel=False)
    assert {k[1] for k in ci.keys()} == {"input"} and {k[1] for k in cw.keys()} == {"weight"}
    assert all(p.format == "int4" and p.method == "mse" for p in ci)
    assert all(torch.as_tensor(m.amax_input).item() == ci.amax(n, "input")
               for n, m in model.named_modules() if hasattr(m, "amax_input"))
    x = _loader(1, seed=9)[0]
    replace_layers(model, INT4, INT4, None)
    with torch.no_grad():
        by_attributes = model(x)
    compat.detach(model)
    assert compat.clear_scales(model) == 6
    replace_layers(model, INT4, INT4, None, calibration=ci.merged(cw))
    with torch.no_grad():
        assert torch.equal(model(x), by_attributes)
    compat.detach(model)
    # a quantizer that takes no scale keeps none, and says so
    replace_layers(model, E4M3, INT4, None)
    with pytest.warns(UserWarning, match="not applied to 3 point.*0\\[input\\].*unscaled cast"):
        applied = apply_calibration(model, ci.merged(cw))
    assert len(applied) == 3 and compat.session_of(model).points[("0", "input", "input")].amax is None
    compat.detach(model)


def test_the_same_calibration_serves_qh_quantized():
    model = _net()
    cw = calibrate_weights(model, 8, False, perchannel=True)
    compat.clear_scales(model)
    cfg = qh.QuantConfig(weight=qh.IntFormat(8), rules=[qh.Rule(weight_scaling="channel")])
    with torch.no_grad(), qh.quantized(model, cfg, calibration=cw) as qs:
        model(_loader(1)[0])
    assert all(qp.amax is not None for qp in qs.points.values())


def test_num_samples_and_layers_without_data():
    class Skip(nn.Module):
        def __init__(self):
            super().__init__()
            self.used, self.unused = nn.Linear(3, 3), nn.Linear(3, 3)

        def forward(self, x):
            return self.used(x)

    model = Skip()
    data = [torch.randn(2, 3) * (i + 1) for i in range(4)]
    calib = calibrate_inputs(model, 8, data, num_samples=0)  # INT-FP-QSim: <= 0 uses every batch
    assert calib.num_batches == 4 and calib.amax("used", "input") == max(d.abs().max().item() for d in data)
    assert calib.skipped[("unused", "input", "input")] == "the layer saw no input"
    assert not hasattr(model.unused, "amax_input")


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
    with pytest.raises(TypeError, match="torch.nn.Module"):
        calibrate_inputs("model", 8, _loader())
    with pytest.raises(ValueError, match="needs at least 129 histogram bins"):
        calibrate_weights(model, 8, False, method="mse", perchannel=True, num_bins=64)
    replace_layers(model, INT8, None, None)
    session = compat.session_of(model)
    compat.detach(model)
    with pytest.raises(RuntimeError, match="detached"):
        calibrate_inputs(session, 8, _loader())
    with pytest.raises(ValueError, match="no replace_layers session"):
        apply_calibration(model, calibrate_weights(model, 8, False))


def test_unsigned_calibration_scores_an_unsigned_grid():
    model = _net()
    relu_data = [x.relu() for x in _loader()]
    c = calibrate_inputs(model, 8, relu_data, unsigned=True, method="mse")
    assert c[("0", "input", "input")].format == "uint8"
