"""Observers: the statistics a calibration gathers at one quantization point.

An observer sits in a :class:`~qsim_hooks.points.QuantPoint`'s ``observer``
slot; the point calls it with every tensor it sees before quantizing (during a
calibration the point's format is ``None``, so the data is full precision, as
TensorRT calibrates with quantization off). Observers return nothing, work on
a detached view, keep their state in tensors on the data's device, and skip
what they cannot use: non-tensors, integer and meta tensors. An empty tensor
counts as a call and adds no data. Inf and NaN elements are counted
(``nonfinite``) and left out of every statistic.

* :class:`MaxObserver` - running max |x|, per tensor or per channel.
* :class:`HistogramObserver` - the max plus a histogram of |x| with a fixed
  number of bins (2048 by default, TensorRT's HistogramCalibrator) whose
  range grows as data arrives.

The one design decision a reader needs: **the bin width is always a power of
two**. The range is ``bins * 2**k`` with the smallest ``k`` that covers the
max seen so far. When a larger value arrives ``k`` grows and the counts are
re-binned exactly (``2**shift`` old bins become one new bin): nothing is
interpolated or lost, the memory stays ``bins`` counts per channel (TensorRT
keeps its first width and appends bins, an unbounded number after an outlier),
and two histograms, from two batches or two ranks, merge exactly once brought
to the larger ``k``. The price: the max lies in the upper half of the range,
so the data spans between ``bins / 2`` and ``bins`` bins. With ``bins`` a
power of two (2048 is) every bin index is computed exactly, so a histogram
does not depend on how the data was split into batches or ranks (tested).

A Parameter (a weight reached through its parametrization) is observed once
per value: seen again holding the same bits (compared with a copy kept for the
length of the calibration: a version counter misses writes through ``.data``
or numpy), it is skipped, so weights are counted once, not once per batch.
Meta tensors have no values: they are counted (``meta_calls``) and skipped.
Calls are taken one at a time (a lock), so threads running the model at once
(``nn.DataParallel``) count every value once.

:meth:`Observer.all_reduce` merges the state over the ranks of a
``torch.distributed`` process group (max: all-reduce MAX; histograms: MAX of
``k``, exact re-binning to it, SUM of counts) so that every rank computes the
same scales.
"""

from __future__ import annotations

import math
import threading
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

__all__ = ["Observer", "MaxObserver", "HistogramObserver", "K_MIN"]

#: The smallest bin-width exponent: ranges below ``bins * 2**K_MIN`` (about 1e-31 for
#: 2048 bins) are not resolved; such values (and all-zero data) fall into bin 0.
K_MIN = -115
_F32_MAX = 3.4028234663852886e38  # the largest float32


#: the integer dtype with a float dtype's element size: bits compared exactly (NaN, -0.0 included)
_SAME_SIZE_INT = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def _width_exponent(m: float, bins: int) -> int:
    """The smallest k with ``bins * 2**k >= m`` (at least K_MIN)."""
    if not m > 0:
        return K_MIN
    f, e = math.frexp(m / bins)  # m / bins = f * 2**e, f in [0.5, 1)
    k = e - 1 if f == 0.5 else e
    return max(k, K_MIN)


def _width_exponents(m: Tensor, bins: int) -> Tensor:
    """Vector form of :func:`_width_exponent` (int64, same rule)."""
    f, e = torch.frexp(m.double() / bins)
    k = torch.where(f == 0.5, e - 1, e).long()
    return torch.where(m > 0, k.clamp(min=K_MIN), torch.full_like(k, K_MIN))


def _comm_device(default: torch.device | None) -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return default if default is not None else torch.device("cpu")


class Observer:
    """Base class: filtering of inputs, call and element counts, per-channel layout.

    Args:
        axis: ``None`` for one statistic per tensor, or the channel axis for
            one per index of that axis (per-channel scales).
        name: the point's name, used in error messages.
    """

    def __init__(self, axis: int | None = None, name: str = "") -> None:
        self.axis = axis
        self.name = name
        self.calls = 0  # calls with a floating tensor (empty ones included)
        self.numel = 0  # finite elements observed
        self.nonfinite = 0  # Inf / NaN elements seen and left out
        self.channels: int | None = None  # 1 per tensor; C per channel (known after the first data)
        self.shape: tuple[int, ...] | None = None  # how a per-channel amax broadcasts against the tensor
        self.amax: Tensor | None = None  # [channels], finite max |x|
        self.meta_calls = 0  # calls with a meta tensor (no values)
        self._seen: dict[int, tuple[tuple, Tensor]] = {}
        self._lock = threading.Lock()

    # -- calling ------------------------------------------------------------
    def __call__(self, x: Any) -> None:
        if not isinstance(x, Tensor) or not x.is_floating_point():
            return
        with self._lock:
            if x.is_meta:
                self.meta_calls += 1
                return
            if isinstance(x, nn.Parameter) and self._seen_before(x):
                return
            self.calls += 1
            if x.numel() == 0:
                return
            with torch.no_grad():
                rows = self._rows(x.detach())
                self._observe(rows)

    def _seen_before(self, p: Tensor) -> bool:
        """Whether ``p`` holds exactly the bits it held when last observed (then remember them)."""
        key = (p.dtype, p.device, tuple(p.shape), p.stride())
        with torch.no_grad():
            bits = p.detach().view(_SAME_SIZE_INT[p.element_size()])
            last = self._seen.get(id(p))
            if last is not None and last[0] == key and torch.equal(last[1], bits):
                return True
            self._seen[id(p)] = (key, bits.clone())
        return False

    def _rows(self, x: Tensor) -> Tensor:
        """``x`` as float32 rows: ``[1, n]`` per tensor, ``[C, n]`` per channel."""
        if x.dtype != torch.float32:
            x = x.float()
        if self.axis is None:
            c, rows = 1, x.reshape(1, -1)
        else:
            if x.dim() == 0:
                raise ValueError(f"{self.name}: per-channel calibration needs a tensor with dims, got a scalar")
            axis = self.axis % x.dim() if -x.dim() <= self.axis < x.dim() else None
            if axis is None:
                raise ValueError(f"{self.name}: channel axis {self.axis} is out of range for a tensor of "
                                 f"shape {tuple(x.shape)}")
            c = x.shape[axis]
            rows = x.movedim(axis, 0).reshape(c, -1)
            if self.shape is None:
                shape = [1] * x.dim()
                shape[axis] = c
                self.shape = tuple(shape)
        if self.channels is None:
            self._init_state(c, x.device)
        elif self.channels != c:
            raise ValueError(f"{self.name}: the channel axis {self.axis} had {self.channels} channels, now "
                             f"{c} (tensor of shape {tuple(x.shape)}); a per-channel scale needs a fixed "
                             "channel count")
        return rows

    def _finite_abs_max(self, rows: Tensor) -> tuple[Tensor, Tensor, int]:
        """``(|rows| with non-finite elements set to -1, finite max per row, number non-finite)``."""
        a = rows.abs()
        m = a.amax(dim=1)
        bad = 0
        if not bool(torch.isfinite(m).all()):
            fin = torch.isfinite(a)
            bad = int((~fin).sum())
            self.nonfinite += bad
            a = torch.where(fin, a, -1.0)
            m = a.amax(dim=1).clamp(min=0.0)
        return a, m, bad

    # -- state ----------------------------------------------------------------
    def _init_state(self, channels: int, device: torch.device) -> None:
        self.channels = channels
        self.amax = torch.zeros(channels, dtype=torch.float32, device=device)

    def _observe(self, rows: Tensor) -> None:
        raise NotImplementedError

    @property
    def seen_data(self) -> bool:
        """Whether any finite element was observed."""
        return self.numel > 0

    # -- data parallel --------------------------------------------------------
    def all_reduce(self, group: Any = None) -> None:
        """Merge this observer's state with the same observer on every rank of ``group``.

        Every rank must call this for the same observers in the same order.
        """
        dev = _comm_device(self.amax.device if self.amax is not None else None)
        shape = list(self.shape or ())
        meta = torch.tensor([self.channels or 0, len(shape)] + shape + [0] * (8 - len(shape)),
                            dtype=torch.int64, device=dev)
        dist.all_reduce(meta, op=dist.ReduceOp.MAX, group=group)
        channels, ndim = int(meta[0]), int(meta[1])
        if channels == 0:
            return  # no rank saw data
        if self.channels is None:
            self._init_state(channels, dev)
            if self.axis is not None:
                self.shape = tuple(int(v) for v in meta[2:2 + ndim])
        elif self.channels != channels:
            raise ValueError(f"{self.name}: ranks disagree on the number of channels ({self.channels} here, "
                             f"{channels} elsewhere)")
        sums = torch.tensor([self.calls, self.numel, self.nonfinite], dtype=torch.float64, device=dev)
        dist.all_reduce(sums, op=dist.ReduceOp.SUM, group=group)
        self.calls, self.numel, self.nonfinite = (int(v) for v in sums.tolist())
        amax = self.amax.to(dev)
        dist.all_reduce(amax, op=dist.ReduceOp.MAX, group=group)
        self.amax = amax
        self._all_reduce_more(dev, group)

    def _all_reduce_more(self, device: torch.device, group: Any) -> None:
        pass

    def __repr__(self) -> str:
        what = "tensor" if self.axis is None else f"channel(axis={self.axis})"
        return f"{type(self).__name__}({self.name or '?'}, {what}, calls={self.calls}, numel={self.numel})"


class MaxObserver(Observer):
    """Running finite max |x| (per tensor or per channel)."""

    def _observe(self, rows: Tensor) -> None:
        bad = 0
        if rows.shape[0] == 1:  # one reduction pass, no |x| copy
            lo, hi = torch.aminmax(rows)
            m = torch.maximum(-lo, hi).reshape(1)
            if not bool(torch.isfinite(m).all()):
                _, m, bad = self._finite_abs_max(rows)
        else:
            _, m, bad = self._finite_abs_max(rows)
        self.numel += rows.numel() - bad
        assert self.amax is not None
        self.amax = torch.maximum(self.amax, m.to(self.amax))


class HistogramObserver(Observer):
    """Max and histogram of |x| over ``[0, bins * 2**k]`` (see the module docstring).

    Attributes (after data): ``counts`` (float64 ``[channels, bins]``), ``k``
    (int64 ``[channels]``: bin width ``2**k``), ``amax`` (exact finite max).
    """

    def __init__(self, axis: int | None = None, name: str = "", bins: int = 2048) -> None:
        super().__init__(axis, name)
        if isinstance(bins, bool) or not isinstance(bins, int) or bins < 2:
            raise ValueError(f"bins={bins!r} must be an int >= 2")
        self.bins = bins
        self.counts: Tensor | None = None
        self.k: Tensor | None = None

    def _init_state(self, channels: int, device: torch.device) -> None:
        super()._init_state(channels, device)
        self.counts = torch.zeros(channels, self.bins, dtype=torch.float64, device=device)
        self.k = torch.full((channels,), K_MIN, dtype=torch.int64, device=device)

    @property
    def width(self) -> Tensor:
        """Bin width per channel (float64)."""
        assert self.k is not None
        return torch.ldexp(torch.ones_like(self.k, dtype=torch.float64), self.k)

    def _rebin(self, k_new: Tensor) -> None:
        """Bring the counts to bin-width exponents ``k_new >= k`` exactly (2**shift bins -> 1)."""
        assert self.counts is not None and self.k is not None
        shift = (k_new - self.k).clamp(min=0, max=62)
        if bool((shift > 0).any()):
            c, b = self.counts.shape
            j = torch.arange(b, device=self.counts.device).expand(c, b)
            idx = (j >> shift[:, None]) + torch.arange(c, device=self.counts.device)[:, None] * b
            new = torch.zeros(c * b, dtype=self.counts.dtype, device=self.counts.device)
            new.index_add_(0, idx.reshape(-1), self.counts.reshape(-1))
            self.counts = new.reshape(c, b)
        self.k = torch.maximum(self.k, k_new)

    def _observe(self, rows: Tensor) -> None:
        assert self.counts is not None and self.k is not None and self.amax is not None
        bins = self.bins
        if rows.shape[0] == 1:
            # one tensor: |x| once, its max (one sync to place the range), torch.histc
            a = rows.abs()
            m = a.max()
            mf = float(m)
            n = a.numel()
            if not math.isfinite(mf):
                fin = torch.isfinite(a)
                bad = int((~fin).sum())
                self.nonfinite += bad
                n -= bad
                mf = float(torch.where(fin, a, 0.0).max()) if n else 0.0
                m = torch.tensor(mf, device=a.device)
            k = _width_exponent(mf, bins)
            if k > int(self.k[0]):
                self._rebin(torch.tensor([k], dtype=torch.int64, device=self.k.device))
            k0 = int(self.k[0])
            hi = math.ldexp(bins, k0)
            if hi * bins <= _F32_MAX:
                h = torch.histc(a, bins=bins, min=0.0, max=hi)  # Inf / NaN are outside [0, hi]: ignored
            else:  # histc's x * bins would overflow float32: count in units of the width (a power of two: exact)
                h = torch.histc(a * math.ldexp(1.0, -k0), bins=bins, min=0.0, max=float(bins))
            self.counts[0] += h.to(self.counts)
            self.amax = torch.maximum(self.amax, m.reshape(1).to(self.amax))
            self.numel += n
            return
        a, m, bad = self._finite_abs_max(rows)
        self._rebin(torch.maximum(self.k, _width_exponents(m, bins).to(self.k.device)))
        inv = torch.ldexp(torch.ones_like(self.k, dtype=torch.float32), -self.k).to(a.device)
        idx = (a * inv[:, None]).floor_().clamp_(max=bins - 1).long()  # -1 (non-finite) stays negative
        idx += torch.arange(a.shape[0], device=a.device)[:, None] * bins
        keep = a >= 0
        flat = idx[keep] if not bool(keep.all()) else idx.reshape(-1)
        self.counts += torch.bincount(flat, minlength=self.counts.numel()).reshape(self.counts.shape).to(
            self.counts)
        self.amax = torch.maximum(self.amax, m.to(self.amax))
        self.numel += a.numel() - bad

    def _all_reduce_more(self, device: torch.device, group: Any) -> None:
        assert self.k is not None and self.counts is not None
        k = self.k.to(device, copy=True)  # not self.k itself: the shift is measured from it
        dist.all_reduce(k, op=dist.ReduceOp.MAX, group=group)
        self.counts = self.counts.to(device)
        self.k = self.k.to(device)
        self._rebin(k)
        dist.all_reduce(self.counts, op=dist.ReduceOp.SUM, group=group)

    def bin_edges(self) -> Tensor:
        """``[channels, bins + 1]`` edges (float64)."""
        assert self.k is not None
        j = torch.arange(self.bins + 1, dtype=torch.float64, device=self.k.device)
        return j[None, :] * self.width[:, None]
