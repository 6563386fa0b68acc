"""A session's accumulators at run time: what the interception's ``run_gemm`` calls for every GEMM.

Every GEMM a model runs while a session is attached reaches one place,
:meth:`qsim_hooks.intercept.Interception.run_gemm`, with its operands as simulated (quantized by their points)
and the name of the module that owns the GEMM (the layer whose weight it uses, or the module that ran an
activation × activation product: attention's Q·Kᵀ and P·V). :class:`Accumulation` answers there: the GEMM
rebuilt by :func:`~.layers.simulate` with simulated sums, or ``NotImplemented`` for a module without an
accumulator (the call then runs as is). So functional GEMMs (``F.linear`` with a layer's weight, stacked
experts) are covered like layers, and the exact GEMM runs only when it is needed: for the statistics
(``stats=True``, the SQNR's reference) or for autograd (the gradient is the exact GEMM's, straight through).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

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
    """A coarser accumulator than an operand warns (every product is rounded when it is added)."""
    if acc.is_int:
        return
    mine = acc.format.man_bits  # type: ignore[union-attr]
    for role, f in formats.items():
        m = getattr(f, "man_bits", None)
        if m is not None and m > mine:
            warnings.warn(f"module {name!r}: accumulator {acc.name!r} keeps {mine} mantissa bits, fewer than "
                          f"its {role} format {f.name!r} ({m}): every product is rounded when it is added",
                          UserWarning, stacklevel=4)


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
            res = simulate(g, a, b, acc, self.collect)
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
