"""INT-FP-QSim's replace_layers: returns the model, instruments exact types, honours old-order scales, detaches."""

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import qsim_hooks as qh
from qsim_hooks import compat
from qsim_hooks.compat import E2M1, E4M3, FP16, INT4, INT8, replace_layers

from ..core.model_check import snapshot, verify_unchanged


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Identity(), nn.Flatten(), nn.Linear(4 * 6 * 6, 5)).eval()


def _snap(model):
    return snapshot(model), {n: set(m.__dict__) for n, m in model.named_modules()}


def _verify(model, snap):
    verify_unchanged(model, snap[0])
    assert {n: set(m.__dict__) for n, m in model.named_modules()} == snap[1], "attributes left on the modules"


def _reference(model, x, q_in, q_w, q_out, amax_in=(None, None), amax_w=(None, None)):
    """The old replaced layers' forward, by hand: q_out(op(q_in(x), q_w(w), b))."""
    def q(f, t, a):
        return f(t) if a is None else f(t, static_scale=a)

    conv, fc = model[0], model[4]
    w0 = conv.parametrizations.weight.original if hasattr(conv, "parametrizations") else conv.weight
    w4 = fc.parametrizations.weight.original if hasattr(fc, "parametrizations") else fc.weight
    h = q_out(F.conv2d(q(q_in, x, amax_in[0]), q(q_w, w0, amax_w[0]), conv.bias)).relu()
    return q_out(F.linear(q(q_in, h.flatten(1), amax_in[1]), q(q_w, w4, amax_w[1]), fc.bias))


def test_returns_the_model_itself_and_quantizes_like_int_fp_qsim():
    model = _net()
    x = torch.randn(2, 3, 8, 8)
    snap = _snap(model)
    ret = replace_layers(model, input_quantizer=INT8, weight_quantizer=E4M3, output_quantizer=FP16)
    assert ret is model and isinstance(ret, nn.Module)
    with torch.no_grad():
        y = ret(x)
        assert torch.equal(y, _reference(model, x, INT8, E4M3, FP16))
        assert torch.equal(nn.Sequential(ret, nn.ReLU())(x), y.relu())  # usable wherever the model was
    session = compat.session_of(model)
    assert isinstance(session, compat.CompatSession) and session.attached
    assert {k[0] for k in session.points} == {"0", "4"}
    compat.detach(model)
    assert compat.session_of(model) is None and not session.attached
    compat.detach(model)  # safe twice
    _verify(model, snap)


def test_the_session_detached_directly_is_forgotten_too():
    model = _net()
    snap = _snap(model)
    replace_layers(model, INT8, INT8, None)
    compat.session_of(model).detach()
    assert compat.session_of(model) is None
    _verify(model, snap)
    with pytest.raises(RuntimeError, match="already has a replace_layers session"):
        replace_layers(replace_layers(model, INT8), INT4)
    compat.detach(model)


def test_layers_are_matched_by_exact_type_as_int_fp_qsim_did():
    class MyLinear(nn.Linear):
        pass

    model = nn.Sequential(nn.Linear(4, 4), MyLinear(4, 4), nn.TransformerEncoderLayer(4, 2, 8, dropout=0.0)).eval()
    plain = copy.deepcopy(model[2])
    replace_layers(model, INT8, INT8, INT8)
    # a subclass (MyLinear) was not a key of the old mapping; the MHA was, and its replacement quantized its
    # in-projection weight and rebuilt out_proj as a quantized Linear (compat: two weight points, the rest
    # inside the MHA's forward)
    assert set(compat.session_of(model).points) == {
        ("0", "input", "input"), ("0", "weight", "weight"), ("0", "output", "output"),
        *((f"2.linear{i}", p, p) for i in (1, 2) for p in ("input", "weight", "output")),
        ("2.self_attn", "weight", "in_proj_weight"), ("2.self_attn.out_proj", "weight", "weight")}
    mha = model[2].self_attn
    assert mha._forward_pre_hooks and mha._forward_hooks  # the old placement's scope
    x = torch.randn(3, 2, 4)
    with torch.no_grad():
        assert not torch.equal(model[2](x), plain(x))
    compat.detach(model)
    assert not (mha._forward_pre_hooks or mha._forward_hooks)
    replace_layers(model, INT8, INT8, INT8, mapping={MyLinear: object})
    assert {k[0] for k in compat.session_of(model).points} == {"1"}
    compat.detach(model)


def test_mapping_forms_and_errors():
    model = _net()
    x = torch.randn(2, 3, 8, 8)
    calls = []

    def q(t):
        calls.append(t.shape)
        return t.half().float()

    replace_layers(model, input_quantizer=q, mapping={nn.Linear: object})
    with torch.no_grad():
        model(x)
    compat.detach(model)
    assert calls == [torch.Size([2, 144])]
    replace_layers(model, "int8", mapping=[nn.Conv2d])
    assert {k[0] for k in compat.session_of(model).points} == {"0"}
    compat.detach(model)
    with pytest.raises(TypeError, match="mapping keys"):
        replace_layers(model, "int8", mapping=[int])
    with pytest.raises(ValueError, match="'1' \\(ReLU\\) is in the mapping but is not a layer"):
        replace_layers(model, "int8", mapping=[nn.ReLU])
    with pytest.warns(UserWarning, match="no layer of the mapped types \\(Conv1d\\)"):
        replace_layers(model, "int8", mapping=[nn.Conv1d])
    compat.detach(model)
    with pytest.raises(TypeError, match="torch.nn.Module"):
        replace_layers("model", INT8)


def test_default_mapping_is_the_old_one_where_it_exists():
    m = compat.DEFAULT_MAPPING
    names = {t.__name__ for t in m}
    assert {"Linear", "Conv1d", "Conv2d", "ConvTranspose2d", "MultiheadAttention", "BertSelfAttention",
            "OPTAttention", "CodeGenAttention", "MaskFormerSwinSelfAttention", "Attention"} <= names
    assert compat.layers.Linear is nn.Linear  # INT-FP-QSim's replacement class names, for old mappings


def test_equivalent_to_quantized():
    model = _net()
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad(), qh.quantized(model, qh.QuantConfig(input="int8", weight="int4", output="e5m2")):
        a = model(x)
    replace_layers(model, "int8", "int4", "e5m2")
    with torch.no_grad():
        b = model(x)
    compat.detach(model)
    assert torch.equal(a, b)


def test_scales_set_on_the_layers_before_are_honoured():
    # INT-FP-QSim's README order: calibration (or the user) sets amax_input / amax_weight, then replace_layers
    model = _net()
    x = torch.randn(2, 3, 8, 8)
    w0 = model[0].weight.detach()
    model[4].amax_input = torch.tensor(1.5)
    model[0].amax_weight = (w0.abs().amax(dim=(1, 2, 3), keepdim=True) * 0.5).numpy()
    snap = _snap(model)
    replace_layers(model, INT8, INT4, None)
    ident = lambda t: t  # noqa: E731
    with torch.no_grad():
        ref = _reference(model, x, INT8, INT4, ident, amax_in=(None, model[4].amax_input),
                         amax_w=(model[0].amax_weight, None))
        assert torch.equal(model(x), ref)
    assert compat.session_of(model).points[("4", "input", "input")].amax.item() == 1.5
    compat.detach(model)
    _verify(model, snap)  # the attributes are the user's: they stay
    assert compat.clear_scales(model) == 2 and not hasattr(model[4], "amax_input")


def test_calibration_argument_takes_per_channel_scales_and_wins_over_attributes():
    model = _net()
    x = torch.randn(2, 3, 8, 8)
    calib = compat.calibrate_weights(model, 8, False, perchannel=True)
    attrs = {n: m.amax_weight for n, m in model.named_modules() if hasattr(m, "amax_weight")}
    compat.clear_scales(model)
    model[0].amax_weight = np.full((4, 1, 1, 1), 9.0, dtype=np.float32)  # an older scale: calibration= wins
    replace_layers(model, INT8, INT8, None, calibration=calib)  # raised for per-channel scales before
    s = compat.session_of(model)
    assert s.points[("0", "weight", "weight")].amax.shape == (4, 1, 1, 1)
    with torch.no_grad():
        ref = _reference(model, x, INT8, INT8, lambda t: t, amax_w=(attrs["0"], attrs["4"]))
        assert torch.equal(model(x), ref)
    compat.detach(model)
    other = nn.Sequential(nn.Linear(3, 3))
    with pytest.raises(ValueError, match="not in the model"):
        replace_layers(other, INT8, INT8, calibration=calib)
    assert compat.session_of(other) is None and not hasattr(other[0], "parametrizations")


def test_zero_and_unusable_scales():
    model = _net()
    w = model[0].weight.detach()
    amax = w.abs().amax(dim=(1, 2, 3), keepdim=True).numpy().copy()
    amax[2] = 0.0  # a pruned channel: TensorRT quantizes it to zero
    model[0].amax_weight = amax
    model[0].amax_input = torch.tensor(2.0)
    replace_layers(model, INT8, INT8, None)
    q = model[0].weight
    assert bool((q[2] == 0).all()) and torch.equal(q, INT8(w, static_scale=amax))
    compat.detach(model)
    with pytest.warns(UserWarning, match=r"0\[input\] \(E4M3 is an unscaled cast.*0\.weight \(amax 0\)"):
        replace_layers(model, E4M3, E2M1, None)
    assert compat.session_of(model).points[("0", "weight", "weight")].amax is None
    compat.detach(model)


def test_a_failed_attach_leaves_nothing():
    model = _net()
    model[0].amax_input = torch.tensor(-1.0)  # negative: refused
    snap = _snap(model)
    with pytest.raises(ValueError, match="amax must be finite and > 0"):
        replace_layers(model, INT8, INT8, None)
    assert compat.session_of(model) is None
    _verify(model, snap)


def test_layers_inside_diffusers_attention_stay_full_precision_as_int_fp_qsim_left_them():
    # the old Attention.from_float swapped the processor and kept to_q / to_k / to_v / to_out as they were
    # (checked with the old tool: their classes stay torch.nn.Linear after its replace_layers)
    from diffusers.models.attention_processor import Attention

    model = nn.Sequential(nn.Linear(8, 8), Attention(8, heads=2, dim_head=4))
    replace_layers(model, E4M3, E4M3, FP16)
    # its internals are quantized where the old processor quantized them: not k
    assert {k for k in compat.session_of(model).points if k[0] == "1"} == {
        ("1", p, p) for p in ("q", "scores", "probs", "v", "context")}
    assert {k[0] for k in compat.session_of(model).points} == {"0", "1"}
    compat.detach(model)
    replace_layers(model, E4M3, E4M3, FP16, mapping=[nn.Linear])  # not mapped: its Linears are layers like any
    assert {k[0] for k in compat.session_of(model).points} == {"0", "1.to_q", "1.to_k", "1.to_v", "1.to_out.0"}
    compat.detach(model)
