"""ABFP (arXiv 2205.06287): its tensor format :func:`abfp` and the matrix product :class:`ABFP`.

The tensor side of ABFP (per-vector / per-row tile scales in bf16, b-bit
integers) is an ordinary :class:`~qsim_hooks.formats.block.BlockFormat`
(:func:`abfp`). What a tensor format cannot express is the per-tile output
converter: each tile's dot product is quantized before the tiles are summed.
:class:`ABFP` simulates the whole product. Scope and what is left out:
docs/formats/block.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from . import kernels
from ._block_format import BlockFormat
from ._checks import check_float, check_int
from ._exmy import round_int
from .base import GradSpec, Rounding
from .floating import BF16, FloatFormat
from .integer import IntElement, int_limits

__all__ = ["ABFP", "abfp"]


def abfp(bits: int = 8, tile: int = 128, *, axis: int | None = None,
         scale: FloatFormat | None = None, rounding: Rounding | str | None = None,
         grad: GradSpec | None = None, name: str = "") -> BlockFormat:
    """ABFP's tensor format: tiles of ``tile`` along the reduction axis, bf16 scales, b-bit integers.

    On activations this is the paper's per-vector scaling, on a weight (blocks
    along its input-channel axis) its per-row scaling. The output gain lives in
    :class:`ABFP`.
    """
    el = IntElement(bits, per_unit=float(int_limits(bits)[1]), name=f"int{bits}")
    return BlockFormat(el, tile, axis, "block", scale or BF16, "nearest", False,
                       rounding, grad=grad or GradSpec(), name=name or f"abfp{bits}" +
                       ("" if tile == 128 else f"_n{tile}"))


@dataclass(frozen=True)
class ABFP:
    """An ABFP matrix product: tiles of ``tile`` along the reduction axis.

    Args:
        tile: the tile width n (the analog array's size).
        bits: activation element bits (per-vector scales).
        weight_bits: weight element bits (per-row scales); ``None``: ``bits``.
        out_bits: bits of the per-tile output converter; ``None``: no output quantization.
        gain: the output gain G >= 1: the converter's full scale is ``n / G`` in
            units of (activation scale x weight scale); larger G gives finer
            output steps and saturates tile outputs above the reduced full scale.
        rounding: rounding of elements and outputs.
        scale: the scale grid (bf16 in the paper).

    ``input_format()`` / ``weight_format()`` are the tensor formats (usable in
    any config); ``matmul(x, w)`` / ``linear(x, w, b)`` the full product. The
    gradient of ``matmul`` is the straight-through one of ``x @ w.T``.
    """

    tile: int = 128
    bits: int = 8
    weight_bits: int | None = None
    out_bits: int | None = 8
    gain: float = 1.0
    rounding: Rounding | str = Rounding.NEAREST_EVEN
    scale: FloatFormat = BF16
    _wbits: int = field(init=False, repr=False, compare=False)  # weight_bits, filled in
    _mode: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        check_int("ABFP", "tile", self.tile, 1)
        if self.weight_bits is None:
            object.__setattr__(self, "weight_bits", self.bits)
        for f in ("bits", "weight_bits", "out_bits"):
            v = getattr(self, f)
            if v is None and f == "out_bits":
                continue
            check_int("ABFP", f, v, 2, 16)
        gain = check_float("ABFP", "gain", self.gain)
        if not (math.isfinite(gain) and gain >= 1.0):
            raise ValueError(f"ABFP.gain={self.gain!r} must be finite and >= 1")
        if not isinstance(self.scale, FloatFormat) or self.scale.scaling is not None:
            raise TypeError(f"ABFP.scale must be an unscaled FloatFormat (bf16 in the paper), got {self.scale!r}")
        rounding = Rounding.parse(self.rounding, field="ABFP.rounding")
        object.__setattr__(self, "rounding", rounding)
        object.__setattr__(self, "_mode", rounding.mode_id)
        object.__setattr__(self, "_wbits", self.weight_bits)
        if self.tile * int_limits(self.bits)[1] * int_limits(self._wbits)[1] >= 2**24:
            raise ValueError(f"ABFP(tile={self.tile}, bits={self.bits}, weight_bits={self.weight_bits}): "
                             "tile dot products would not be exact in fp32; use a smaller tile or fewer bits")

    def input_format(self, axis: int | None = -1) -> BlockFormat:
        """Per-vector scales: tiles along the activation's last (reduction) axis."""
        return abfp(self.bits, self.tile, axis=axis, scale=self.scale, rounding=self.rounding)

    def weight_format(self, axis: int | None = 1) -> BlockFormat:
        """Per-row scales: tiles along a (out, in) weight's input axis."""
        return abfp(self._wbits, self.tile, axis=axis, scale=self.scale, rounding=self.rounding)

    # -- the product ---------------------------------------------------------
    def _ints(self, x: Tensor, bits: int) -> tuple[Tensor, Tensor]:
        """(tiles of integer codes k, bf16 scales s) with x ~ k * s / qmax, tiles along the last dim."""
        q = float(int_limits(bits)[1])
        n = self.tile
        pad = (-x.shape[-1]) % n
        if pad:
            x = F.pad(x, (0, pad))
        xb = x.reshape(*x.shape[:-1], -1, n)
        s = self.scale.cast(torch.amax(xb.abs(), dim=-1, keepdim=True).contiguous())
        safe = torch.where(s == 0, torch.ones_like(s), s)
        k = round_int(torch.clamp((xb / safe) * q, -q, q), self._mode,
                                torch.rand(xb.shape, device=x.device) if self._mode == kernels.STOCHASTIC
                                else None)
        return k, s

    def matmul(self, x: Tensor, w: Tensor) -> Tensor:
        """``x @ w.T`` the ABFP way: x (..., K), w (O, K) -> (..., O)."""
        if w.dim() != 2 or x.shape[-1] != w.shape[-1]:
            raise ValueError(f"ABFP.matmul: expected x (..., K) and w (O, K), got {tuple(x.shape)} "
                             f"and {tuple(w.shape)}")
        xf, wf = x.detach().float(), w.detach().float()
        lead = xf.shape[:-1]
        kx, sx = self._ints(xf.reshape(-1, xf.shape[-1]), self.bits)  # (B, T, n), (B, T, 1)
        kw, sw = self._ints(wf, self._wbits)  # (O, T, n), (O, T, 1)
        qx = float(int_limits(self.bits)[1])
        qw = float(int_limits(self._wbits)[1])
        mode = self._mode
        y = torch.zeros(kx.shape[0], kw.shape[0], dtype=torch.float32, device=xf.device)
        for t in range(kx.shape[1]):
            d = (kx[:, t] @ kw[:, t].T) / (qx * qw)  # exact integer sums; normalized to [-n, n]
            if self.out_bits is not None:
                qo = float(int_limits(self.out_bits)[1])
                full = self.tile / float(self.gain)
                noise = torch.rand(d.shape, device=d.device) if mode == kernels.STOCHASTIC else None
                d = round_int(torch.clamp(d * (qo / full), -qo, qo), mode, noise) * (full / qo)
            y = y + d * (sx[:, t] * sw[:, t].reshape(1, -1))
        y = y.reshape(*lead, w.shape[0]).to(x.dtype)
        if torch.is_grad_enabled() and (x.requires_grad or w.requires_grad):
            ref = x @ w.T
            return ref + (y - ref).detach()
        return y

    def linear(self, x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
        """``F.linear`` the ABFP way (the bias is added in full precision)."""
        y = self.matmul(x, weight)
        return y if bias is None else y + bias
