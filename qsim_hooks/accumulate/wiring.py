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
from ..formats.scaling import from_blocks, to_blocks
from ..marks import marked_by
from .engine import apply_round, rounder, simulated_matmul
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
_GEMM_OPS = ("linear", "matmul", "mm", "bmm")  # rebuilt on codes with any scale layout (groups along K)


def _fail(module: str, acc: Accumulator, op: str, why: str) -> ValueError:
    return ValueError(f"module {module or '<model>'!r}: integer accumulator {acc.name!r} on {op}: {why}; use a "
                      "float accumulator, or integer formats whose scales do not vary along the reduction (per "
                      "tensor, per token, a weight's per output channel) or vary in blocks along it")


def _point(t: Tensor, which: str) -> tuple[IntFormat, str] | str:
    p = marked_by(t)
    fmt = getattr(p, "format", None)
    if not isinstance(fmt, IntFormat):
        return f"operand {which} is not from an integer point ({getattr(fmt, 'name', 'no point')})"
    return fmt, f"{getattr(getattr(p, 'entry', None), 'point', which)} operand ({fmt.name})"


def _whole(t: Tensor, scale: Tensor, role: str) -> Tensor | str:
    codes = t.detach().float() / torch.where(scale > 0, scale, torch.ones_like(scale))
    whole = torch.round(codes)
    if not bool(((codes - whole).abs() <= 1e-3).all()):
        return f"the {role} is not on one integer grid (a static scale no value reached?)"
    return whole


def _codes(t: Tensor, which: str, weight_axis: bool) -> tuple[Tensor, Tensor] | str:
    """``t`` as integer codes and the scale that multiplies them (a 0-d tensor, or one per index of axis 0):
    the convolutions' and einsums' path, which takes per-tensor scales and a weight's per-output-channel one."""
    got = _point(t, which)
    if isinstance(got, str):
        return got
    fmt, role = got
    gran = fmt.scaling.granularity
    if gran == "channel" and weight_axis and fmt.scaling.axis in (None, 0):
        top = t.detach().abs().reshape(t.shape[0], -1).amax(dim=1)
        scale = (top / fmt.qmax).reshape(-1, *([1] * (t.dim() - 1)))
    elif gran == "tensor":
        scale = t.detach().abs().amax() / fmt.qmax
    else:
        return f"the {role} has a {fmt.scaling.describe()} scale, which this call does not rebuild on codes"
    whole = _whole(t, scale, role)
    return whole if isinstance(whole, str) else (whole, torch.where(scale > 0, scale, torch.ones_like(scale)))


def _scales(t: Tensor, which: str, red: int) -> tuple[Tensor, Tensor, list[int]] | str:
    """``t``'s codes, its scale as a tensor of ``t``'s shape, and where its scale may change along the
    reduction axis ``red`` (block starts): what a GEMM on codes needs. A scale that changes with every index
    of the reduction (per channel along it, blocks across it) is refused."""
    got = _point(t, which)
    if isinstance(got, str):
        return got
    fmt, role = got
    sc, n, red = fmt.scaling, t.dim(), red % t.dim()
    a, starts = t.detach().abs().float(), []
    if sc.granularity == "tensor":
        top = a.amax()
    elif sc.axis is None:  # filled where the point ran (attention): the layout here is not known
        return f"the {role} has a {sc.describe()} scale whose axis the point chose at run time"
    elif sc.granularity == "channel":
        ax = sc.axis % n
        if ax == red:
            return f"the {role} has a {sc.describe()} scale: one per index of the reduction, nothing to sum"
        top = a.amax(dim=[d for d in range(n) if d != ax], keepdim=True)
    else:
        if sc.axis % n != red:
            return f"the {role} has a {sc.describe()} scale: blocks across the reduction, so it changes with each k"
        xb, shape, length = to_blocks(a, red, sc.block_size)
        top = from_blocks(xb.amax(dim=-1, keepdim=True).expand_as(xb), shape, length, red, n)
        starts = list(range(sc.block_size, t.shape[red], sc.block_size))
    scale = (top / fmt.qmax).expand(t.shape)
    whole = _whole(t, scale, role)
    return whole if isinstance(whole, str) else (whole, torch.where(scale > 0, scale, torch.ones_like(scale)), starts)


def _integer_gemm(g: Any, a: Tensor, b: Tensor, acc: Accumulator, over: bool, module: str) -> Any:
    """linear / matmul / mm / bmm on codes, in groups along K: the intervals between the block starts of both
    operands' scales (one group when neither has blocks along K). Each group's codes are summed by the integer
    accumulator and rescaled, ``fp32(sum) * (scale_a * scale_b)``; the groups are added in index order in
    ``promote`` (fp32 when ``None``), then the bias in fp32."""
    lin = g.op == "linear"
    ca, cb = _scales(a, "a", -1), _scales(b, "b", -1 if lin else -2)
    for c in (ca, cb):
        if isinstance(c, str):
            raise _fail(module, acc, g.op, c)
    (xa, sa, ka), (xb, sb, kb) = ca, cb  # type: ignore[misc]
    if lin:
        xb, sb = xb.transpose(-1, -2), sb.transpose(-1, -2)
    bias = g.args[2] if len(g.args) > 2 else g.kwargs.get("bias")
    bounds = sorted({0, a.shape[-1], *ka, *kb})
    rp = rounder(acc.promote)
    y = ov = None
    for k0, k1 in zip(bounds, bounds[1:]):
        s, o = simulated_matmul(xa[..., k0:k1], xb[..., k0:k1, :], acc, None, over)
        v = s.float() * (sa[..., k0:k0 + 1] * sb[..., k0:k0 + 1, :]).float()
        y, ov = (v, o) if y is None else (apply_round(rp, y.add_(v)), None if o is None else ov | o)
    assert y is not None
    if bias is not None:
        y = y + bias.float()
    return y.to(torch.result_type(a, b)), ov


def _integer(g: Any, a: Tensor, b: Tensor, acc: Accumulator, over: bool, module: str) -> Any:
    """The integer accumulator's GEMM on the operands' codes, rescaled; a reason (str) when it cannot run."""
    if g.op not in ("linear", "conv", "matmul", "mm", "bmm") and not g.op.startswith("einsum:"):
        return f"an integer accumulator on {g.op} (linear, conv, matmul, mm, bmm, einsum are rebuilt)"
    if g.op in _GEMM_OPS and a.dim() >= 2 and b.dim() >= 2:
        return _integer_gemm(g, a, b, acc, over, module)
    ca, cb = _codes(a, "a", False), _codes(b, "b", g.op in _CHANNEL_OUT)
    for c in (ca, cb):
        if isinstance(c, str):
            raise _fail(module, acc, g.op, c)
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
