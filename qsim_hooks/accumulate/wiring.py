"""A session's accumulators at run time: what the interception's ``run_gemm`` calls for every GEMM.

Every GEMM a model runs while a session is attached reaches one place,
:meth:`qsim_hooks.intercept.Interception.run_gemm`, with its operands as simulated (quantized by their points)
and the name of the module that owns the GEMM (the layer whose weight it uses, or the module that ran an
activation × activation product: attention's Q·Kᵀ and P·V). :class:`Accumulation` answers there: the GEMM
rebuilt by :func:`~.layers.simulate` with simulated sums, or ``NotImplemented`` for a module without an
accumulator (the call then runs as is). So functional GEMMs (``F.linear`` with a layer's weight, stacked
experts) are covered like layers, and the exact GEMM runs only when it is needed: for the statistics
(``stats=True``, the SQNR's reference) or for autograd (the gradient is the exact GEMM's, straight through).

Integer accumulators need integer operands: both must come from integer points (``IntFormat``) whose scale
does not vary along the reduction (per tensor, or a weight's per-output-channel scale in ``F.linear`` or a
convolution). The codes are read back from the values (``x / scale``, the scale ``amax / qmax`` of the
quantized tensor itself, checked to give whole numbers), summed by the integer accumulator, then rescaled
(``codes_sum * scale_a * scale_b``) and the bias added in fp32. Anything else is refused, naming the module.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..formats import IntFormat
from ..marks import marked_by
from .layers import simulate
from .spec import Accumulator

__all__ = ["AccumulatorStats", "Accumulation", "check_operands"]


@dataclass
class AccumulatorStats:
    """Running figures of one module's simulated sums against the exact fp32 GEMM of the same operands."""

    module: str
    accumulator: str
    calls: int = 0
    signal: float = 0.0  # sum of squares of the exact outputs
    noise: float = 0.0  # sum of squares of (simulated - exact)
    max_rel: float = 0.0  # largest |simulated - exact| / max |exact| of one call
    overflowed: int = 0
    outputs: int = 0

    def update(self, sim: Tensor, exact: Tensor, over: Tensor) -> None:
        d = (sim.double() - exact.double())
        e = exact.double()
        self.calls += 1
        self.signal += float((e * e).sum())
        self.noise += float((d * d).sum())
        top = float(e.abs().max()) if e.numel() else 0.0
        if top > 0:
            self.max_rel = max(self.max_rel, float(d.abs().max()) / top)
        self.overflowed += int(over.sum())
        self.outputs += over.numel()

    @property
    def sqnr_db(self) -> float | None:
        if not self.calls:
            return None
        if self.noise == 0:
            return math.inf
        return 10 * math.log10(self.signal / self.noise) if self.signal > 0 else -math.inf

    def as_dict(self) -> dict[str, Any]:
        return {"module": self.module, "accumulator": self.accumulator, "calls": self.calls,
                "sqnr_db": self.sqnr_db, "max_rel_error": self.max_rel if self.calls else None,
                "overflowed": self.overflowed, "overflow_fraction": self.overflowed / self.outputs
                if self.outputs else None}


def check_operands(name: str, acc: Accumulator, formats: Mapping[str, Any]) -> None:
    """``formats``: a layer's ``{"input"|"weight": format or None}``. A coarser accumulator than an operand
    warns (every product is rounded when it is added); an integer accumulator on an operand that is not
    integer-quantized is refused (it sums codes)."""
    if acc.is_int:
        for role, f in formats.items():
            if not isinstance(f, IntFormat):
                raise ValueError(f"module {name or '<model>'!r}: accumulator {acc.name!r} sums integer codes, but "
                                 f"its {role} format is {getattr(f, 'name', 'none (full precision)')!r}: give both "
                                 "operands an integer format (int8, ...) or use a float accumulator")
        return
    mine = acc.format.man_bits  # type: ignore[union-attr]
    for role, f in formats.items():
        m = getattr(f, "man_bits", None)
        if m is not None and m > mine:
            warnings.warn(f"module {name!r}: accumulator {acc.name!r} keeps {mine} mantissa bits, fewer than "
                          f"its {role} format {f.name!r} ({m}): every product is rounded when it is added",
                          UserWarning, stacklevel=4)


_CHANNEL_OUT = {"linear": -1, "conv": 1}  # where a weight's output channel (its axis 0) lands in the result


def _codes(t: Tensor, which: str, weight_axis: bool) -> tuple[Tensor, Tensor] | str:
    """``t`` as integer codes and the scale that multiplies them (a 0-d tensor, or one per index of axis 0)."""
    p = marked_by(t)
    fmt = getattr(p, "format", None)
    if not isinstance(fmt, IntFormat):
        return f"operand {which} is not from an integer point ({getattr(fmt, 'name', 'no point')})"
    gran = fmt.scaling.granularity
    if gran == "channel" and weight_axis and fmt.scaling.axis in (None, 0):
        top = t.detach().abs().reshape(t.shape[0], -1).amax(dim=1)
        scale = (top / fmt.qmax).reshape(-1, *([1] * (t.dim() - 1)))
    elif gran == "tensor":
        scale = t.detach().abs().amax() / fmt.qmax
    else:
        return (f"operand {which} ({fmt.name}) has a {gran} scale along the reduction: codes x scales do not "
                "factor out of the sum")
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    codes = t.detach().float() / scale
    whole = torch.round(codes)
    if not bool(((codes - whole).abs() <= 1e-3).all()):
        return f"operand {which} ({fmt.name}) is not on one integer grid (a static scale no value reached?)"
    return whole, scale


def _integer(g: Any, a: Tensor, b: Tensor, acc: Accumulator, over: bool, module: str) -> Any:
    """The integer accumulator's GEMM on the operands' codes, rescaled; a reason (str) when it cannot run."""
    if g.op not in ("linear", "conv", "matmul", "mm", "bmm") and not g.op.startswith("einsum:"):
        return f"an integer accumulator on {g.op} (linear, conv, matmul, mm, bmm, einsum are rebuilt)"
    ca, cb = _codes(a, "a", False), _codes(b, "b", g.op in _CHANNEL_OUT)
    for c in (ca, cb):
        if isinstance(c, str):
            raise ValueError(f"module {module or '<model>'!r}: integer accumulator {acc.name!r} on {g.op}: {c}; "
                             "use a float accumulator, or integer formats with a per-tensor scale")
    (xa, sa), (xb, sb) = ca, cb  # type: ignore[misc]
    bias = None
    if g.op in _CHANNEL_OUT:  # the bias joins after the rescale, in fp32
        args = list(g.args)
        bias = args[2] if len(args) > 2 else g.kwargs.get("bias")
        if len(args) > 2:
            args[2] = None
        g = dataclasses.replace(g, args=tuple(args), kwargs={k: v for k, v in g.kwargs.items() if k != "bias"})
    res = simulate(g, xa, xb, acc, over)
    if isinstance(res, str):
        return res
    y, ov = res
    along = [-1 if i == _CHANNEL_OUT.get(g.op, 0) % y.dim() else 1 for i in range(y.dim())]  # the output channel
    y = y.float() * (sa * (sb if sb.dim() == 0 else sb.reshape(along))).float()  # int32 -> fp32, rescaled
    if bias is not None:
        y = y + bias.float().reshape(along)
    return y.to(torch.result_type(a, b)), ov


def _needs_grad(g: Any, a: Tensor, b: Tensor) -> bool:
    if not torch.is_grad_enabled():
        return False
    return a.requires_grad or b.requires_grad or any(isinstance(t, Tensor) and t.requires_grad
                                                     for t in (*g.args, *g.kwargs.values()))


class Accumulation:
    """The accumulators of one session, by module name, and their statistics (``stats=True``).

    Called by the interception as ``acc(g, a, b, module)``: the simulated result of GEMM ``g``, or
    ``NotImplemented`` when ``module`` has no accumulator. A GEMM that cannot be rebuilt warns once per
    module and call (its sums stay exact); ``skipped`` keeps what was said.
    """

    def __init__(self, accumulators: Mapping[str, Accumulator], stats: bool = False) -> None:
        self.by_module = dict(accumulators)
        self.collect = stats
        self.stats: dict[str, AccumulatorStats] = {}
        self.skipped: dict[tuple[str, str], str] = {}
        self.integer: Any = None  # set by the session: reads integer operands as codes and scales

    def __call__(self, g: Any, a: Tensor, b: Tensor, module: str) -> Any:
        acc = self.by_module.get(module)
        if acc is None:
            return NotImplemented
        grad = _needs_grad(g, a, b)
        with torch.no_grad():
            res = simulate(g, a, b, acc, self.collect) if not acc.is_int else _integer(g, a, b, acc, self.collect,
                                                                                        module)
        if isinstance(res, str):
            self._skip(module, g.op, res)
            return NotImplemented
        sim, over = res
        if not (self.collect or grad):
            return sim
        exact = g.call(a, b)  # the reference of the statistics and the path of the gradient
        if self.collect:
            st = self.stats.get(module)
            if st is None:
                st = self.stats[module] = AccumulatorStats(module, acc.name)
            assert over is not None
            st.update(sim, exact.detach(), over)
        return exact + (sim.to(exact.dtype) - exact).detach() if grad else sim

    def _skip(self, module: str, op: str, why: str) -> None:
        if (module, op) not in self.skipped:
            self.skipped[module, op] = why
            warnings.warn(f"accumulator not simulated (sums stay exact) for module {module or '<model>'!r}: {why}",
                          UserWarning, stacklevel=5)
