"""A quantization point at run time: one format applied to one tensor of one module.

Weights, layer inputs/outputs (and attention internals) all reach their
format through a :class:`QuantPoint`. It carries the static amax (from a
calibration, when there is one), an optional observer (calibration mode), and
the cheap per-call statistics that ``stats=True`` turns on. Statistics are
accumulated as tensors on the data's device (no host sync per call) and merged
exactly across calls: SQNR is ``sum(x^2) / sum((x - q)^2)`` over everything seen.

:class:`StaticScales` is what a session accepts as ``calibration=``: anything
that answers ``amax_for(entry)`` (a :class:`qsim_hooks.Calibration` does).

A point marks what it returns (:mod:`qsim_hooks.marks`) and counts its calls
(``fired``), so a session can say which point covered each GEMM operand and
which configured points never ran.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from . import guards, reuse
from .formats import FloatFormat, Format
from .formats.base import check_tensor
from .marks import mark
from .planning import PlanEntry
from .stats import sqnr_db_from_sums

__all__ = ["QuantPoint", "PointStats", "ObserverFn", "StaticScales", "CheckedScales"]

#: an observer sees what a point is given (before quantizing) and returns nothing
ObserverFn = Callable[[Any], None]


@runtime_checkable
class StaticScales(Protocol):
    """A source of static amax values per plan entry (``None``: the point keeps its dynamic scale)."""

    def amax_for(self, entry: PlanEntry) -> Tensor | None: ...


@runtime_checkable
class CheckedScales(StaticScales, Protocol):
    """Static scales that can also check that they were made for a model (raising ValueError if not)."""

    def validate(self, model: nn.Module) -> Any: ...


class PointStats:
    """Running sums for one point; read them with :meth:`as_dict`."""

    __slots__ = ("calls", "_t", "_lock")

    def __init__(self) -> None:
        self.calls = 0
        self._lock = threading.Lock()  # threads running the model at once (nn.DataParallel) merge one by one
        self._t: Tensor | None = None  # [numel, finite, sum_x2, sum_err2, saturated, flushed, amax]

    def update(self, x: Tensor, y: Tensor, mask: Tensor | None) -> None:
        if x.is_meta:  # no values: a call, no data
            with self._lock:
                self.calls += 1
            return
        with torch.no_grad():
            x = x.detach().float()
            y = y.detach().float()
            # non-finite inputs are the format's convention, not noise; a finite input
            # that comes out Inf/NaN (a non-saturating overflow) is infinite noise
            fin_x = torch.isfinite(x)
            fin = fin_x
            xf = torch.where(fin_x, x, 0.0)
            err = torch.where(fin_x, torch.where(torch.isnan(y), torch.inf, x - y), 0.0)
            sat = (fin_x & ~mask).sum() if mask is not None else torch.zeros((), device=x.device)
            flushed = (fin_x & (x != 0) & (y == 0)).sum()
            amax = torch.where(fin_x, x.abs(), 0.0).amax() if x.numel() else torch.zeros((), device=x.device)
            row = torch.stack([torch.tensor(float(x.numel()), dtype=torch.float64, device=x.device),
                               fin.sum().double(), (xf.double() ** 2).sum(), (err.double() ** 2).sum(),
                               sat.double(), flushed.double(), amax.double()])
            with self._lock:
                if self._t is None:
                    self._t = row
                else:
                    self._t = torch.cat([self._t[:6] + row[:6], torch.maximum(self._t[6:], row[6:])])
                self.calls += 1

    def as_dict(self) -> dict[str, Any]:
        if self._t is None:
            return {"calls": self.calls, "numel": 0, "sqnr_db": None, "saturated": 0.0, "flushed": 0.0,
                    "amax": None}
        numel, fin, sx, se, sat, fl, amax = self._t.cpu().tolist()
        sqnr = sqnr_db_from_sums(sx, se, int(fin))
        return {"calls": self.calls, "numel": int(numel), "sqnr_db": sqnr,
                "saturated": sat / numel if numel else 0.0, "flushed": fl / numel if numel else 0.0,
                "amax": amax, "signal_power": sx, "noise_power": se}


def _castable_into(fmt: Format, x: Tensor) -> bool:
    """A plain (unscaled) float cast of a non-empty float32 tensor: what :meth:`QuantPoint._into` may write."""
    return type(fmt) is FloatFormat and fmt.scaling is None and x.dtype == torch.float32 and x.numel() > 0


class QuantPoint:
    """Applies ``entry.format`` to a tensor, with optional static amax, observer and stats."""

    def __init__(self, entry: PlanEntry, *, stats: bool = False, amax: Any = None,
                 generator: torch.Generator | None = None) -> None:
        self.entry = entry
        self.format: Format | None = entry.format
        self.stats = PointStats() if stats else None
        self.generator = generator
        self.observer: ObserverFn | None = None
        self.version = 0  # bumped whenever the amax changes (for anything caching a result of this point)
        self.fired = 0  # calls, with or without statistics
        self._amax: Tensor | None = None
        self._by_axis: dict[int, tuple[Format, Format]] = {}
        self._rows: tuple[Format, Format] | None = None
        self._flush_check = True  # until the first call with data (guards.check_flushed)
        if amax is not None:
            self.set_amax(amax)

    @property
    def key(self) -> tuple[str, str, str]:
        return self.entry.key

    @property
    def amax(self) -> Tensor | None:
        return self._amax

    def set_amax(self, amax: Any) -> None:
        if amax is None:
            self._amax = None
        else:
            t = torch.as_tensor(amax, dtype=torch.float32).detach()
            if t.numel() == 0 or not bool(torch.isfinite(t).all()) or bool((t <= 0).any()):
                raise ValueError(f"{self.describe()}: static amax must be finite and > 0, got "
                                 f"{t.flatten()[:4].tolist()}")
            self._amax = t
        self.version += 1

    def describe(self) -> str:
        e = self.entry
        return f"{e.module or '<model>'}.{e.tensor}" if e.point == "weight" else \
            f"{e.module or '<model>'}[{e.point}]"

    def format_for_axis(self, axis: int) -> Format | None:
        """The format with an open (``None``) scaling axis filled by ``axis`` (cached)."""
        fmt = self.format
        if fmt is None:
            return None
        cached = self._by_axis.get(axis)
        if cached is None or cached[0] is not fmt:
            cached = (fmt, fmt.with_axis(axis))
            self._by_axis[axis] = cached
        return cached[1]

    def rows_format(self, fmt: Format) -> Format:
        """``fmt`` with a per-tensor scale made one scale per row (axis 0): a stack of weight matrices laid out
        as one row per matrix gets one scale per matrix. Other formats are returned as they are."""
        sc = getattr(fmt, "scaling", None)
        if sc is None or sc.granularity != "tensor":
            return fmt
        cached = self._rows
        if cached is None or cached[0] is not fmt:
            cached = (fmt, dataclasses.replace(fmt, scaling=dataclasses.replace(sc, granularity="channel", axis=0)))
            self._rows = cached
        return cached[1]

    def _quantize(self, fmt: Format, x: Tensor, amax: Tensor | None) -> Tensor:
        if type(fmt).__call__ is not Format.__call__:  # a format with its own calling rules (compat)
            return fmt(x, amax=amax, generator=self.generator)
        check_tensor(x, f"format {fmt.name}")
        return fmt._quantize_checked(x, amax, self.generator)  # amax was checked once, by set_amax

    def __call__(self, x: Tensor, axis: int | None = None, *, rows: bool = False, reuse_ok: bool = False,
                 own: bool = False) -> Tensor:
        """Quantize ``x``; ``axis`` fills an open scaling axis (attention operands); ``rows`` gives each row of a
        2-D ``x`` its own scale where the format has one per tensor (:meth:`rows_format`). ``reuse_ok``: the
        caller's consumer only reads the result, so a known one may be handed out again (:mod:`.reuse`).
        ``own``: the caller made ``x`` and gives it up (nothing else holds it or a view of it, no autograd
        records it), so a plain cast may be written into it (:meth:`_into`): the same bits, no new buffer."""
        traced = torch.compiler.is_compiling()  # no bookkeeping inside a traced region (guards, weakrefs)
        if not traced:
            self.fired += 1
        if self.observer is not None:
            self.observer(x)
        fmt = self.format if axis is None else self.format_for_axis(axis)
        if fmt is None or not isinstance(x, Tensor) or not x.is_floating_point():
            if fmt is not None and isinstance(x, Tensor):
                guards.refuse_complex(self.describe(), fmt.name, x)
            return x
        if rows:
            fmt = self.rows_format(fmt)
        if traced:
            return self._apply(fmt, x)
        # the format's own torch calls are no model code: no torch-function mode sees them (the session's
        # interception would only pass them on, and a fused kernel compiled under a mode would recompile)
        with torch._C.DisableTorchFunction():
            if self.stats is None and self.observer is None and self._amax is None and reuse.eligible(fmt, x):
                y = self._into(fmt, x) if own and _castable_into(fmt, x) and not self._flush_check else \
                    self._reused(fmt, x, reuse_ok)
            else:
                y = self._apply(fmt, x)
        mark(y, self)
        return y

    def _reused(self, fmt: Format, x: Tensor, known_ok: bool) -> Tensor:
        """:meth:`_apply` through :mod:`.reuse`: a known result if the caller allows it, and the result
        remembered for the next point (exactly what ``_apply`` gives; the flush check sees the same pair)."""
        y = reuse.lookup(fmt, x) if known_ok else None
        if y is None:
            y = self._quantize(fmt, x, None)
        reuse.record(fmt, x, y, known_ok)
        if self._flush_check:
            self._flush_check = guards.check_flushed(self.describe(), fmt, x, y)
        return y

    def _into(self, fmt: FloatFormat, x: Tensor) -> Tensor:
        """The cast of ``x`` (what :meth:`_quantize` gives), written into ``x`` by a fused kernel; the result is
        on the grid for the next point (:mod:`.reuse`). After the first call: its flush check needs ``x``."""
        y = fmt.cast(x, None, into=True)
        reuse.record(fmt, x, y, False)
        return y

    def _apply(self, fmt: Format, x: Tensor) -> Tensor:
        amax = self._amax
        if amax is not None and amax.device != x.device:
            amax = self._amax = amax.to(x.device)
        if self.stats is None:
            y = self._quantize(fmt, x, amax)
            if self._flush_check:
                self._flush_check = guards.check_flushed(self.describe(), fmt, x, y)
            return y
        if torch.is_grad_enabled() and x.requires_grad:
            y = self._quantize(fmt, x, amax)
            with torch.no_grad():
                _, mask = fmt._forward(x.detach().float(), amax, None, True)
        else:
            if x.numel() == 0:
                return x.clone()
            y32, mask = fmt._forward(x.detach().float(), amax, self.generator, True)
            y = y32.to(x.dtype)
        self.stats.update(x, y, mask)
        if self._flush_check:
            self._flush_check = guards.check_flushed(self.describe(), fmt, x, y)
        return y
