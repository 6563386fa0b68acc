"""Edges of every format: saturation at float32's and the input dtype's limits, the rounding modes'
definitions on scaled grids, usable amax values, and no leaks or host syncs on the hot path.

References are hand-computed values and the definitions themselves (toward zero:
the largest output value <= |x|; stochastic: one of the two output values around
x, on-grid values untouched), checked on values chosen where float32 rounding of
``x * (1 / scale)`` decides wrongly.
"""

from __future__ import annotations

import dataclasses
import gc
import math
import weakref

import pytest
import torch
from torch.overrides import TorchFunctionMode

from qsim_hooks import formats
from qsim_hooks.formats import FloatFormat, IntFormat, Scaling, get
from qsim_hooks.formats.block import BlockFormat, IntElement, bfp, mx, nvfp4

from ._reference import assert_same_bits

pytestmark = pytest.mark.usefixtures("eager_kernels")

F32_MAX = 3.4028234663852886e38


# ---------------------------------------------------------------------------
# Saturation: finite in, finite out, the correctly rounded saturated value
# ---------------------------------------------------------------------------
def test_cast_back_to_half_saturates_at_the_dtypes_max() -> None:
    # bf16 rounds 65504 up to 65536, which fp16 cannot hold: the saturated fp16 value is 65504
    x = torch.tensor([65504.0, -65504.0, 65000.0, 1.0], dtype=torch.float16)
    y = get("bf16")(x)
    assert y.dtype == torch.float16
    assert y.tolist() == [65504.0, -65504.0, 65024.0, 1.0]
    # abfp8: a bf16 scale of 65536 and k = 127 decode to 65536 as well
    assert get("abfp8")(torch.full((128,), 65504.0, dtype=torch.float16)).tolist() == [65504.0] * 128
    # a format with overflow to Inf keeps it: that is what it asks for
    assert math.isinf(FloatFormat(8, 7, overflow="special")(x)[0].item())


@pytest.mark.parametrize("name", ["int8", "int16", "int4", "uint8", "int12"])
def test_int_at_float32_max(name: str) -> None:
    x = torch.tensor([3.4028235e38, 1.0, -3.4028235e38])
    y = get(name)(x)
    fmt = get(name)
    # amax = max: qmax * (max / qmax) rounds past max in float32 -> the saturated value is max
    assert y[0].item() == F32_MAX and y[1].item() == 0.0
    assert y[2].item() == (-F32_MAX if fmt.qmin < 0 else 0.0)


@pytest.mark.parametrize("value", [1e37, 2.0**122, 2.0**125, 3e38, F32_MAX])
@pytest.mark.parametrize("fmt", [get("mxint8"), bfp(8), bfp(8, block_size=16), get("abfp8"),
                                 BlockFormat(IntElement(16), 32), get("nvfp4")],
                         ids=["mxint8", "bfp8", "bfp8_k16", "abfp8", "int16-elements", "nvfp4"])
def test_block_integers_near_float32_max(fmt: BlockFormat, value: float) -> None:
    x = torch.full((2, 128), value)
    x[1, :] = torch.linspace(-1, 1, 128) * value
    y = fmt(x)
    assert torch.isfinite(y).all(), f"{fmt.name}({value:g}) overflowed"
    # the block's largest element comes back within the element grid's resolution (OCP floor
    # scales may saturate it to elem_max * 2^e, which is >= amax / 2 for every element grid here)
    assert (y.abs() <= value * (1 + 2.0**-6)).all()
    assert (y[0] >= value / 2).all()


def test_mxint8_of_a_power_of_two_is_itself() -> None:
    for e in (-120, 0, 100, 122, 123, 126, 127):
        x = torch.tensor([2.0**e])
        assert get("mxint8")(x).item() == 2.0**e, e
        assert bfp(8)(x).item() == 2.0**e, e


@pytest.mark.parametrize("scale_rounding", ["floor", "ceil", "nearest"])
@pytest.mark.parametrize("element", ["e4m3", "e5m2", "e2m1", "int8"])
def test_mx_scale_roundings_at_float32_max(element: str, scale_rounding: str) -> None:
    x = torch.tensor([F32_MAX] * 31 + [-F32_MAX])
    y = mx(element, scale_rounding=scale_rounding)(x)
    assert torch.isfinite(y).all() and (y[:31] > 0).all() and y[31] < 0
    if scale_rounding == "ceil" and element != "int8":  # ceil: nothing saturates, the element grid rounds up
        assert y[0].item() == F32_MAX  # 2^128 exactly, saturated


def test_nvfp4_ceil_at_float32_max() -> None:
    y = nvfp4(scale_rounding="ceil")(torch.full((16,), F32_MAX))
    assert torch.isfinite(y).all()


def test_scaled_float_whose_max_is_below_one() -> None:
    fmt = FloatFormat(3, 2, bias=10, specials="none", scaling=Scaling())  # max = 1.75 * 2^-3 = 0.21875
    assert fmt.max == 0.21875
    x = torch.tensor([3e38, 1e38, -2e38, 0.0])
    # amax 3e38 maps to 0.21875; 1e38 -> 0.0729 rounds to 0.078125, -2e38 -> -0.1458 to -0.15625
    assert fmt(x).tolist() == pytest.approx([3e38, 3e38 * 0.078125 / 0.21875, -3e38 * 0.15625 / 0.21875, 0.0],
                                            rel=1e-6)
    # a moderate amax gives what the format's own grid gives (the internal shift by 2^j is exact)
    z = torch.randn(1000)
    scale = z.abs().max() / fmt.max
    ref = FloatFormat(3, 2, bias=10, specials="none")
    assert_same_bits(fmt(z), ref(z * (1 / scale)) * scale, what="shifted grid == format grid")


@pytest.mark.parametrize("name", ["e4m3", "e2m1", "e5m2", "e3m4"])
def test_scaled_floats_at_float32_max(name: str) -> None:
    fmt = dataclasses.replace(get(name), scaling=Scaling())
    y = fmt(torch.tensor([F32_MAX, -F32_MAX, 1e38, 1.0]))
    assert torch.isfinite(y).all() and y[0].item() == F32_MAX and y[1].item() == -F32_MAX


# ---------------------------------------------------------------------------
# Rounding modes meet their definitions on scaled grids
# ---------------------------------------------------------------------------
def _nudged(y: torch.Tensor, ulps: int) -> torch.Tensor:
    """``y`` moved ``ulps`` float32 ulps (towards +inf for ulps > 0), element by element."""
    target = torch.tensor(math.inf if ulps > 0 else -math.inf)
    for _ in range(abs(ulps)):
        y = torch.nextafter(y, target)
    return y


TZ_FORMATS = {
    "int8-amax3": IntFormat(8, rounding="toward_zero", scaling=Scaling(amax=3.0)),
    "int16-amax0.7": IntFormat(16, rounding="toward_zero", scaling=Scaling(amax=0.7)),
    "int8-dynamic": IntFormat(8, rounding="toward_zero"),
    "uint8-amax5": IntFormat(8, signed=False, rounding="toward_zero", scaling=Scaling(amax=5.0)),
    "int4-full-amax1.3": IntFormat(4, narrow=False, rounding="toward_zero", scaling=Scaling(amax=1.3)),
    "e4m3-amax0.3": FloatFormat(4, 3, specials="fn", rounding="toward_zero", scaling=Scaling(amax=0.3)),
    "e2m1-amax7": FloatFormat(2, 1, specials="none", rounding="toward_zero", scaling=Scaling(amax=7.0)),
    "e5m10-amax1e3": FloatFormat(5, 10, rounding="toward_zero", scaling=Scaling(amax=1e3)),
    "e8m22-amax3": FloatFormat(8, 22, rounding="toward_zero", scaling=Scaling(amax=3.0)),
    "e8m23-amax3": FloatFormat(8, 23, rounding="toward_zero", scaling=Scaling(amax=3.0)),
    "nvfp4-rtz": nvfp4(rounding="toward_zero"),
    "abfp8-rtz": dataclasses.replace(get("abfp8"), rounding="toward_zero"),
    "mxint8-rtz": mx("int8", rounding="toward_zero"),
    "mxfp4-rtz": mx("e2m1", rounding="toward_zero"),
}
# a scale taken from the block's own (quantized) amax can change on re-quantization when the
# scale is not a power of two: idempotence is a property of the E8M0 and per-tensor formats
_RESCALED = {"nvfp4-rtz", "abfp8-rtz"}


@pytest.mark.parametrize("key", list(TZ_FORMATS))
def test_toward_zero_never_grows_a_value_and_is_idempotent(key: str) -> None:
    fmt = TZ_FORMATS[key]
    block = fmt.block_size if isinstance(fmt, BlockFormat) else 32
    x0 = torch.randn(64, block) * torch.logspace(-1, 0.5, block)
    grid = fmt(x0)
    for ulps in (-3, -2, -1, 0, 1, 2, 3):  # grid values and their float32 neighbours
        x = _nudged(grid, ulps)
        y = fmt(x)
        bad = y.abs() > x.abs()
        assert not bad.any(), f"{key}: |y| > |x| at x={x[bad][:4].tolist()} y={y[bad][:4].tolist()}"
    if key not in _RESCALED:
        assert_same_bits(fmt(grid), grid, zero_sign=False, what=f"{key} q(q(x))")


def test_toward_zero_just_below_an_integer_is_truncated() -> None:
    fmt = IntFormat(8, rounding="toward_zero", scaling=Scaling(amax=127.0))  # scale 1
    x = torch.tensor([5.0 - 2.0**-21, 5.0 - 2.0**-20, 126.99999, -(3.0 - 2.0**-22), 5.0, 127.0])
    assert fmt(x).tolist() == [4.0, 4.0, 126.0, -2.0, 5.0, 127.0]


SR_FORMATS = {  # format, its largest value, whether negative inputs are in range
    "int16-at-amax": (IntFormat(16, rounding="stochastic", scaling=Scaling(amax=1.0)), 1.0, True),
    "int8-at-amax": (IntFormat(8, rounding="stochastic", scaling=Scaling(amax=0.37)), 0.37, True),
    "uint8-at-amax": (IntFormat(8, signed=False, rounding="stochastic", scaling=Scaling(amax=2.5)), 2.5, False),
    "e4m3-scaled-at-amax": (FloatFormat(4, 3, specials="fn", rounding="stochastic", scaling=Scaling(amax=0.3)),
                            0.3, True),
    "mxint8-at-top": (mx("int8", rounding="stochastic"), 127 / 64, True),
}


@pytest.mark.parametrize("key", list(SR_FORMATS))
def test_stochastic_stays_in_range_and_keeps_grid_values(key: str) -> None:
    fmt, top, signed = SR_FORMATS[key]
    x = torch.full((1 << 16,), top)
    if signed:
        x[1::2] = -top
    y = fmt(x, generator=torch.Generator().manual_seed(1))
    assert_same_bits(y, x, what=f"{key}: the largest value is on the grid and stays")
    grid = fmt(torch.linspace(-top if signed else 0.0, top, 32 * 64).reshape(64, 32),
               generator=torch.Generator().manual_seed(2))
    assert (grid.abs() <= top).all()
    again = fmt(grid, generator=torch.Generator().manual_seed(3))
    assert_same_bits(again, grid, zero_sign=False, what=f"{key}: grid values never move")


def test_stochastic_int_on_grid_values_never_move_even_at_unlucky_noise(monkeypatch) -> None:
    # noise = 1 - 2^-24 made floor(q + noise) round up for every integer q
    fmt = IntFormat(8, rounding="stochastic", scaling=Scaling(amax=127.0))
    x = torch.arange(-127.0, 128.0)
    monkeypatch.setattr(torch, "rand", lambda *a, **k: torch.full(a[0], 1 - 2.0**-24))
    assert torch.equal(fmt(x), x)


# ---------------------------------------------------------------------------
# amax: a finite float32 value > 0
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("amax", [1e39, -1e39, 1e-46, 3.5e38, float("inf")])
def test_scaling_amax_must_be_usable_in_float32(amax: float) -> None:
    with pytest.raises(ValueError, match=r"Scaling\.amax=.*3\.4028235e\+38") as info:
        Scaling(amax=amax)
    assert "1.401e-45" in str(info.value)


@pytest.mark.parametrize("amax", [1e39, 1e-46, torch.tensor([1.0, 1e39], dtype=torch.float64)])
def test_call_amax_must_be_usable_in_float32(amax) -> None:
    with pytest.raises(ValueError, match=r"amax must be finite and > 0 in float32.*3\.4028235e\+38"):
        IntFormat(8)(torch.ones(4), amax=amax)


def test_amax_at_float32_edges_is_accepted() -> None:
    for a in (F32_MAX, 3.4028235e38, 2.0**-149, 1e-45, 2.0**-126):
        y = IntFormat(8, scaling=Scaling(amax=a))(torch.tensor([a, -a, 0.0]))
        assert torch.isfinite(y).all()


# ---------------------------------------------------------------------------
# No leaks, no per-call host work
# ---------------------------------------------------------------------------
def _constant_tensors(fmt: object) -> list[torch.Tensor]:
    """The tensors a format holds for its kernels (whatever container they sit in)."""
    out: list[torch.Tensor] = []
    for v in vars(fmt).values():
        items = list(v.values()) if isinstance(v, dict) else [v]
        items += [t for k in ("cpu", "consts") for t in [getattr(v, k, None)] if t is not None]
        for it in items:
            if isinstance(it, torch.Tensor):
                out.append(it)
            elif isinstance(it, tuple):
                out += [t for t in it if isinstance(t, torch.Tensor)]
            elif hasattr(it, "cpu") and isinstance(it.cpu, tuple):
                out += list(it.cpu)
    return out


def test_formats_made_and_dropped_in_a_loop_free_their_tensors() -> None:
    x = torch.randn(64)
    shared = {id(t) for n in formats.names() for t in _constant_tensors(formats.get(n))}  # live for good
    refs = []
    for i in range(20):
        fmts = [FloatFormat(3, 4, bias=3 + i % 3), IntFormat(2 + i % 6), mx("e2m1", 16 + i),
                FloatFormat(4, 3, scaling=Scaling("block", block_size=8))]
        for f in fmts:
            f(x)
            refs.append(weakref.ref(f))
            refs += [weakref.ref(t) for t in _constant_tensors(f) if id(t) not in shared]
        del fmts, f
    assert len(refs) > 80, "the formats hold constant tensors to track"
    gc.collect()
    alive = [r() for r in refs if r() is not None]
    assert not alive, f"{len(alive)} of {len(refs)} formats / constant tensors are still alive"


class _HostSyncs(TorchFunctionMode):
    """Counts the calls that copy a tensor's value to the host (a GPU sync)."""

    NAMES = {"__bool__", "item", "tolist", "__float__", "__int__", "__index__", "cpu", "numpy"}

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in self.NAMES:
            self.seen.append(name)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("make", [lambda: IntFormat(8), lambda: IntFormat(4, signed=False),
                                  lambda: IntFormat(8, scaling=Scaling("channel", axis=0)),
                                  lambda: FloatFormat(4, 3, specials="fn", scaling=Scaling()),
                                  lambda: get("mxfp4"), lambda: get("nvfp4")],
                         ids=["int8", "uint4", "int8-channel", "e4m3-scaled", "mxfp4", "nvfp4"])
def test_dynamic_quantization_makes_no_host_sync(make) -> None:
    fmt = make()
    x = torch.randn(16, 64)
    if not isinstance(fmt, BlockFormat):  # (a block holding Inf is NaN by design)
        x[0, 0] = float("inf")  # the finite-amax fallback used to need a bool() of a tensor
    fmt(x)  # first call: device copies of the constants are made here
    with _HostSyncs() as probe:
        y = fmt(x)
        fmt(x.requires_grad_()).sum().backward()
    assert probe.seen == [], f"{fmt.name}: host syncs {probe.seen}"
    assert torch.isfinite(y).all()


def test_int_calls_make_no_new_constant_tensors(monkeypatch) -> None:
    fmts = [IntFormat(8), IntFormat(8, scaling=Scaling(amax=2.0)), FloatFormat(4, 3, scaling=Scaling(amax=2.0))]
    x = torch.randn(100)
    for f in fmts:
        f(x)  # first calls may copy constants to the device
    made = []
    real = torch.tensor
    monkeypatch.setattr(torch, "tensor", lambda *a, **k: made.append(a) or real(*a, **k))
    for f in fmts:
        f(x)
    assert made == [], f"torch.tensor called per call: {made}"


def test_kernels_keep_no_per_format_state() -> None:
    from qsim_hooks.formats import kernels

    state = {k: len(v) for k, v in vars(kernels).items() if isinstance(v, dict) and not k.startswith("__")}
    for i in range(10):
        FloatFormat(3, 4, bias=2 + i)(torch.randn(8))
    after = {k: len(v) for k, v in vars(kernels).items() if isinstance(v, dict) and not k.startswith("__")}
    assert after == state, f"module-level caches grew: {state} -> {after}"
    assert formats.get("e3m4") is formats.get("e3m4")
