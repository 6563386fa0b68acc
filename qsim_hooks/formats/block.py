"""Block formats: OCP MX, NVFP4-style two-level scaling, qtorch block floating point, ABFP.

A block format shares one scale across a group of elements. Every block format
here is one :class:`BlockFormat`: an *element* grid (a :class:`FloatFormat`,
so every rounding mode of the engine works, or an :class:`IntElement`), a
*grouping* (blocks of ``block_size`` along an axis, one group per channel, or
the whole tensor), a *scale grid* (OCP's E8M0 power of two, or any
:class:`FloatFormat` such as E4M3 or bf16) and, optionally, a second per-tensor
fp32 level. The named formats are configurations of that one machinery::

    mxfp8_e4m3  mxfp8_e5m2  mxfp6_e3m2  mxfp6_e2m3  mxfp4  mxint8   (OCP MX v1.0, k=32, E8M0)
    nvfp4       E2M1 elements, blocks of 16, E4M3 block scale, fp32 tensor scale
    abfp8       ABFP (arXiv 2205.06287): int8 elements, tiles of 128, bf16 scales

``bfp(wl, dim)`` and :func:`from_qtorch_bfp` give qtorch's ``BlockFloatingPoint``.

How a block is quantized (``amax`` = max |x| of the block)

* E8M0 scale (OCP MX v1.0 section 6.3): ``X = 2**e``; with ``scale_rounding``
  ``"floor"`` (OCP, default) ``e = floor(log2(amax)) - emax_elem`` where
  ``emax_elem`` is the exponent of the largest power of two of the element
  format (8 for E4M3, 15 for E5M2, 4 for E3M2, 2 for E2M3/E2M1, 0 for INT8);
  ``"ceil"``: the smallest ``e`` with ``amax / 2**e <= elem_max`` (nothing
  saturates; NVIDIA's RCEIL); ``"nearest"``: ``e = round(log2(amax / elem_max))``
  (geometric midpoint). ``e`` is clamped to E8M0's range [-127, 127]; an
  all-zero block gets ``2**-127`` (its elements stay 0). The exponent is read
  off the fp32 bit pattern of amax (integer ops, no log2).
* Float scale grid (NVFP4's E4M3, ABFP's bf16, or fp32): ``s = amax / elem_max``
  (``/ t`` with a tensor level) rounded onto the scale grid, saturating at its
  max: ``"nearest"`` (default: ties to even, torchao / Transformer Engine),
  ``"floor"`` (toward zero) or ``"ceil"`` (up: nothing saturates, cuDNN's
  ``quantize_round_up``). A block whose scale rounds to 0 decodes to 0 (what
  hardware computes from a zero scale code); E4M3 subnormal scales are kept
  (torchao instead clamps scales to E4M3's smallest normal; only blocks
  ~28000x below the tensor's amax differ).
* Two levels (``tensor_scale=True``, NVFP4): ``t = amax_tensor / (elem_max *
  scale_max)`` in fp32 (6 * 448 for NVFP4), block scale ``e4m3((amax_b / 6) / t)``,
  decode scale ``S = t * s_b``, elements ``e2m1(x / S)``; this is torchao's
  ``nvfp4_quantize`` and NVIDIA's published recipe. ``amax_tensor`` is the
  tensor's finite max |x|, or the per-call ``amax=`` (static / calibrated).
  Formats without a tensor level ignore a per-call ``amax`` (MX scales are
  always taken from the block itself).
* Elements: float elements ``q = round(x / S)`` on the element grid, saturating
  (OCP: "clamped to the max normal, preserving the sign"); integer elements
  ``k = round(clamp(x / S * per_unit, qmin, qmax))``, value ``k * S / per_unit``.
  With power-of-two scales every step is exact in fp32.

Inf and NaN: a block holding any Inf or NaN gets the E8M0 NaN scale (0xFF), so
every element of that block decodes to NaN (OCP section 5.1: a NaN scale makes
every value of its block NaN; E8M0 has no Inf and the FP6/FP4/INT8 elements no
Inf or NaN, so this is the only encoding; microxcaling does the same). Other
blocks are untouched. Float-scale formats behave the same.

Ragged blocks: when the axis length is not a multiple of ``block_size`` the
last block of each row is shorter. It is zero padded internally; the padding
never changes its amax, so it gets the scale of its own elements (OCP section
6.2 assumes vectors padded to a multiple of k) and the padding is dropped.

Axis: ``axis=None`` lets the quantization point decide (:meth:`with_axis`: a
weight's reduction, i.e. input-channel, axis; an activation's feature axis);
called directly, blocks run along the last dim.

MXINT8: 8-bit two's complement with an implied scale of 2**-6 (1 sign, 1
integer, 6 fraction bits; OCP section 5.3.4): elements lie on the 1/64 grid. OCP lets
an implementation leave -2 unused for symmetry; we do by default (range
+-127/64 = +-1.984375, like microxcaling); ``IntElement(8, narrow=False)``
adds -2.

qtorch ``BlockFloatingPoint(wl, dim)``: one shared exponent per index of
``dim`` (``dim=-1``: one for the whole tensor); elements are wl-bit integers on
a ``2**(floor(log2 amax) - (wl - 2))`` grid, i.e. exactly an ``IntElement(wl)``
with an E8M0 floor scale. ``qtorch_compat=True`` reproduces qtorch's rounding
bit for bit (ties toward +inf, after the fp32 add of ``6 * 2**emax`` that qtorch
uses); it differs from qtorch only for blocks whose amax is an fp32 subnormal
(qtorch then rounds without a shared exponent) or >= 2**126 (qtorch's
``6 * 2**emax`` overflows and it returns NaN; we round ties to even there).

ABFP (Basumallik et al., "Adaptive Block Floating-Point for Analog Deep
Learning Hardware", arXiv 2205.06287). Implemented: per-vector scales for
activations and per-row scales for weights over tiles of width ``n`` along the
dot product's axis (one format: blocks of ``n`` along the reduction axis),
scales stored in bf16 (the tile's max |x| rounded to bf16), b-bit symmetric
integer elements ``round(x / s * (2**(b-1) - 1))``, and the output gain G in
:class:`ABFP`: ``ABFP.matmul`` / ``ABFP.linear`` compute each tile's dot
product of the quantized operands, quantize it with a b_out-bit converter
whose full scale (our reading of the paper: ``n`` in normalized units, the
largest possible tile dot product) is divided by G (amplification before the
converter: finer steps, saturation above full scale / G), rescale by the two
bf16 scales and
accumulate the tiles in fp32. Left out: device noise models, Differential
Noise Finetuning (DNF), and placing the per-tile output converter inside the
instrumented layers (the hooks see a layer's whole output, after the tiles are
summed; a layer wanting it calls ``ABFP.linear``).
"""

from __future__ import annotations

import dataclasses
import math
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor

from .base import Format, GradSpec, Rounding
from .floating import FloatFormat
from .scaling import Scaling, _norm_axis, from_blocks, reduce_amax, to_blocks

__all__ = ["BlockFormat", "IntElement", "ABFP", "mx", "nvfp4", "bfp", "abfp", "from_qtorch_bfp",
           "ELEMENTS", "NAMED"]

ScaleRounding = Literal["floor", "ceil", "nearest"]
Grouping = Literal["block", "channel", "tensor"]
_SCALE_ROUNDINGS = ("floor", "ceil", "nearest")
_GROUPINGS = ("block", "channel", "tensor")


def _f32_bits(v: float) -> int:
    return struct.unpack("<i", struct.pack("<f", v))[0]


# ---------------------------------------------------------------------------
# integer elements
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class IntElement:
    """A b-bit two's complement element grid: values ``k / per_unit``.

    Args:
        bits: 2..24.
        per_unit: grid points per unit; ``None`` gives ``2**(bits-2)`` (one sign,
            one integer and bits-2 fraction bits: OCP MXINT8 for bits=8, and
            qtorch's block floating point).
        narrow: symmetric range +-(2**(bits-1) - 1) (default) or down to -2**(bits-1).
        rounding: a :class:`Rounding` or its name.
        name: display name.
    """

    bits: int = 8
    per_unit: float | None = None
    narrow: bool = True
    rounding: Rounding | str = Rounding.NEAREST_EVEN
    name: str = ""

    def __post_init__(self) -> None:
        if isinstance(self.bits, bool) or not isinstance(self.bits, int):
            raise TypeError(f"IntElement.bits must be an int, got {type(self.bits).__name__}")
        if not 2 <= self.bits <= 24:
            raise ValueError(f"IntElement.bits={self.bits} is out of range; allowed 2..24")
        if self.per_unit is None:
            object.__setattr__(self, "per_unit", float(2 ** (self.bits - 2)))
        pu = float(self.per_unit)  # type: ignore[arg-type]
        if not (math.isfinite(pu) and pu > 0):
            raise ValueError(f"IntElement.per_unit={self.per_unit!r} must be finite and > 0")
        object.__setattr__(self, "per_unit", pu)
        object.__setattr__(self, "rounding", Rounding.parse(self.rounding, field="IntElement.rounding"))
        if not self.name:
            object.__setattr__(self, "name", f"int{self.bits}")

    @property
    def qmax(self) -> int:
        return 2 ** (self.bits - 1) - 1

    @property
    def qmin(self) -> int:
        return -self.qmax if self.narrow else -(2 ** (self.bits - 1))

    @property
    def max(self) -> float:
        return self.qmax / self.per_unit  # type: ignore[operator]

    @property
    def min_subnormal(self) -> float:
        return 1.0 / self.per_unit  # type: ignore[operator]

    @property
    def spacing_at_one(self) -> float:
        return 1.0 / self.per_unit  # type: ignore[operator]


Element = FloatFormat | IntElement

#: Element grids of the OCP MX v1.0 concrete formats (and NVFP4's E2M1).
ELEMENTS: dict[str, Callable[[], Element]] = {
    "e4m3": lambda: FloatFormat(4, 3, specials="fn", name="e4m3"),
    "e5m2": lambda: FloatFormat(5, 2, specials="ieee", name="e5m2"),
    "e3m2": lambda: FloatFormat(3, 2, specials="none", name="e3m2"),
    "e2m3": lambda: FloatFormat(2, 3, specials="none", name="e2m3"),
    "e2m1": lambda: FloatFormat(2, 1, specials="none", name="e2m1"),
    "int8": lambda: IntElement(8, name="int8"),
}


def _element(v: Any, who: str) -> Element:
    if isinstance(v, (FloatFormat, IntElement)):
        return v
    if isinstance(v, str) and v.lower() in ELEMENTS:
        return ELEMENTS[v.lower()]()
    raise TypeError(f"{who}: expected a FloatFormat, an IntElement or one of "
                    f"{', '.join(repr(k) for k in ELEMENTS)}, got {v!r}")


# ---------------------------------------------------------------------------
# the block format
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class BlockFormat(Format):
    """Elements sharing one scale per group (see the module docstring for the arithmetic).

    Args:
        element: the element grid: a :class:`FloatFormat` (unscaled) or an
            :class:`IntElement`, or a name in :data:`ELEMENTS`.
        block_size: elements per block (``grouping="block"``).
        axis: the axis blocks run along (or the channel axis); ``None`` lets the
            quantization point decide, -1 when called directly.
        grouping: ``"block"`` (``block_size`` elements along ``axis``),
            ``"channel"`` (one group per index of ``axis``: qtorch's BFP ``dim``)
            or ``"tensor"`` (one group).
        scale: ``"e8m0"`` (power of two, OCP) or a :class:`FloatFormat` grid
            for the scale (E4M3 for NVFP4, bf16 for ABFP, fp32).
        scale_rounding: ``"floor"``, ``"ceil"`` or ``"nearest"``; ``None``:
            ``"floor"`` for E8M0 (OCP), ``"nearest"`` for a float scale.
        tensor_scale: add an fp32 per-tensor level (needs a float scale grid).
        rounding: the element rounding (overrides the element's own), ``None``
            keeps the element's.
        qtorch_compat: reproduce qtorch's ``block_quantize(..., "nearest")``
            rounding (IntElement with E8M0 floor scales only).
        grad: the straight-through estimator (clipped: no gradient where an
            element saturated or its block is NaN).
        name: display name.
    """

    element: Element = field(default_factory=lambda: ELEMENTS["e4m3"]())
    block_size: int = 32
    axis: int | None = None
    grouping: Grouping = "block"
    scale: Literal["e8m0"] | FloatFormat = "e8m0"
    scale_rounding: ScaleRounding | None = None
    tensor_scale: bool = False
    rounding: Rounding | str | None = None
    qtorch_compat: bool = False
    grad: GradSpec = field(default_factory=GradSpec)
    name: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "element", _element(self.element, "BlockFormat.element"))
        el = self.element
        if isinstance(el, FloatFormat) and el.scaling is not None:
            raise ValueError("BlockFormat.element must be an unscaled FloatFormat (the block supplies "
                             f"the scale), got scaling={el.scaling!r}")
        if self.rounding is not None:
            el = dataclasses.replace(el, rounding=Rounding.parse(self.rounding, field="BlockFormat.rounding"))
            object.__setattr__(self, "element", el)
        object.__setattr__(self, "rounding", el.rounding)
        if isinstance(self.block_size, bool) or not isinstance(self.block_size, int) or self.block_size < 1:
            raise ValueError(f"BlockFormat.block_size={self.block_size!r} must be a positive int")
        if self.axis is not None and (isinstance(self.axis, bool) or not isinstance(self.axis, int)):
            raise TypeError(f"BlockFormat.axis must be an int or None, got {type(self.axis).__name__}")
        if self.grouping not in _GROUPINGS:
            raise ValueError(f"BlockFormat.grouping={self.grouping!r} is not allowed; "
                             f"use one of {', '.join(repr(g) for g in _GROUPINGS)}")
        if isinstance(self.scale, str):
            if self.scale.lower() != "e8m0":
                raise ValueError(f"BlockFormat.scale={self.scale!r} is not allowed; use 'e8m0' or a FloatFormat")
            object.__setattr__(self, "scale", "e8m0")
        elif not isinstance(self.scale, FloatFormat) or self.scale.scaling is not None:
            raise TypeError("BlockFormat.scale must be 'e8m0' or an unscaled FloatFormat, got "
                            f"{self.scale!r}")
        sr = self.scale_rounding
        if sr is None:
            sr = "floor" if self.scale == "e8m0" else "nearest"
        if sr not in _SCALE_ROUNDINGS:
            raise ValueError(f"BlockFormat.scale_rounding={sr!r} is not allowed; "
                             f"use one of {', '.join(repr(s) for s in _SCALE_ROUNDINGS)}")
        object.__setattr__(self, "scale_rounding", sr)
        if self.tensor_scale and self.scale == "e8m0":
            raise ValueError("BlockFormat.tensor_scale=True needs a FloatFormat scale grid (as NVFP4's "
                             "E4M3); a power-of-two E8M0 scale has no use for a per-tensor level")
        if self.qtorch_compat:
            if not (isinstance(el, IntElement) and self.scale == "e8m0" and sr == "floor"
                    and el.per_unit == 2.0 ** (el.bits - 2) and el.bits <= 22):
                raise ValueError("BlockFormat.qtorch_compat=True needs IntElement(bits <= 22) with the "
                                 "default per_unit, an 'e8m0' scale and scale_rounding='floor'")
        if not isinstance(self.grad, GradSpec):
            raise TypeError(f"BlockFormat.grad must be a GradSpec, got {type(self.grad).__name__}")
        if not self.name:
            object.__setattr__(self, "name", self._default_name())
        object.__setattr__(self, "_consts", self._make_consts())

    # -- description -------------------------------------------------------
    def _default_name(self) -> str:
        sc = "e8m0" if self.scale == "e8m0" else self.scale.name  # type: ignore[union-attr]
        g = {"block": f"b{self.block_size}", "channel": "ch", "tensor": "t"}[self.grouping]
        n = f"block_{self.element.name}_{g}_{sc}"
        if self.tensor_scale:
            n += "_fp32"
        return n

    @property
    def scaling(self) -> Scaling:
        """The grouping as a :class:`Scaling` (granularity, axis, block size), for introspection."""
        return Scaling(granularity=self.grouping, axis=self.axis, block_size=self.block_size)

    @property
    def bits(self) -> int:
        return self.element.bits

    @property
    def scale_bits(self) -> int:
        return 8 if self.scale == "e8m0" else self.scale.bits  # type: ignore[union-attr]

    @property
    def bits_per_value(self) -> float:
        """Element bits plus the block scale's share (MXFP4: 4.25, NVFP4: 4.5)."""
        if self.grouping != "block":
            return float(self.bits)
        return self.bits + self.scale_bits / self.block_size

    @property
    def max(self) -> float:
        """Largest element magnitude, in units of the block scale."""
        return self.element.max

    @property
    def min_subnormal(self) -> float:
        return self.element.min_subnormal

    @property
    def spacing_at_one(self) -> float:
        return self.element.spacing_at_one

    @property
    def is_scaled(self) -> bool:
        return True

    @property
    def granularity(self) -> str:
        """E.g. ``block(32, axis=auto) e8m0-floor`` (formats table, report, plan)."""
        ax = "auto" if self.axis is None else self.axis
        g = {"block": f"block({self.block_size}, axis={ax})", "channel": f"channel(axis={ax})",
             "tensor": "tensor"}[self.grouping]
        sc = "e8m0" if self.scale == "e8m0" else self.scale.name  # type: ignore[union-attr]
        d = f"{g} {sc}-{self.scale_rounding}"
        if self.tensor_scale:
            d += " x fp32/tensor"
        return d

    def with_axis(self, axis: int) -> BlockFormat:
        """A copy whose blocks run along ``axis`` when the format left it open."""
        if self.axis is not None or self.grouping == "tensor":
            return self
        return dataclasses.replace(self, axis=axis)

    # -- constants for the kernels -----------------------------------------
    def _make_consts(self) -> dict[str, Any]:
        el = self.element
        _, emax_e = math.frexp(el.max)  # el.max = m * 2**e, m in [0.5, 1)
        em = emax_e - 1  # exponent of the largest power of two <= max
        mm = el.max / 2.0**em  # in [1, 2)
        ip = [em, _f32_bits(el.max) & 0x7FFFFF, 0, 0]
        if isinstance(el, IntElement) and self.qtorch_compat:
            ip[2] = 1 << (22 - el.bits)  # qtorch's half ulp at wl kept mantissa bits
            ip[3] = (1 << (23 - el.bits)) - 1
        qmin = float(el.qmin) if isinstance(el, IntElement) else 0.0
        qmax = float(el.qmax) if isinstance(el, IntElement) else 0.0
        pu = float(el.per_unit) if isinstance(el, IntElement) else 1.0  # type: ignore[arg-type]
        smax = 1.0 if self.scale == "e8m0" else self.scale.max  # type: ignore[union-attr]
        fp = [el.max, mm, pu, qmin, qmax, el.max * smax]
        ep = el._params if isinstance(el, FloatFormat) else torch.zeros(8, dtype=torch.int32)  # type: ignore[attr-defined]
        sp = self.scale._params if isinstance(self.scale, FloatFormat) else torch.zeros(8, dtype=torch.int32)  # type: ignore[attr-defined]
        return {"ip": torch.tensor(ip, dtype=torch.int32), "fp": torch.tensor(fp, dtype=torch.float32),
                "ep": ep, "sp": sp}

    # -- the Format protocol -------------------------------------------------
    def _forward(self, x: Tensor, amax: Tensor | None, generator: torch.Generator | None,
                 want_mask: bool) -> tuple[Tensor, Tensor | None]:
        from ._block_kernels import block_quantize

        shape = x.shape
        if x.dim() == 0:
            x = x.reshape(1)
        xb, restore = _group(x, self)
        tsc = self._tensor_level(x, amax) if self.tensor_scale else None
        y, mask = block_quantize(self, xb.reshape(-1, xb.shape[-1]), tsc, generator, want_mask)
        y = restore(y.reshape(xb.shape)).reshape(shape)
        if mask is not None:
            mask = restore(mask.reshape(xb.shape)).reshape(shape)
        return y, mask

    def scales(self, x: Tensor, *, amax: Any = None) -> Tensor:
        """The decoded scale of every block of ``x`` (``2**e`` for E8M0, ``t * s_b`` with a tensor level).

        Shape: ``x`` with the block axis moved last and replaced by the number
        of blocks (``"channel"``: one per channel; ``"tensor"``: a 0-d tensor).
        NaN marks a block holding Inf or NaN.
        """
        from ._block_kernels import block_scales

        xf = x.detach().float().reshape(1) if x.dim() == 0 else x.detach().float()
        amax_t = None if amax is None else torch.as_tensor(amax, dtype=torch.float32, device=x.device)
        xb, _ = _group(xf, self)
        tsc = self._tensor_level(xf, amax_t) if self.tensor_scale else None
        s = block_scales(self, xb.reshape(-1, xb.shape[-1]), tsc)
        return s.reshape(xb.shape[:-1]) if self.grouping != "tensor" else s.reshape(())

    def _tensor_level(self, x: Tensor, amax: Tensor | None) -> Tensor:
        if amax is not None:
            if amax.numel() != 1:
                raise ValueError(f"format {self.name}: a per-tensor amax has one value, got {amax.numel()}")
            a = amax.reshape(()).to(device=x.device, dtype=torch.float32)
        else:
            a = _finite_amax(x)
        c = self._consts["fp"][5].to(x.device)  # elem_max * scale_max (6 * 448 for NVFP4)
        t = a / c
        return torch.where(a > 0, t, torch.ones_like(t))


def _finite_amax(x: Tensor) -> Tensor:
    """max |x| over the finite elements (Inf/NaN are their blocks' business, not the tensor's)."""
    if torch.compiler.is_compiling():  # branch-free: no graph break inside a user's torch.compile
        a = x.abs()
        return torch.where(a < math.inf, a, torch.zeros((), dtype=a.dtype, device=a.device)).amax()
    return reduce_amax(x, Scaling()).to(torch.float32)


def _group(x: Tensor, fmt: BlockFormat) -> tuple[Tensor, Callable[[Tensor], Tensor]]:
    """View ``x`` as (..., groups, group_size) and return a function undoing it."""
    g = fmt.grouping
    if g == "tensor":
        return x.reshape(1, -1), lambda y: y.reshape(x.shape)
    axis = _norm_axis(-1 if fmt.axis is None else fmt.axis, x.dim(), f"format {fmt.name} axis")
    if g == "channel":
        xm = x.movedim(axis, 0)
        mshape = xm.shape
        return xm.reshape(mshape[0], -1), lambda y: y.reshape(mshape).movedim(0, axis)
    xb, moved, n = to_blocks(x, axis, fmt.block_size)

    def restore(y: Tensor) -> Tensor:
        return from_blocks(y, moved, n, axis, x.dim())

    return xb, restore


# ---------------------------------------------------------------------------
# configurations
# ---------------------------------------------------------------------------
def mx(element: str | Element = "e4m3", block_size: int = 32, *, axis: int | None = None,
       scale_rounding: ScaleRounding = "floor", rounding: Rounding | str | None = None,
       grad: GradSpec | None = None, name: str = "") -> BlockFormat:
    """An OCP MX v1.0 format: ``element`` ('e4m3', 'e5m2', 'e3m2', 'e2m3', 'e2m1', 'int8'
    or an element object), E8M0 block scales, ``block_size`` elements per block (32 in the spec)."""
    el = _element(element, "mx(element)")
    if not name:
        default = {"e4m3": "mxfp8_e4m3", "e5m2": "mxfp8_e5m2", "e3m2": "mxfp6_e3m2",
                   "e2m3": "mxfp6_e2m3", "e2m1": "mxfp4", "int8": "mxint8"}.get(el.name, f"mx_{el.name}")
        name = default if block_size == 32 else f"{default}_k{block_size}"
        if scale_rounding != "floor":
            name += f"_{scale_rounding}"
    return BlockFormat(el, block_size, axis, "block", "e8m0", scale_rounding, False, rounding,
                       grad=grad or GradSpec(), name=name)


def nvfp4(block_size: int = 16, *, axis: int | None = None, scale_rounding: ScaleRounding = "nearest",
          tensor_scale: bool = True, rounding: Rounding | str | None = None,
          grad: GradSpec | None = None, name: str = "") -> BlockFormat:
    """NVIDIA's NVFP4: E2M1 elements, blocks of 16, an E4M3 block scale and an fp32 tensor scale."""
    return BlockFormat(ELEMENTS["e2m1"](), block_size, axis, "block",
                       FloatFormat(4, 3, specials="fn", name="e4m3"), scale_rounding, tensor_scale, rounding,
                       grad=grad or GradSpec(), name=name or "nvfp4")


def bfp(wl: int = 8, dim: int | None = None, *, block_size: int | None = None,
        rounding: Rounding | str | None = None, qtorch_compat: bool = False,
        grad: GradSpec | None = None, name: str = "") -> BlockFormat:
    """Block floating point: wl-bit integers sharing a power-of-two exponent.

    ``block_size=None`` shares one exponent per index of ``dim`` (qtorch's
    ``BlockFloatingPoint(wl, dim)``; ``dim=-1`` or ``None``: the whole tensor);
    with ``block_size`` the exponent is shared by blocks along ``dim``.
    """
    if block_size is not None:
        grouping, axis = "block", dim
    elif dim is None or dim == -1:
        grouping, axis = "tensor", None
    else:
        grouping, axis = "channel", dim
    el = IntElement(wl, name=f"int{wl}")
    if not name:
        where = {"tensor": "", "channel": f"_dim{dim}", "block": f"_k{block_size}"}[grouping]
        name = f"{'qtorch_' if qtorch_compat else ''}bfp{wl}{where}"
    return BlockFormat(el, block_size or 32, axis, grouping, "e8m0", "floor", False, rounding,  # type: ignore[arg-type]
                       qtorch_compat=qtorch_compat, grad=grad or GradSpec(), name=name)


def abfp(bits: int = 8, tile: int = 128, *, axis: int | None = None,
         scale: FloatFormat | None = None, rounding: Rounding | str | None = None,
         grad: GradSpec | None = None, name: str = "") -> BlockFormat:
    """ABFP's tensor format: tiles of ``tile`` along the reduction axis, bf16 scales, b-bit integers.

    On activations this is the paper's per-vector scaling, on a weight (blocks
    along its input-channel axis) its per-row scaling. The output gain lives in
    :class:`ABFP`.
    """
    qmax = 2 ** (bits - 1) - 1
    el = IntElement(bits, per_unit=float(qmax), name=f"int{bits}")
    return BlockFormat(el, tile, axis, "block", scale or FloatFormat(8, 7, name="bf16"), "nearest", False,
                       rounding, grad=grad or GradSpec(), name=name or f"abfp{bits}" +
                       ("" if tile == 128 else f"_n{tile}"))


def from_qtorch_bfp(obj: Any) -> Format:
    """qtorch's ``BlockFloatingPoint(wl, dim)`` as a BlockFormat matching ``block_quantize(x, wl, dim,
    rounding="nearest")`` bit for bit (see the module docstring for the two edge cases)."""
    wl, dim = int(obj.wl), int(obj.dim)
    if not 2 <= wl <= 22:
        raise ValueError(f"qtorch BlockFloatingPoint(wl={wl}) is not supported; wl must be 2..22")
    return bfp(wl, dim, qtorch_compat=True,
               name=f"qtorch_bfp{wl}" + ("" if dim == -1 else f"_dim{dim}"))


from ._block_abfp import ABFP  # noqa: E402  (ABFP builds on abfp())

#: Named block formats (zero-argument factories), merged into the format registry.
NAMED: dict[str, Callable[[], Format]] = {
    "mxfp8_e4m3": lambda: mx("e4m3"),
    "mxfp8_e5m2": lambda: mx("e5m2"),
    "mxfp6_e3m2": lambda: mx("e3m2"),
    "mxfp6_e2m3": lambda: mx("e2m3"),
    "mxfp4": lambda: mx("e2m1"),
    "mxint8": lambda: mx("int8"),
    "nvfp4": lambda: nvfp4(),
    "abfp8": lambda: abfp(8, 128),
}
