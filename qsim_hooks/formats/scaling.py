"""Scaling: from an amax to a scale, at tensor, channel or block granularity.

A :class:`Scaling` is part of a format's value. It says where the amax comes
from (``dynamic``: measured on each tensor, by its max or a percentile of |x|;
``static``: a fixed amax, given here or supplied per call by a session or a
calibration) and at which granularity it is taken.

Blocks run along ``axis`` in groups of ``block_size`` elements. When the axis
length is not a multiple of the block size, the last block is *ragged*: it is
shorter and gets its own amax from the elements it has (zero padding is used
internally and never changes an amax).

:func:`scaled_forward` is the one "scale, round, scale back" used by every
scaled format (integers, scaled floats); a format takes part by meeting the
small :class:`ScaledFormat` protocol.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Literal, Protocol, TypeVar

import torch
from torch import Tensor

from . import kernels
from ._checks import check_amax, check_choice, check_float, check_int

__all__ = ["Scaling", "ScaledFormat", "scaled_forward", "reduce_amax", "static_amax_for", "to_blocks",
           "from_blocks", "with_scaling_axis"]

Granularity = Literal["tensor", "channel", "block"]


@dataclass(frozen=True)
class Scaling:
    """Where a format's scale comes from.

    Attributes:
        granularity: ``"tensor"``, ``"channel"`` (one amax per index of ``axis``)
            or ``"block"`` (one amax per ``block_size`` elements along ``axis``).
        axis: channel axis (``channel``) or the axis blocks run along (``block``).
            ``None`` lets the quantization point decide (a weight's output
            channels, an activation's reduction axis); called directly, a
            format uses 0 for channels and -1 (the last axis) for blocks.
        block_size: elements per block (``block`` only).
        mode: ``"dynamic"`` (amax measured on every call) or ``"static"``.
        method: for dynamic scaling, ``"max"`` or ``"percentile"`` of |x|.
        percentile: in (0, 100], used when ``method="percentile"``.
        amax: a fixed amax for static scaling (a session or calibration may
            supply one per call instead).
    """

    granularity: Granularity = "tensor"
    axis: int | None = None
    block_size: int = 32
    mode: Literal["dynamic", "static"] = "dynamic"
    method: Literal["max", "percentile"] = "max"
    percentile: float = 99.99
    amax: float | None = None
    _amax: kernels.Consts | None = field(init=False, repr=False, compare=False)  # amax as a float32 tensor

    def __post_init__(self) -> None:
        check_choice("Scaling", "granularity", self.granularity, ("tensor", "channel", "block"))
        if self.axis is not None:
            check_int("Scaling", "axis", self.axis)
        check_int("Scaling", "block_size", self.block_size, 1)
        check_choice("Scaling", "mode", self.mode, ("dynamic", "static"))
        check_choice("Scaling", "method", self.method, ("max", "percentile"))
        if not (0.0 < check_float("Scaling", "percentile", self.percentile) <= 100.0):
            raise ValueError(f"Scaling.percentile={self.percentile!r} must be in (0, 100]")
        amax = None
        if self.amax is not None:
            amax = kernels.Consts(torch.tensor(check_amax("Scaling", "amax", self.amax), dtype=torch.float32))
            if self.mode != "static":
                object.__setattr__(self, "mode", "static")
        object.__setattr__(self, "_amax", amax)

    @property
    def resolved_axis(self) -> int:
        if self.axis is not None:
            return self.axis
        return 0 if self.granularity == "channel" else -1

    def with_axis(self, axis: int) -> Scaling:
        """This scaling with ``axis`` filled in when it was left open (``self`` otherwise)."""
        if self.axis is not None or self.granularity == "tensor":
            return self
        return dataclasses.replace(self, axis=axis)

    def describe(self) -> str:
        ax = "auto" if self.axis is None else self.axis
        g = {"tensor": "tensor", "channel": f"channel(axis={ax})",
             "block": f"block({self.block_size}, axis={ax})"}[self.granularity]
        how = "static" if self.mode == "static" else (
            "dyn-max" if self.method == "max" else f"dyn-p{self.percentile:g}")
        return f"{g} {how}"


def _finite_abs(x: Tensor) -> Tensor:
    a = x.abs()
    return torch.where(torch.isfinite(a), a, torch.zeros((), dtype=a.dtype, device=a.device))


def _tensor_max(x: Tensor) -> Tensor:
    """max |x| over the finite elements: one pass, no host sync (a per-tensor dynamic amax)."""
    return kernels.finite_absmax(x)


def _percentile_last(a: Tensor, p: float) -> Tensor:
    """Percentile of the last dim of a non-negative tensor (nearest-rank, upper)."""
    n = a.shape[-1]
    k = min(n, max(1, math.ceil(p / 100.0 * n)))
    if k == n:
        return a.amax(dim=-1)
    return torch.kthvalue(a, k, dim=-1).values


def _norm_axis(axis: int, ndim: int, who: str = "Scaling.axis") -> int:
    if not -ndim <= axis < ndim:
        raise ValueError(f"{who}={axis} is out of range for a tensor with {ndim} dims")
    return axis % ndim


def to_blocks(x: Tensor, axis: int, block: int) -> tuple[Tensor, tuple[int, ...], int]:
    """Move ``axis`` last and split it into blocks: ``(..., nblocks, block)``.

    Returns the blocked view (zero padded when ragged), the moved shape and the
    original axis length, for :func:`from_blocks`.
    """
    axis = _norm_axis(axis, x.dim())
    xm = x.movedim(axis, -1)
    n = xm.shape[-1]
    pad = (-n) % block
    if pad:
        xm = torch.nn.functional.pad(xm, (0, pad))
    moved_shape = tuple(xm.shape)
    return xm.reshape(*xm.shape[:-1], -1, block), moved_shape, n


def from_blocks(xb: Tensor, moved_shape: tuple[int, ...], n: int, axis: int, ndim: int) -> Tensor:
    axis = _norm_axis(axis, ndim)
    xm = xb.reshape(moved_shape)[..., :n]
    return xm.movedim(-1, axis)


def reduce_amax(x: Tensor, scaling: Scaling) -> Tensor:
    """The dynamic amax of ``x`` at the scaling's granularity, shaped to broadcast.

    For ``block`` granularity the result has the blocked shape of
    :func:`to_blocks` with a trailing dim of 1.
    """
    pct = scaling.method == "percentile" and scaling.percentile < 100.0
    if scaling.granularity == "tensor":
        if not pct:
            return _tensor_max(x)
        return _percentile_last(_finite_abs(x).reshape(1, -1), scaling.percentile).reshape(())
    if scaling.granularity == "channel":
        if x.dim() == 0:
            raise ValueError("channel scaling needs a tensor with at least one dim")
        axis = _norm_axis(scaling.resolved_axis, x.dim())
        a = _finite_abs(x).movedim(axis, 0).reshape(x.shape[axis], -1)
        r = _percentile_last(a, scaling.percentile) if pct else a.amax(dim=1)
        shape = [1] * x.dim()
        shape[axis] = x.shape[axis]
        return r.reshape(shape)
    xb, _, _ = to_blocks(_finite_abs(x), scaling.resolved_axis, scaling.block_size)
    if pct:
        return _percentile_last(xb, scaling.percentile).unsqueeze(-1)
    return xb.amax(dim=-1, keepdim=True)


def static_amax_for(x: Tensor, amax: Tensor, scaling: Scaling) -> Tensor:
    """Shape a user- or calibration-supplied amax to broadcast against ``x``."""
    if amax.numel() == 1:
        return amax.reshape(())
    if scaling.granularity == "channel":
        axis = _norm_axis(scaling.resolved_axis, x.dim())
        if amax.numel() != x.shape[axis]:
            raise ValueError(f"static per-channel amax has {amax.numel()} values but axis {axis} "
                             f"has {x.shape[axis]} channels")
        shape = [1] * x.dim()
        shape[axis] = x.shape[axis]
        return amax.reshape(shape)
    if scaling.granularity == "block":
        xb, _, _ = to_blocks(x, scaling.resolved_axis, scaling.block_size)
        want = xb.shape[:-1]
        if amax.numel() != math.prod(want):
            raise ValueError(f"static per-block amax has {amax.numel()} values, expected {math.prod(want)}")
        return amax.reshape(*want, 1)
    raise ValueError(f"a per-tensor format got an amax with {amax.numel()} values; pass one value")


# ---------------------------------------------------------------------------
# scale, round, scale back
# ---------------------------------------------------------------------------
class ScaledFormat(Protocol):
    """What :func:`scaled_forward` needs from a format (IntFormat, a scaled FloatFormat)."""

    name: str

    def _scale_max(self) -> float:
        """The grid value an amax maps to (the format's largest value)."""

    def _cast_scaled(self, xb: Tensor, inv: Tensor, scale: Tensor, generator: torch.Generator | None) -> Tensor:
        """``round(xb * inv) * scale`` on the format's grid (``inv`` = 1 / ``scale``, both broadcastable)."""

    def _in_range(self, x: Tensor, amax: Tensor) -> Tensor:
        """Where ``x`` is not clipped by ``amax`` (for the clipped straight-through estimator)."""


def scaled_forward(fmt: ScaledFormat, sc: Scaling, x: Tensor, amax: Tensor | None,
                   generator: torch.Generator | None, want_mask: bool) -> tuple[Tensor, Tensor | None]:
    """Scale ``x`` so that amax maps to the format's max, round, scale back; (y, in-range mask or None)."""
    blocked = sc.granularity == "block"
    if blocked:
        xb, moved, n = to_blocks(x, sc.resolved_axis, sc.block_size)
    else:
        xb = x
    a = _resolve_amax(fmt.name, x, amax, sc)
    scale = a / fmt._scale_max()
    # amax 0 (an all-zero tensor) gives scale 1; a scale below float32's smallest normal is
    # raised to it, so that 1/scale stays finite (0 * inf would turn zeros into NaN)
    scale = torch.where(a > 0, torch.clamp(scale, min=2.0**-126), torch.ones_like(scale))
    inv = 1.0 / scale
    y = fmt._cast_scaled(xb, inv, scale, generator)
    # in range = not clipped: compared in the tensor's own units against amax, so the
    # element that defines a dynamic amax is never counted as clipped by rounding of 1/scale
    mask = fmt._in_range(xb, a) if want_mask else None
    if blocked:
        y = from_blocks(y, moved, n, sc.resolved_axis, x.dim())
        if mask is not None:
            mask = from_blocks(mask, moved, n, sc.resolved_axis, x.dim())
    return y, mask


def _resolve_amax(who: str, x: Tensor, amax: Tensor | None, sc: Scaling) -> Tensor:
    if amax is None and sc._amax is not None:
        amax = sc._amax.on(x.device)[0]
    if amax is not None:
        # a no-op when amax is on x's device already (a point that keeps its amax on the CPU pays a copy)
        return static_amax_for(x, amax.to(x.device), sc)
    if sc.mode == "static":
        raise ValueError(f"format {who} has static scaling but no amax was given: pass amax= "
                         "or calibrate (qsim_hooks.calibrate)")
    return reduce_amax(x, sc)


_F = TypeVar("_F")


def with_scaling_axis(fmt: _F, scaling: Scaling | None, axis: int) -> _F:
    """``fmt`` (a dataclass with a ``scaling`` field) with its scaling's open axis set to ``axis``."""
    if scaling is None:
        return fmt
    new = scaling.with_axis(axis)
    return fmt if new is scaling else dataclasses.replace(fmt, scaling=new)  # type: ignore[type-var]
