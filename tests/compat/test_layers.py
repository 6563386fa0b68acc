"""INT-FP-QSim's replace_layers: same signature, instruments instead of replacing."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import qsim_hooks as qh
from qsim_hooks.compat.layers import replace_layers
from qsim_hooks.formats import get

from ..core.model_check import snapshot, verify_unchanged


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Identity(),
                         nn.Flatten(), nn.Linear(4 * 6 * 6, 5))


def test_script_written_for_int_fp_qsim_runs_and_restores():
    model = _net()
    x = torch.randn(2, 3, 8, 8)
    snap = snapshot(model)
    q_in, q_w, q_out = get("e4m3"), get("e4m3"), get("fp16")
    model_q = replace_layers(model, input_quantizer=q_in, weight_quantizer=q_w, output_quantizer=q_out)
    model_q.eval()
    y = model_q(x)
    h = q_out(F.conv2d(q_in(x), q_w(model[0].parametrizations.weight.original), model[0].bias)).relu()
    ref = q_out(F.linear(q_in(h.flatten(1)), q_w(model[4].parametrizations.weight.original), model[4].bias))
    assert torch.equal(y, ref)
    assert type(model[0]) is not nn.Conv2d or hasattr(model[0], "parametrizations")  # instrumented, not swapped
    model_q.detach()
    model.train()
    verify_unchanged(model, snap)


def test_mapping_restricts_layer_types_and_accepts_callables():
    model = _net().eval()
    x = torch.randn(2, 3, 8, 8)
    calls = []

    def q(t):
        calls.append(t.shape)
        return t.half().float()

    with replace_layers(model, input_quantizer=q, mapping={nn.Linear: object}) as h:
        model(x)
    assert calls == [torch.Size([2, 144])]
    assert {k[0] for k in h.points} == {"4"}
    with pytest.raises(TypeError, match="mapping keys"):
        replace_layers(model, "int8", mapping=[int])


def test_equivalent_to_quantized():
    model = _net().eval()
    x = torch.randn(2, 3, 8, 8)
    with qh.quantized(model, qh.QuantConfig(input="int8", weight="int4", output="e5m2")):
        a = model(x)
    with replace_layers(model, "int8", "int4", "e5m2"):
        b = model(x)
    assert torch.equal(a, b)


def test_calibration_passed_to_replace_layers_sets_static_scales():
    model = _net().eval()
    x = torch.randn(2, 3, 8, 8)
    calib = qh.calibrate(model, qh.QuantConfig(input="int8"), [x], method="max", progress=False)
    with replace_layers(model, input_quantizer="int8", calibration=calib) as h:
        model(x)
    assert all(p.amax is not None for (m, pt, t), p in h.points.items() if pt == "input")
    other = nn.Sequential(nn.Linear(3, 3))
    with pytest.raises(ValueError, match="not in the model|do not exist|not found"):
        replace_layers(other, input_quantizer="int8", calibration=calib)
