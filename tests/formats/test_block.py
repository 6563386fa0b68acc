"""Block formats: OCP MX, NVFP4, qtorch BFP, ABFP.

References are independent of the block kernel: the OCP spec's worked values,
hand-computed blocks, PyTorch's own float8 casts (MX FP8, NVFP4's E4M3 scale),
a table-lookup E2M1 rounding, ``torch.frexp`` for exponents, and qtorch.
"""

from __future__ import annotations

import math
import os

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import qsim_hooks as qh
from qsim_hooks.formats import FloatFormat, GradSpec, Rounding, as_format, get, kernels
from qsim_hooks.formats.block import ABFP, BlockFormat, IntElement, abfp, bfp, from_qtorch_bfp, mx, nvfp4

MX_NAMES = ["mxfp8_e4m3", "mxfp8_e5m2", "mxfp6_e3m2", "mxfp6_e2m3", "mxfp4", "mxint8"]
ALL_NAMES = MX_NAMES + ["nvfp4", "abfp8"]
# element max, emax_elem (exponent of the largest power of two), element bits
MX_ELEM = {"mxfp8_e4m3": (448.0, 8, 8), "mxfp8_e5m2": (57344.0, 15, 8), "mxfp6_e3m2": (28.0, 4, 6),
           "mxfp6_e2m3": (7.5, 2, 6), "mxfp4": (6.0, 2, 4), "mxint8": (127 / 64, 0, 8)}
OCP_BLOCK = [485.0, 475.0, 400.0, -485.0, -475.0, -450.0, 2.0**-6, -(2.0**-6)]
E2M1_GRID = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0])


def _bits_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and torch.equal(a.float().view(torch.int32), b.float().view(torch.int32))


def _frexp_floor_log2(a: torch.Tensor) -> torch.Tensor:
    _, e = torch.frexp(a)
    return (e - 1).to(torch.float32)


def _e2m1_rne(v: torch.Tensor) -> torch.Tensor:
    """Round onto E2M1 by table lookup, ties to the even code (even index), saturating at 6."""
    a = v.abs().clamp(max=6.0)
    d = (a.unsqueeze(-1) - E2M1_GRID).abs()
    best = d.min(dim=-1, keepdim=True).values
    cand = (d == best)
    idx = torch.arange(8)
    score = torch.where(cand, idx % 2, torch.full_like(idx, 2))  # among ties, the even index
    pick = score.argmin(dim=-1)
    return torch.sign(v) * E2M1_GRID[pick]


def _mx_fp8_reference(x: torch.Tensor, dtype: torch.dtype, elem_max: float, emax: int, k: int) -> torch.Tensor:
    """OCP section 6.3 on the last dim with PyTorch's float8 cast as the element rounding."""
    xb = x.reshape(-1, k)
    amax = xb.abs().amax(-1, keepdim=True)
    e = torch.clamp(_frexp_floor_log2(amax) - emax, -127, 127)
    e = torch.where(amax == 0, torch.full_like(e, -127.0), e)
    scale = torch.pow(2.0, e.double()).float()
    q = (xb / scale).clamp(-elem_max, elem_max).to(dtype).float()
    return (q * scale).reshape(x.shape)


def _nvfp4_reference(x: torch.Tensor, k: int = 16) -> torch.Tensor:
    """NVIDIA's / torchao's two-level recipe in plain torch (torch's e4m3fn cast for the block scale)."""
    t = x.abs().amax() / (6.0 * 448.0)
    xb = x.reshape(-1, k)
    sb = ((xb.abs().amax(-1, keepdim=True) / 6.0) / t).clamp(max=448.0).to(torch.float8_e4m3fn).float()
    s = t * sb
    q = _e2m1_rne(xb / torch.where(s == 0, torch.ones_like(s), s))
    return (q * s).reshape(x.shape)


# ---------------------------------------------------------------------------
# the OCP example and hand-computed blocks
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("pad", [False, True], ids=["k8", "k32-zero-padded"])
@pytest.mark.parametrize("rounding,third", [("nearest_away", 416.0), ("nearest_even", 384.0)],
                         ids=["ties-away", "ties-even"])
def test_ocp_mxfp8_e4m3_example(pad, rounding, third):
    x = torch.tensor(OCP_BLOCK + ([0.0] * 24 if pad else []))
    fmt = mx("e4m3", 32 if pad else 8, rounding=rounding)
    assert fmt.scales(x).tolist() == [1.0]  # floor(log2 485) - 8 = 0
    want = [448.0, 448.0, third, -448.0, -448.0, -448.0, 2.0**-6, -(2.0**-6)]
    assert fmt(x)[:8].tolist() == want
    if pad:
        assert fmt(x)[8:].abs().max().item() == 0.0


def test_mxint8_grid_and_saturation():
    fmt = get("mxint8")
    x = torch.tensor([1.999, -1.999, 1.0, 0.3, -0.01, 1 / 128, 3 / 128, 0.0])
    assert fmt.scales(x).tolist() == [1.0]
    y = fmt(x)
    assert (y * 64 == torch.round(y * 64)).all()  # on the 1/64 grid
    # saturates at 127/64 (symmetric: -2 is left unused, as OCP allows)
    assert y.tolist() == [1.984375, -1.984375, 1.0, 19 / 64, -1 / 64, 0.0, 2 / 64, 0.0]
    full = BlockFormat(IntElement(8, narrow=False), 8)
    assert full(x)[:2].tolist() == [1.984375, -2.0]
    # a random tensor: every element of every block on its block's 1/64 * scale grid
    r = torch.randn(4, 96) * 10
    s = fmt.scales(r).repeat_interleave(32, dim=-1)
    k = fmt(r) / s * 64
    assert torch.equal(k, torch.round(k)) and k.abs().max() <= 127


def test_mxfp4_hand_block_and_scale_roundings():
    x = torch.tensor([0.9, -0.1, 0.02, 3.5, 0.0, 0.0, 0.0, 0.0])
    floor, ceil, near = (mx("e2m1", 8, scale_rounding=r) for r in ("floor", "ceil", "nearest"))
    # floor: 2^(floor(log2 3.5) - 2) = 0.5; 3.5/0.5 = 7 saturates to 6
    assert floor.scales(x).tolist() == [0.5]
    assert floor(x)[:4].tolist() == [1.0, -0.0, 0.0, 3.0]
    # ceil: 2^ceil(log2(3.5/6)) = 1, nothing saturates; 3.5 ties to the even 4
    assert ceil.scales(x).tolist() == [1.0]
    assert ceil(x)[:4].tolist() == [1.0, -0.0, 0.0, 4.0]
    # nearest: round(log2(3.5/6)) = round(-0.78) = -1
    assert near.scales(x).tolist() == [0.5]


# amax, then (scale, quantized amax) for floor, ceil, nearest
@pytest.mark.parametrize("amax,floor,ceil,nearest", [
    (480.0, (1.0, 448.0), (2.0, 480.0), (1.0, 448.0)),  # log2(480/448) = 0.10: floor saturates
    (300.0, (1.0, 288.0), (1.0, 288.0), (0.5, 224.0)),  # log2(300/448) = -0.58; OCP divides by 2^8
    (448.0, (1.0, 448.0), (1.0, 448.0), (1.0, 448.0)),
    (600.0, (2.0, 576.0), (2.0, 576.0), (1.0, 448.0)),  # log2(600/448) = 0.42
], ids=["480", "300", "448", "600"])
def test_e8m0_scale_rounding_modes(amax, floor, ceil, nearest):
    x = torch.tensor([amax, 1.0, -3.0, 0.5])
    for mode, (scale, top) in (("floor", floor), ("ceil", ceil), ("nearest", nearest)):
        fmt = mx("e4m3", 4, scale_rounding=mode)
        assert fmt.scales(x).item() == scale, mode
        assert fmt(x)[0].item() == top, mode
    assert (x / ceil[0]).abs().max() <= 448  # ceil: nothing saturates


def test_ties_zeros_and_all_zero_blocks():
    fmt = mx("e4m3", 4)  # scale 1 when amax in [256, 512)
    x = torch.tensor([[300.0, 17.0, -17.0, 0.0],   # 17 is a tie between 16 and 18 (spacing 2)
                      [0.0, 0.0, 0.0, 0.0],
                      [-0.0, 0.0, -0.0, 0.0]])
    y = fmt(x)
    assert y[0].tolist() == [288.0, 16.0, -16.0, 0.0]   # ties to even
    assert mx("e4m3", 4, rounding="away")(x)[0].tolist() == [288.0, 18.0, -18.0, 0.0]
    assert torch.equal(y[1:], x[1:]) and not torch.isnan(y).any()
    assert torch.signbit(y[2]).tolist() == [True, False, True, False]  # -0 stays -0
    assert fmt.scales(x)[1:].flatten().tolist() == [2.0**-127] * 2  # E8M0's smallest scale
    for name in ALL_NAMES:
        z = torch.zeros(3, 64)
        assert torch.equal(get(name)(z), z), name


@pytest.mark.parametrize("name", ALL_NAMES)
@pytest.mark.parametrize("bad", [float("inf"), float("-inf"), float("nan")], ids=["inf", "-inf", "nan"])
def test_inf_nan_poison_only_their_block(name, bad):
    fmt = get(name)
    k = fmt.block_size
    x = torch.randn(2, 3 * k)
    x[1, k + 3] = bad
    y = fmt(x)
    assert torch.isnan(y[1, k:2 * k]).all()  # the E8M0 NaN scale: every element of the block
    keep = torch.ones_like(x, dtype=torch.bool)
    keep[1, k:2 * k] = False
    assert torch.isfinite(y[keep]).all()
    clean = x.clone()
    clean[1, k:2 * k] = 0.0
    if name not in ("nvfp4",):  # NVFP4's tensor scale comes from the finite amax: same here
        assert torch.equal(fmt(clean)[keep], y[keep])
    assert torch.isnan(fmt.scales(x)[1, 1])


def test_ragged_last_block_gets_its_own_scale():
    fmt = mx("e4m3", 32)
    x = torch.cat([torch.randn(32) * 1000, torch.randn(8) * 1e-3])  # 40 = 32 + a ragged 8
    y = fmt(x)
    assert fmt.scales(x).shape == (2,)
    assert torch.equal(y[32:], mx("e4m3", 8)(x[32:]))  # the short block alone
    assert torch.equal(y, fmt(torch.cat([x, torch.zeros(24)]))[:40])  # = zero padding, cut
    assert (y[32:] != 0).all()  # not flushed by the big block's scale


@pytest.mark.parametrize("axis", [0, 1, 2, -1, -2, -3])
def test_every_axis(axis):
    x = torch.randn(5, 6, 20) * torch.logspace(-3, 3, 20)
    fmt = mx("e5m2", 8, axis=axis)
    y = fmt(x)
    ref = mx("e5m2", 8)(x.movedim(axis, -1).contiguous()).movedim(-1, axis)
    assert _bits_equal(y, ref)
    # hand check of one block: along ``axis`` starting at index 0 of every other dim
    line = x.movedim(axis, -1)[(0,) * 2][:8]
    scale = 2.0 ** (_frexp_floor_log2(line.abs().max()) - 15)
    want = (line / scale).clamp(-57344, 57344).to(torch.float8_e5m2).float() * scale
    assert torch.equal(y.movedim(axis, -1)[(0,) * 2][:8], want)


def test_axis_none_means_last_dim_and_with_axis_fills_it():
    fmt = get("mxfp4")
    assert fmt.axis is None and fmt.scaling.granularity == "block"
    x = torch.randn(4, 64)
    assert torch.equal(fmt(x), mx("e2m1", axis=-1)(x))
    w = fmt.with_axis(1)
    assert w.axis == 1 and w.with_axis(0).axis == 1  # an explicit axis is kept
    assert w.granularity == "block(32, axis=1) e8m0-floor"
    t = bfp(8)  # one exponent per tensor: no axis to fill
    assert t.with_axis(1) is t
    assert torch.equal(fmt(torch.tensor(3.3)), fmt(torch.tensor([3.3]))[0])  # 0-d tensors


# ---------------------------------------------------------------------------
# independent references
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("name,dtype", [("mxfp8_e4m3", torch.float8_e4m3fn), ("mxfp8_e5m2", torch.float8_e5m2)])
def test_mxfp8_matches_torch_float8_casts(name, dtype):
    x = torch.randn(64, 256) * torch.exp(torch.randn(64, 256) * 3)
    x[0, :32] = 0.0
    elem_max, emax, _ = MX_ELEM[name]
    assert _bits_equal(get(name)(x), _mx_fp8_reference(x, dtype, elem_max, emax, 32))


def test_mxfp4_matches_table_rounding():
    x = torch.randn(32, 128) * torch.exp(torch.randn(32, 128))
    xb = x.reshape(-1, 32)
    scale = 2.0 ** (_frexp_floor_log2(xb.abs().amax(-1, keepdim=True)) - 2)
    want = (_e2m1_rne(xb / scale) * scale).reshape(x.shape)
    assert torch.equal(get("mxfp4")(x), want)


def test_nvfp4_matches_two_level_recipe():
    x = torch.randn(48, 128) * torch.exp(torch.randn(48, 1) * 2)
    fmt = get("nvfp4")
    assert fmt.block_size == 16 and fmt.tensor_scale
    assert torch.equal(fmt(x), _nvfp4_reference(x))
    # the per-tensor level: a static (calibrated) amax replaces the measured one
    a = float(x.abs().max()) * 4
    t = a / (6 * 448)
    s = fmt.scales(x, amax=a)
    assert torch.allclose(s / t, (s / t).to(torch.float8_e4m3fn).float())  # block scales on E4M3
    # MX has no tensor level: a per-call amax is ignored
    assert torch.equal(get("mxfp4")(x, amax=123.0), get("mxfp4")(x))


def test_nvfp4_scale_options():
    x = torch.randn(16, 64) * torch.exp(torch.randn(16, 1))
    up = nvfp4(scale_rounding="ceil")  # cuDNN's quantize_round_up: no element saturates
    s = up.scales(x).repeat_interleave(16, dim=-1)
    assert ((x / s).abs() <= 6.0 * (1 + 1e-6)).all()
    assert ((x / get("nvfp4").scales(x).repeat_interleave(16, dim=-1)).abs() > 6.0).any()  # RNE can
    one = nvfp4(tensor_scale=False)  # a single E4M3 level
    sb = (x.reshape(-1, 16).abs().amax(-1) / 6.0).clamp(max=448.0).to(torch.float8_e4m3fn).float()
    assert torch.equal(one.scales(x).flatten(), sb)


def test_nvfp4_hand_example():
    # one 16-block holding the tensor amax 3.5, and a second small block
    x = torch.tensor([0.9, -0.1, 0.02, 3.5] + [0.0] * 12 + [0.05, 0.01, -0.03, 0.002] + [0.0] * 12)
    y = get("nvfp4")(x)
    t = 3.5 / 2688
    assert torch.allclose(y[:4], torch.tensor([0.875, -0.0, 0.0, 3.5]))
    s2 = 6.5 * t  # 0.05/6/t = 6.4 -> E4M3 6.5
    assert torch.allclose(y[16:20], torch.tensor([6 * s2, 1 * s2, -4 * s2, 0.0]), rtol=1e-6)


@pytest.mark.parametrize("wl", [2, 4, 8, 16])
@pytest.mark.parametrize("dim", [-1, 0, 1, 2])
def test_qtorch_block_quantize_agreement(wl, dim):
    qtorch = pytest.importorskip("qtorch")
    from qtorch.quant import block_quantize

    x = torch.randn(6, 33, 5) * torch.exp(torch.randn(6, 33, 5) * 3)
    fmt = as_format(qtorch.BlockFloatingPoint(wl=wl, dim=dim))
    assert isinstance(fmt, BlockFormat) and fmt.qtorch_compat
    assert _bits_equal(fmt(x), block_quantize(x, wl, dim, "nearest"))


def test_qtorch_ties_and_native_rounding():
    qtorch = pytest.importorskip("qtorch")
    from qtorch.quant import block_quantize

    q = 2.0**-6  # wl=8, amax 1: quantum 2^(0 - 6)
    x = torch.tensor([1.0, q / 2, -q / 2, 3 * q / 2, -3 * q / 2, 5 * q / 2, -5 * q / 2])
    ref = block_quantize(x, 8, -1, "nearest")
    assert ref.tolist() == [1.0, q, 0.0, 2 * q, -q, 3 * q, -2 * q]  # qtorch: ties toward +inf
    assert torch.equal(from_qtorch_bfp(qtorch.BlockFloatingPoint(8, -1))(x), ref)
    # the native BFP format uses the engine's rounding modes instead
    assert bfp(8)(x).tolist() == [1.0, 0.0, -0.0, 2 * q, -2 * q, 2 * q, -2 * q]
    assert bfp(8, rounding="away")(x).tolist() == [1.0, q, -q, 2 * q, -2 * q, 3 * q, -3 * q]
    # qtorch compat == native nearest_even except at ties
    r = torch.randn(1000)
    assert torch.equal(bfp(8, qtorch_compat=True)(r), bfp(8)(r))


# ---------------------------------------------------------------------------
# rounding modes, gradients, dtypes, names
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("rounding", list(Rounding), ids=[r.value for r in Rounding])
@pytest.mark.parametrize("name", ["mxfp8_e4m3", "mxfp6_e2m3", "mxfp4", "mxint8", "nvfp4"])
def test_every_element_rounding_mode(name, rounding):
    base = get(name)
    fmt = BlockFormat(base.element, base.block_size, None, "block", base.scale, base.scale_rounding,
                      base.tensor_scale, rounding)
    assert fmt.rounding == rounding
    x = torch.randn(8, 64) * 3
    y = fmt(x, generator=torch.Generator().manual_seed(3))
    s = fmt.scales(x).repeat_interleave(fmt.block_size, dim=-1)
    el = fmt.element
    v = x / s
    if isinstance(el, FloatFormat):
        lo = el.cast(v.contiguous(), torch.Generator().manual_seed(3))
        if rounding != Rounding.STOCHASTIC:
            assert torch.equal(y, lo * s)
        on_grid = FloatFormat(el.exp_bits, el.man_bits, specials=el.specials).cast((y / s).contiguous())
        assert torch.allclose(on_grid, y / s, rtol=1e-6, atol=0)  # exact for power-of-two scales
    else:
        k = y / s * el.per_unit
        assert torch.equal(k, torch.round(k))
    assert ((y / s).abs() <= el.max * (1 + 1e-6)).all()
    if rounding == Rounding.STOCHASTIC:
        y2 = fmt(x, generator=torch.Generator().manual_seed(3))
        assert torch.equal(y, y2)  # seeded


def test_stochastic_rounding_is_unbiased(eager_kernels):
    fmt = mx("e2m1", 32, rounding="stochastic")
    x = torch.full((8000, 32), 0.7)  # > kernels.COMPILE_MIN_NUMEL: eager_kernels keeps it from compiling
    x[:, 0] = 4.0  # scale 2^(2-2) = 1: 0.7 lies between 0.5 and 1.0
    y = fmt(x, generator=torch.Generator().manual_seed(0))[:, 1:]
    assert set(y.unique().tolist()) == {0.5, 1.0}
    assert abs(y.mean().item() - 0.7) < 0.005


@pytest.mark.parametrize("name", ALL_NAMES)
def test_gradients_clipped_ste(name):
    fmt = get(name)
    k = fmt.block_size
    x = torch.randn(2, 2 * k)
    x[0, 0] = 7.9 * fmt.max
    x[1, 1] = float("nan")
    xr = x.clone().requires_grad_()
    y = fmt(xr)
    y.backward(torch.ones_like(y))
    s = fmt.scales(x).repeat_interleave(k, dim=-1)
    in_range = x.abs() <= fmt.max * s * (1 + 2.0**-20)  # not clipped (in the tensor's units)
    assert torch.equal(xr.grad, in_range.float())
    assert xr.grad[1, :k].sum() == 0  # the NaN block passes no gradient
    ste = dataclass_replace(fmt, grad=GradSpec("ste"))
    xs = x.clone().requires_grad_()
    ste(xs).sum().backward()
    assert torch.equal(xs.grad, torch.ones_like(x))


def dataclass_replace(fmt, **kw):
    import dataclasses

    return dataclasses.replace(fmt, **kw)


def test_mx_floor_saturation_gives_zero_gradient():
    x = torch.tensor([480.0, 1.0, -2.0, 3.0]).requires_grad_()
    mx("e4m3", 4)(x).sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 1.0]  # 480 > 448 under scale 1


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", ["mxfp8_e4m3", "mxfp4", "mxint8", "nvfp4"])
def test_half_inputs(name, dtype):
    fmt = get(name)
    x = (torch.randn(4, 64) * 5).to(dtype)
    y = fmt(x)
    assert y.dtype == dtype and y.shape == x.shape
    assert torch.equal(y, fmt(x.float()).to(dtype))


@pytest.mark.parametrize("name", ALL_NAMES)
def test_names_and_descriptions(name):
    fmt = get(name)
    assert isinstance(fmt, BlockFormat) and fmt.name == name and fmt.is_scaled
    assert get(name.upper()).name == name
    if name in MX_ELEM:
        elem_max, _, bits = MX_ELEM[name]
        assert fmt.block_size == 32 and fmt.scale == "e8m0" and fmt.scale_rounding == "floor"
        assert fmt.max == elem_max and fmt.bits == bits
        assert fmt.bits_per_value == bits + 8 / 32
        assert fmt.granularity == "block(32, axis=auto) e8m0-floor"
    assert fmt.min_subnormal > 0 and fmt.spacing_at_one > 0
    assert get("mxint8").min_subnormal == get("mxint8").spacing_at_one == 1 / 64
    assert get("mxfp4").min_subnormal == 0.5 and get("mxfp4").spacing_at_one == 0.5
    assert get("nvfp4").bits_per_value == 4.5
    assert get("nvfp4").granularity == "block(16, axis=auto) e4m3-nearest x fp32/tensor"


def test_configuration_errors_name_the_field():
    with pytest.raises(ValueError, match="tensor_scale"):
        BlockFormat("e2m1", 16, tensor_scale=True)
    with pytest.raises(ValueError, match="scale_rounding"):
        mx("e4m3", scale_rounding="up")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="block_size"):
        mx("e4m3", 0)
    with pytest.raises(TypeError, match="element"):
        BlockFormat("e9m9")
    with pytest.raises(ValueError, match="qtorch_compat"):
        BlockFormat("e4m3", qtorch_compat=True)
    with pytest.raises(ValueError, match="grouping"):
        BlockFormat("e4m3", grouping="row")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="per-tensor amax"):
        get("nvfp4")(torch.randn(4, 16), amax=torch.ones(4))


# ---------------------------------------------------------------------------
# ABFP
# ---------------------------------------------------------------------------
def test_abfp_per_vector_and_per_row_tiles():
    x = torch.randn(4, 300) * 3
    fmt = abfp(8, 128)
    y = fmt(x)  # per vector: tiles of 128 along the last dim, ragged last tile of 44
    xb = torch.nn.functional.pad(x, (0, 84)).reshape(4, 3, 128)
    s = xb.abs().amax(-1, keepdim=True).to(torch.bfloat16).float()  # bf16 scales
    k = torch.round(torch.clamp((xb / s) * 127, -127, 127))
    want = ((k * s) / 127).reshape(4, 384)[:, :300]
    assert torch.equal(y, want)
    assert torch.equal(fmt.scales(x), s.squeeze(-1))
    w = torch.randn(300, 6)  # a weight whose input axis is 0: per row = tiles along axis 0
    assert torch.equal(fmt.with_axis(0)(w), fmt(w.T.contiguous()).T)


def test_abfp_matmul_output_gain():
    # a hand example: one tile of 2, 8-bit elements, a 4-bit output converter
    x = torch.tensor([[1.0, 0.5]])
    w = torch.tensor([[1.0, -1.0]])
    d = (127 * 127 - 64 * 127) / (127 * 127)  # 0.5 * 127 = 63.5 -> 64 (ties to even)
    for gain, want in ((1.0, 2 * 2 / 7), (4.0, 0.5), (16.0, 0.125)):
        # full scale n/G = 2/G; 7 steps; saturates at the full scale
        y = ABFP(tile=2, out_bits=4, gain=gain).matmul(x, w)
        assert math.isclose(y.item(), want, rel_tol=1e-6), (gain, d)
    # without an output converter it is the product of the quantized operands
    cfg = ABFP(tile=64, out_bits=None)
    a, b = torch.randn(8, 200), torch.randn(16, 200)
    ref = cfg.input_format()(a) @ cfg.weight_format()(b).T
    assert torch.allclose(cfg.matmul(a, b), ref, rtol=1e-5, atol=1e-5)
    # gain trades resolution against saturation (typical tile outputs are << n)
    err = {g: (ABFP(tile=128, out_bits=8, gain=g).matmul(a, b) - a @ b.T).pow(2).mean().item()
           for g in (1.0, 8.0, 128.0)}
    assert err[8.0] < err[1.0] and err[8.0] < err[128.0]


def test_abfp_linear_gradient_and_shapes():
    cfg = ABFP(tile=32, gain=4.0)
    x = torch.randn(2, 3, 70, requires_grad=True)
    w = torch.randn(5, 70, requires_grad=True)
    b = torch.randn(5)
    y = cfg.linear(x, w, b)
    assert y.shape == (2, 3, 5)
    y.sum().backward()
    assert torch.allclose(x.grad, torch.ones(2, 3, 5) @ w.detach())  # straight through
    with pytest.raises(ValueError, match="gain"):
        ABFP(gain=0.5)


# ---------------------------------------------------------------------------
# properties, fused path, a model
# ---------------------------------------------------------------------------
finite = st.floats(min_value=-(2.0**100), max_value=2.0**100, allow_nan=False, width=32)


@settings(max_examples=60, deadline=None)
@given(st.lists(finite, min_size=1, max_size=80), st.sampled_from(MX_NAMES))
def test_mx_properties(vals, name):
    fmt = get(name)
    x = torch.tensor(vals, dtype=torch.float32)
    y = fmt(x)
    assert torch.isfinite(y).all()
    assert torch.equal(torch.signbit(y) | (y == 0), torch.signbit(x) | (y == 0))
    s = fmt.scales(x).repeat_interleave(32)[: x.numel()]
    assert ((y / s).abs() <= fmt.max).all()
    assert torch.equal(fmt(y), y)  # idempotent under the OCP floor rule


def test_fused_kernel_matches_eager(eager_kernels):
    x = torch.randn(512, 512) * torch.exp(torch.randn(512, 1) * 4)
    x[3, 7] = float("nan")
    fmt = get("mxfp4")
    ye, me = fmt._forward(x, None, None, True)
    kernels.set_backend("compiled")  # eager_kernels restores the backend afterwards
    yc, mc = fmt._forward(x, None, None, True)
    assert not kernels._compile_failed
    assert _bits_equal(ye, yc) and torch.equal(me, mc)


@pytest.mark.parametrize("act,wgt", [("mxfp8_e4m3", "mxfp4"), ("nvfp4", "nvfp4"), ("abfp8", "abfp8")])
def test_model_with_block_weights_and_activations(act, wgt):
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(64, 48), torch.nn.ReLU(), torch.nn.Linear(48, 10))
    x = torch.randn(5, 64)
    cfg = qh.QuantConfig(input=act, weight=wgt)
    with qh.quantized(m, cfg, stats=True) as qs:
        y = m(x)
        rows = qs.stats()
    # by hand: weights blocked along the input-channel axis, activations along the last dim
    a, w = get(act), get(wgt).with_axis(1)
    h = torch.relu(torch.nn.functional.linear(a(x), w(m[0].weight), m[0].bias))
    want = torch.nn.functional.linear(a(h), w(m[2].weight), m[2].bias)
    assert torch.equal(y.detach(), want.detach())
    shown = {(r["point"], r["format"], r["granularity"]) for r in rows}
    assert ("weight", wgt, w.granularity) in shown
    assert ("input", act, a.with_axis(-1).granularity) in shown
    if act != "mxfp8_e4m3":
        return
    from rich.console import Console

    with open(os.devnull, "w") as sink:
        console = Console(record=True, width=200, file=sink)
        qs.report(console=console)
    text = console.export_text()
    assert "mxfp4" in text and "mxfp8_e4m3" in text and "block(32, axis=1) e8m0-floor" in text


def test_inside_a_users_torch_compile():
    x = torch.randn(8, 96)
    x[0, 0] = float("inf")
    f, g = get("mxfp4"), get("nvfp4")
    fn = torch.compile(lambda t: g(f(t)), fullgraph=True)  # no graph break in the block formats
    assert _bits_equal(fn(x), g(f(x)))


def test_nvfp4_tensor_amax_element_keeps_its_gradient():
    # its block scale is exactly 448 * t, but t * 448 * 6 is a rounded product
    for seed in range(20):
        x = torch.randn(4, 64, generator=torch.Generator().manual_seed(seed)).requires_grad_()
        get("nvfp4")(x).sum().backward()
        assert x.grad.flatten()[x.detach().abs().argmax()] == 1.0
