"""BlockFormat: elements sharing one scale per group; the spec notes are in docs/formats/block.md.

A block format is an *element* grid (a :class:`FloatFormat` or an
:class:`IntElement`), a *grouping* (blocks along an axis, channels or the whole
tensor), a *scale grid* (E8M0 or a FloatFormat) and an optional fp32
per-tensor level. This module owns the value and its grouping of a tensor; the
arithmetic runs in :mod:`._block_kernels`, the named configurations are made
in :mod:`.block`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor

from . import kernels
from ._block_kernels import FP_TENSOR_DIV, BlockKernel, Element
from ._checks import check_bool, check_choice, check_int, check_name
from .base import Format, FormatInfo, GradSpec, Rounding
from .floating import E2M1, E2M3, E3M2, E4M3, E5M2, FloatFormat
from .integer import IntElement
from .scaling import Scaling, _norm_axis, from_blocks, to_blocks

__all__ = ["BlockFormat", "Element", "ELEMENTS"]

ScaleRounding = Literal["floor", "ceil", "nearest"]
Grouping = Literal["block", "channel", "tensor"]
_SCALE_ROUNDINGS = ("floor", "ceil", "nearest")
_GROUPINGS = ("block", "channel", "tensor")

#: Element grids of the OCP MX v1.0 concrete formats (and NVFP4's E2M1), by name.
ELEMENTS: Mapping[str, Element] = {e.name: e for e in (E4M3, E5M2, E3M2, E2M3, E2M1, IntElement(8, name="int8"))}


def element_of(v: Any, who: str) -> Element:
    """An element grid from an element object or a name in :data:`ELEMENTS`."""
    if isinstance(v, (FloatFormat, IntElement)):
        return v
    if isinstance(v, str) and v.lower() in ELEMENTS:
        return ELEMENTS[v.lower()]
    raise TypeError(f"{who}: expected a FloatFormat, an IntElement or one of "
                    f"{', '.join(repr(k) for k in ELEMENTS)}, got {v!r}")


@dataclass(frozen=True)
class BlockFormat(Format):
    """Elements sharing one scale per group (the arithmetic: docs/formats/block.md).

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

    element: Element = E4M3  # a name in ELEMENTS is accepted too
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
    _info: FormatInfo = field(init=False, repr=False, compare=False)
    _kernel: BlockKernel = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        el = element_of(self.element, "BlockFormat.element")
        if isinstance(el, FloatFormat) and el.scaling is not None:
            raise ValueError("BlockFormat.element must be an unscaled FloatFormat (the block supplies "
                             f"the scale), got scaling={el.scaling!r}")
        if self.rounding is not None:
            el = dataclasses.replace(el, rounding=Rounding.parse(self.rounding, field="BlockFormat.rounding"))
        object.__setattr__(self, "element", el)
        object.__setattr__(self, "rounding", el.rounding)
        check_int("BlockFormat", "block_size", self.block_size, 1)
        if self.axis is not None:
            check_int("BlockFormat", "axis", self.axis)
        check_choice("BlockFormat", "grouping", self.grouping, _GROUPINGS)
        check_bool("BlockFormat", "tensor_scale", self.tensor_scale)
        check_bool("BlockFormat", "qtorch_compat", self.qtorch_compat)
        check_name("BlockFormat", self.name)
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
        check_choice("BlockFormat", "scale_rounding", sr, _SCALE_ROUNDINGS)
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
        scale = None if self.scale == "e8m0" else self.scale
        object.__setattr__(self, "_kernel", BlockKernel.of(el, scale, sr, self.qtorch_compat))
        bits = el.bits
        el_info = el.info
        share = self.scale_bits / self.block_size if self.grouping == "block" else 0.0  # a block scale's share
        object.__setattr__(self, "_info", FormatInfo(
            bits=bits, bits_per_value=bits + share,
            max=el_info.max, min_normal=el_info.min_normal, min_subnormal=el_info.min_subnormal,
            spacing_at_one=el_info.spacing_at_one, is_scaled=True,
            granularity=self._describe(scale.name if scale is not None else "e8m0", sr)))

    # -- description -------------------------------------------------------
    @property
    def info(self) -> FormatInfo:
        return self._info

    def _default_name(self) -> str:
        sc = "e8m0" if self.scale == "e8m0" else self.scale.name
        g = {"block": f"b{self.block_size}", "channel": "ch", "tensor": "t"}[self.grouping]
        n = f"block_{self.element.name}_{g}_{sc}"
        if self.tensor_scale:
            n += "_fp32"
        return n

    def _describe(self, scale_name: str, scale_rounding: str) -> str:
        """E.g. ``block(32, axis=auto) e8m0-floor`` (formats table, report, plan)."""
        ax = "auto" if self.axis is None else self.axis
        g = {"block": f"block({self.block_size}, axis={ax})", "channel": f"channel(axis={ax})",
             "tensor": "tensor"}[self.grouping]
        d = f"{g} {scale_name}-{scale_rounding}"
        if self.tensor_scale:
            d += " x fp32/tensor"
        return d

    @property
    def saturates(self) -> bool:
        return True

    @property
    def scaling(self) -> Scaling:
        """The grouping as a :class:`Scaling` (granularity, axis, block size), for introspection."""
        return Scaling(granularity=self.grouping, axis=self.axis, block_size=self.block_size)

    @property
    def scale_bits(self) -> int:
        return 8 if self.scale == "e8m0" else self.scale.bits

    def with_axis(self, axis: int) -> BlockFormat:
        """A copy whose blocks run along ``axis`` when the format left it open."""
        if self.axis is not None or self.grouping == "tensor":
            return self
        return dataclasses.replace(self, axis=axis)

    # -- the Format protocol -------------------------------------------------
    def _forward(self, x: Tensor, amax: Tensor | None, generator: torch.Generator | None,
                 want_mask: bool) -> tuple[Tensor, Tensor | None]:
        shape = x.shape
        if x.dim() == 0:
            x = x.reshape(1)
        xb, restore = _group(x, self)
        inside = self.tensor_scale and amax is None  # the dynamic per-tensor level: in the block kernel
        tsc = self._tensor_level(x, amax) if self.tensor_scale and not inside else None
        y, mask = self._kernel.quantize(xb.reshape(-1, xb.shape[-1]), tsc, generator, want_mask, inside)
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
        xf = x.detach().float().reshape(1) if x.dim() == 0 else x.detach().float()
        amax_t = None if amax is None else torch.as_tensor(amax, dtype=torch.float32, device=x.device)
        xb, _ = _group(xf, self)
        tsc = self._tensor_level(xf, amax_t) if self.tensor_scale else None
        s = self._kernel.scales(xb.reshape(-1, xb.shape[-1]), tsc)
        return s.reshape(xb.shape[:-1]) if self.grouping != "tensor" else s.reshape(())

    def _tensor_level(self, x: Tensor, amax: Tensor | None) -> Tensor:
        if amax is not None:
            if amax.numel() != 1:
                raise ValueError(f"format {self.name}: a per-tensor amax has one value, got {amax.numel()}")
            a = amax.reshape(()).to(device=x.device, dtype=torch.float32)
        else:
            a = _finite_amax(x)
        c = self._kernel.on(x.device)[1][FP_TENSOR_DIV]  # elem_max * scale_max (6 * 448 for NVFP4)
        t = a / c
        return torch.where(a > 0, t, torch.ones_like(t))


def _finite_amax(x: Tensor) -> Tensor:
    """max |x| over the finite elements (Inf/NaN are their blocks' business, not the tensor's)."""
    return kernels.finite_absmax(x).to(torch.float32)


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
