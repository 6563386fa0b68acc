"""INT-FP-QSim's named quantizers against independent references.

* ``E4M3`` / ``FP16``: the qtorch quantizers INT-FP-QSim built them from
  (``quantizer(FloatingPoint(...), forward_rounding="nearest")``), bit for bit
  on normal-range inputs, gradient included; qtorch's documented deviations
  (NaN, signed zero, subnormal double rounding: see
  ``tests/formats/test_interop.py``) are asserted where they show.
* ``BF16``: ``x.to(torch.bfloat16).float()`` and its autograd, bit for bit.
* ``INT8`` / ``INT4``: a hand transcription of TensorRT's ``fake_tensor_quant``
  arithmetic (``round(x * qmax/amax) / (qmax/amax)``, narrow range, amax <=
  2^-24 -> 0), bit for bit (tests/compat/test_golden.py: against the old tool).
* ``E1M2`` / ``E2M1``: a float64 transcription of ``quantize_to_fp``'s formula
  (real-valued exponent bias from the amax, per-element ``2^floor(log2|x| +
  bias)`` steps), with the same near-tie allowance; and hand-computed grids.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from qsim_hooks.compat import (
    BF16,
    E1M2,
    E2M1,
    E4M3,
    FP16,
    INT4,
    INT8,
    CastQuantizer,
    FloatQuantizer,
    IntQuantizer,
    quantize_to_fp,
    quantize_to_int,
)
from qsim_hooks.formats import Format, as_format

from ..formats._reference import all_bf16, assert_same_bits, random_f32

pytestmark = pytest.mark.usefixtures("eager_kernels")


# ---------------------------------------------------------------------------
# References
# ---------------------------------------------------------------------------
def trt_fake_quant(x: torch.Tensor, amax: torch.Tensor, num_bits: int, unsigned: bool = False) -> torch.Tensor:
    """TensorRT pytorch-quantization's _tensor_quant + FakeTensorQuantFunction, narrow range."""
    max_bound = torch.tensor(2.0 ** (num_bits - 1 + int(unsigned)) - 1.0)
    min_bound = 0.0 if unsigned else -max_bound
    amax = amax.float()
    scale = max_bound / amax
    zero = amax <= 1.0 / (1 << 24)
    scale = torch.where(zero, torch.zeros_like(scale), scale)
    out = torch.clamp((x * scale).round(), min_bound, max_bound)
    scale = torch.where(zero, torch.ones_like(scale), scale)
    return out / scale


def aimet_quantize_to_fp(x: torch.Tensor, mantissa_bits: int, exponent_bits: int, maxval: torch.Tensor
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """quantize_to_fp's formula in float64; returns the result and x / step (for tie detection)."""
    maxval = (maxval.float() + 1e-10).double()
    x = x.double()
    M, E = mantissa_bits, exponent_bits
    bias = 2**E - torch.log2(maxval) + math.log2(2 - 2.0**-M) - 1
    xc = torch.minimum(torch.maximum(x, -maxval), maxval)
    log_scales = torch.clamp(torch.floor(torch.log2(xc.abs()) + bias), min=1.0)
    scales = 2.0 ** (log_scales - M - bias)
    return torch.round(xc / scales) * scales, xc / scales


def _near_tie(q: torch.Tensor, tol: float = 1e-5) -> torch.Tensor:
    frac = q.double().abs() % 1.0
    return (frac - 0.5).abs() < tol


def _assert_codes_match(y: torch.Tensor, ref: torch.Tensor, q: torch.Tensor, what: str) -> None:
    """Equal within a float32 ulp, or (rarely) one grid step apart at an input within 1e-5 of a tie."""
    y, ref = y.double(), ref.double()
    close = (y - ref).abs() <= 2.0**-22 * ref.abs() + 1e-30
    bad = ~close & ~_near_tie(q)
    assert not bool(bad.any()), f"{what}: {int(bad.sum())} differ away from ties, e.g. " \
                                f"{y[bad][:3].tolist()} vs {ref[bad][:3].tolist()}"
    assert int((~close).sum()) <= max(2, y.numel() // 100_000), f"{what}: too many tie flips"


# ---------------------------------------------------------------------------
# E4M3 / FP16: qtorch
# ---------------------------------------------------------------------------
@pytest.mark.parametrize(("quant", "e", "m", "top"), [(E4M3, 4, 3, 480.0), (FP16, 5, 10, 131008.0)],
                         ids=["E4M3", "FP16"])
def test_qtorch_casts(qtorch, quant: CastQuantizer, e: int, m: int, top: float) -> None:
    ref = qtorch.quantizer(forward_number=qtorch.FloatingPoint(exp=e, man=m), forward_rounding="nearest")
    g = torch.Generator().manual_seed(e)
    x = torch.cat([torch.randn(100_000, generator=g) * 50, torch.linspace(-top * 2, top * 2, 20_001)])
    x = x[x.abs() >= 2.0 ** (2 - 2 ** (e - 1))]  # the normal range: qtorch rounds correctly there
    assert_same_bits(quant(x), ref(x), inputs=x, what=quant.name)
    assert quant.max == top
    assert quant(torch.tensor([1e30, -float("inf")])).tolist() == [top, -top]
    # the whole float32 range, qtorch's documented deviations aside
    xr = random_f32(200_000, seed=e, finite=True)
    theirs, ours = ref(xr), quant(xr)
    same = (ours == theirs) | (torch.isnan(ours) & torch.isnan(theirs))
    assert bool((xr[~same].abs() < 2.0 ** (2 - 2 ** (e - 1))).all()), "only subnormal double rounding differs"
    # gradient: qtorch's quantizer passes it straight through
    xg = (torch.randn(50) * 3).requires_grad_()
    gr = torch.randn(50)
    quant(xg).backward(gr)
    assert torch.equal(xg.grad, gr)


def test_e4m3_hand_values() -> None:
    x = torch.tensor([1.0625, 1.1875, 17.0, 448.0, 464.0, 500.0, 2.0**-10, -(2.0**-10), float("nan")])
    y = E4M3(x)
    # ties away from zero; 464 and 480 are numbers in the qtorch convention; NaN stays NaN
    assert y[:8].tolist() == [1.125, 1.25, 18.0, 448.0, 480.0, 480.0, 2.0**-9, -(2.0**-9)]
    assert torch.isnan(y[8])
    assert FP16(torch.tensor([65504.0, 65520.0, 2.0**-25])).tolist() == [65504.0, 65536.0, 2.0**-24]


def test_nan_and_signed_zero_differ_from_qtorch(qtorch) -> None:
    ref = qtorch.quantizer(forward_number=qtorch.FloatingPoint(exp=4, man=3), forward_rounding="nearest")
    x = torch.tensor([float("nan"), -0.0])
    assert ref(x)[0].item() == 480.0 and torch.isnan(E4M3(x)[0])
    assert not torch.signbit(ref(x)[1]) and torch.signbit(E4M3(x)[1])


# ---------------------------------------------------------------------------
# BF16: x.to(torch.bfloat16).float()
# ---------------------------------------------------------------------------
def test_bf16_matches_cast_and_its_autograd() -> None:
    x = torch.cat([all_bf16(), random_f32(200_000, seed=40)])
    assert_same_bits(BF16(x), x.to(torch.bfloat16).float(), inputs=x, what="BF16")
    assert BF16(torch.tensor([3.4e38]))[0].item() == float("inf"), "overflow to Inf, as the cast"
    xg = (torch.randn(1000) * 10).requires_grad_()
    g = torch.randn(1000) * torch.logspace(-3, 3, 1000)
    BF16(xg).backward(g)
    xr = xg.detach().clone().requires_grad_()
    xr.to(torch.bfloat16).float().backward(g)
    assert_same_bits(xg.grad, xr.grad, what="BF16 gradient (rounded to bf16 by the cast's autograd)")
    assert not torch.equal(xg.grad, g)


def test_casts_take_no_static_scale() -> None:
    for q in (E4M3, FP16, BF16):
        with pytest.raises(TypeError, match="static_scale"):
            q(torch.randn(4), static_scale=1.0)
        with pytest.raises(TypeError, match="static_scale"):
            q(torch.randn(4), amax=1.0)
        with pytest.raises(TypeError, match="unexpected keyword"):
            q(torch.randn(4), calibration="max")


# ---------------------------------------------------------------------------
# INT8 / INT4: TensorRT
# ---------------------------------------------------------------------------
@pytest.mark.parametrize(("quant", "bits"), [(INT8, 8), (INT4, 4)], ids=["INT8", "INT4"])
def test_int_dynamic_matches_tensorrt(quant: IntQuantizer, bits: int) -> None:
    g = torch.Generator().manual_seed(bits)
    x = torch.randn(200_000, generator=g) * 3
    amax = x.abs().max()
    qmax = 2 ** (bits - 1) - 1
    assert torch.equal(quant(x), trt_fake_quant(x, amax, bits))
    assert quant(x).abs().max().item() == pytest.approx(amax.item(), rel=1e-6)
    assert len(torch.unique(quant(torch.linspace(-2, 2, 10_001)))) == 2 * qmax + 1, "narrow range: -qmax..qmax"


def test_int8_hand_values() -> None:
    x = torch.tensor([1.0, 0.5, -1.27, 0.004, 0.0039, -0.006, 2.0])
    y = INT8(x, static_scale=1.27)  # step 0.01
    assert y.tolist() == pytest.approx([1.0, 0.5, -1.27, 0.0, 0.0, -0.01, 1.27], abs=1e-7)
    y = INT4(torch.tensor([7.0, 3.5, 2.5, -10.0, 0.49]), static_scale=7.0)  # step 1, ties to even
    assert y.tolist() == [7.0, 4.0, 2.0, -7.0, 0.0]


@pytest.mark.parametrize("form", ["float", "0d-tensor", "numpy-scalar", "list1"])
def test_int_static_scale_forms(form: str) -> None:
    x = torch.randn(1000) * 2
    value = {"float": 1.5, "0d-tensor": torch.tensor(1.5), "numpy-scalar": np.float32(1.5),
             "list1": [1.5]}[form]
    assert torch.equal(INT8(x, static_scale=value), trt_fake_quant(x, torch.tensor(1.5), 8)), form
    assert INT8(x, static_scale=value).abs().max().item() == pytest.approx(1.5, rel=1e-6)


def test_int_static_per_channel_from_calibration() -> None:
    # calibrate_weights attaches a numpy array shaped [C, 1, 1, 1] to a conv weight
    w = torch.randn(6, 3, 3, 3)
    amax = w.abs().amax(dim=(1, 2, 3), keepdim=True).numpy() * 0.7
    amax[2] = 0.0  # TensorRT quantizes a channel with amax <= 2^-24 to zero
    y = INT8(w, static_scale=amax)
    assert torch.equal(y, trt_fake_quant(w, torch.from_numpy(amax), 8))
    assert bool((y[2] == 0).all())
    # the same along a trailing axis (numpy broadcasting), and for a ConvTranspose-style axis 1
    a1 = torch.rand(3) + 0.5
    assert torch.equal(INT4(w, static_scale=a1.reshape(3, 1, 1)), trt_fake_quant(w, a1.reshape(3, 1, 1), 4))


def test_int_percentile_uses_int_fp_qsim_rule() -> None:
    x = torch.randn(1001) * 2
    for p in (99.0, 99.99, 50.0):
        s = np.sort(np.abs(x.numpy()))
        idx = p / 100 * (len(s) - 1)
        lo, hi = math.floor(idx), math.ceil(idx)
        amax = s[lo] if lo == hi else (s[lo] + s[hi]) / 2
        ref = trt_fake_quant(x, torch.tensor(amax, dtype=torch.float32), 8)
        assert torch.equal(INT8(x, calibration="percentile", percentile=p), ref), f"p{p}"


def test_int_dynamic_per_channel_axis() -> None:
    x = torch.randn(5, 40) * torch.arange(1, 6).reshape(5, 1)
    y = INT8(x, per_channel_axis=0)
    amax = x.abs().amax(dim=1, keepdim=True)
    assert torch.equal(y, trt_fake_quant(x, amax, 8)), "dynamic per channel"


def test_int_zero_and_unsigned() -> None:
    assert INT8(torch.zeros(8)).tolist() == [0.0] * 8
    assert INT8(torch.full((4,), 1e-9)).tolist() == [0.0] * 4  # amax <= 2^-24: zero, as TensorRT
    x = torch.rand(500) * 3
    assert torch.equal(INT8(x, unsigned=True), trt_fake_quant(x, x.max(), 8, unsigned=True)), "unsigned"
    assert len(torch.unique(INT4(x, unsigned=True))) == 16
    with pytest.raises(ValueError, match="negative"):
        INT8(torch.tensor([-1.0, 1.0]), unsigned=True)


def test_int_gradient_is_clipped_ste() -> None:
    x = torch.tensor([0.5, -1.0, 1.5, -3.0, 0.99], requires_grad=True)
    INT8(x, static_scale=1.0).backward(torch.ones(5))
    assert x.grad.tolist() == [1.0, 1.0, 0.0, 0.0, 1.0]  # TensorRT: grad where |x| <= amax


def test_positional_functions() -> None:
    x = torch.randn(300)
    assert torch.equal(quantize_to_int(x, 8), INT8(x))
    assert torch.equal(quantize_to_int(x, 4, "max", 99.0, 2.0), INT4(x, static_scale=2.0))
    assert torch.equal(quantize_to_fp(x, 1, 2), E2M1(x))
    assert torch.equal(quantize_to_fp(x, 2, 1, "max", 0, 99.0, 3.0), E1M2(x, static_scale=3.0))


# ---------------------------------------------------------------------------
# E1M2 / E2M1: quantize_to_fp
# ---------------------------------------------------------------------------
@pytest.mark.parametrize(("quant", "M", "E"), [(E1M2, 2, 1), (E2M1, 1, 2)], ids=["E1M2", "E2M1"])
@pytest.mark.parametrize("scaling", ["dynamic", "static", "percentile"])
def test_fp_matches_quantize_to_fp(quant: FloatQuantizer, M: int, E: int, scaling: str) -> None:
    g = torch.Generator().manual_seed(M * 10 + E)
    x = torch.randn(100_000, generator=g) * 0.3
    if scaling == "dynamic":
        y, maxval = quant(x), x.abs().max()
    elif scaling == "static":
        maxval = torch.tensor(0.5)
        y = quant(x, static_scale=0.5)
    else:
        s = np.sort(np.abs(x.numpy()))
        idx = 99.0 / 100 * (len(s) - 1)
        maxval = torch.tensor((s[math.floor(idx)] + s[math.ceil(idx)]) / 2)
        y = quant(x, calibration="percentile")
    ref, q = aimet_quantize_to_fp(x, M, E, maxval)
    _assert_codes_match(y, ref, q, f"{quant.name} {scaling}")


def test_fp_hand_grids() -> None:
    # static_scale equal to the format's max: the plain E2M1 / E1M2 grids, up to the float32 log2 / pow of
    # INT-FP-QSim's arithmetic (its bias is not exactly an integer, so the grid is off by an ulp or so)
    x = torch.tensor([0.3, 0.8, 1.2, 2.4, 5.1, 7.0, -100.0, 0.0])
    assert E2M1(x, static_scale=6.0).tolist() == pytest.approx([0.5, 1.0, 1.0, 2.0, 6.0, 6.0, -6.0, 0.0], rel=1e-6)
    x = torch.tensor([0.2, 0.8, 1.2, 1.8, 3.6, -0.3])
    assert E1M2(x, static_scale=3.5).tolist() == pytest.approx([0.0, 1.0, 1.0, 2.0, 3.5, -0.5], rel=1e-6)
    # a scale of 2: every value doubles
    y = E2M1(torch.tensor([1.0, 3.0, 5.2, 11.0]), static_scale=12.0)
    assert y.tolist() == pytest.approx([1.0, 3.0, 6.0, 12.0], rel=1e-6)
    assert E1M2.max == 3.5 and E2M1.max == 6.0 and E2M1.is_scaled


def test_no_format_is_built_per_call(monkeypatch) -> None:
    # issue 12: building a format per call leaked its kernel parameters
    import qsim_hooks.compat.quantizers as q

    def boom(*args, **kwargs):
        raise AssertionError("a format was built per call")

    monkeypatch.setattr(q, "FloatFormat", boom)
    monkeypatch.setattr(q, "IntFormat", boom)
    x = torch.randn(64, 8)
    for quant in (E2M1, E1M2, INT8, INT4):
        quant(x)
        quant(x, static_scale=torch.full((64, 1), 2.0))
    quantize_to_fp(x, 1, 2)
    quantize_to_int(x, 8)


def test_fp_static_per_channel_layout() -> None:
    w = torch.randn(4, 5, 3)
    amax = torch.tensor([0.5, 1.0, 2.0, 4.0])
    y = E2M1(w, static_scale=amax)  # 1-d: laid out along per_channel_axis (0)
    for c in range(4):
        ref, q = aimet_quantize_to_fp(w[c], 1, 2, amax[c])
        _assert_codes_match(y[c], ref, q, f"channel {c}")
    a2 = torch.tensor([0.5, 1.0, 2.0, 4.0, 8.0])
    y2 = E2M1(w, static_scale=a2, per_channel_axis=1)
    for c in range(5):
        ref, q = aimet_quantize_to_fp(w[:, c], 1, 2, a2[c])
        _assert_codes_match(y2[:, c], ref, q, f"axis 1 channel {c}")


def test_fp_dynamic_is_per_tensor_even_with_axis() -> None:
    x = torch.randn(3, 50) * torch.tensor([[1.0], [10.0], [100.0]])
    assert torch.equal(E2M1(x, per_channel_axis=0), E2M1(x))


def test_fp_gradient_is_clipped_ste() -> None:
    x = torch.tensor([0.3, -0.9, 1.2, -5.0], requires_grad=True)
    E2M1(x, static_scale=1.0).backward(torch.ones(4))
    assert x.grad.tolist() == [1.0, 1.0, 0.0, 0.0]


# ---------------------------------------------------------------------------
# As formats, dtypes, errors
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("quant", [INT8, INT4, E4M3, FP16, BF16, E1M2, E2M1], ids=lambda q: q.name)
def test_are_formats(quant: Format) -> None:
    assert isinstance(quant, Format)
    assert as_format(quant) is quant
    assert quant.name in repr(quant)
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        x = (torch.randn(8, 16) * 2).to(dtype)
        y = quant(x.t())
        assert y.dtype == dtype and y.shape == (16, 8)
        assert torch.isfinite(y).all()


def test_errors() -> None:
    x = torch.randn(4, 6)
    with pytest.raises(ValueError, match="calibration='mse'"):
        INT8(x, calibration="mse")
    with pytest.raises(ValueError, match="calibration='entropy'"):
        E2M1(x, calibration="entropy")
    with pytest.raises(ValueError, match="per_channel_axis"):
        INT8(x, calibration="percentile", per_channel_axis=0)
    with pytest.raises(ValueError, match="static_scale"):
        INT8(x, static_scale=-1.0)
    with pytest.raises(ValueError, match="static_scale"):
        INT8(x, static_scale=float("nan"))
    with pytest.raises(ValueError, match="static_scale"):
        INT8(x, static_scale=torch.ones(5))
    with pytest.raises(ValueError, match="does not broadcast"):
        INT8(x, static_scale=torch.ones(2, 4, 6))
    with pytest.raises(TypeError, match="static_scale"):
        INT8(x, static_scale="big")
    with pytest.raises(ValueError, match="not both"):
        INT8(x, static_scale=1.0, amax=1.0)
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        INT8([1.0, 2.0])
    with pytest.raises(TypeError, match="dtype"):
        E2M1(torch.arange(4))
    with pytest.raises(TypeError):
        INT8(x, "max")  # as in INT-FP-QSim (a partial with num_bits=...), options are keywords
