"""Layers compute their GEMM through the engine: a forward hook that replaces the layer's output.

The hook runs first among the layer's forward hooks (so an output format quantizes the simulated sum) and
receives what the layer was given after its input hook, with the layer's parametrized (quantized) weight,
so the operands are exactly the quantized ones. The layer's own output is kept: it is the exact fp32 GEMM
of the same operands, the reference of the statistics, and the path of the gradient (straight through).
This is the one place that decides how a layer's GEMM is re-routed; model-wide GEMM interception can
replace it by calling :func:`~.layers.module_gemm` / :func:`~.engine.matmul_with_overflow` elsewhere.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize
from torch.utils.hooks import RemovableHandle

from .layers import module_gemm, unsupported
from .spec import Accumulator

__all__ = ["AccumulatorStats", "attach", "check_operands"]


@dataclass
class AccumulatorStats:
    """Running figures of one layer's simulated sums against the exact fp32 GEMM of the same operands."""

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
    """A coarser accumulator than an operand warns; an integer accumulator on a layer is refused (the layer
    hook sees dequantized floats, not codes: use :func:`~.engine.accumulate_matmul` on the codes)."""
    if acc.is_int:
        raise ValueError(f"module {name!r}: accumulator {acc.name!r} is an integer accumulator; on layers only "
                         "float accumulators are wired (the layer's operands reach the hook dequantized); "
                         "sum integer codes with qsim_hooks.accumulate.accumulate_matmul")
    mine = acc.format.man_bits  # type: ignore[union-attr]
    for role, f in formats.items():
        m = getattr(f, "man_bits", None)
        if m is not None and m > mine:
            warnings.warn(f"module {name!r}: accumulator {acc.name!r} keeps {mine} mantissa bits, fewer than "
                          f"its {role} format {f.name!r} ({m}): every product is rounded when it is added",
                          UserWarning, stacklevel=4)


def _hooks(acc: Accumulator, stats: AccumulatorStats | None):
    """A pre-hook and a post-hook: the forward runs under ``parametrize.cached()``, so the post-hook's GEMM reads
    the very weight the layer used (one quantization per forward, the same stochastic-rounding draw)."""
    open_caches: list[Any] = []

    def pre(module: nn.Module, args: tuple[Any, ...]) -> None:
        ctx = parametrize.cached()
        ctx.__enter__()
        open_caches.append(ctx)

    def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> Any:
        try:
            if not isinstance(output, Tensor) or not args or not isinstance(args[0], Tensor):
                return None
            with torch.no_grad():
                sim, over = module_gemm(module, args[0], acc)
                sim = sim.to(output.dtype)
                if stats is not None:
                    stats.update(sim, output, over)
            return output + (sim - output).detach()  # the simulated value; the exact GEMM's gradient
        finally:
            if open_caches:
                open_caches.pop().__exit__(None, None, None)

    return pre, hook


def attach(targets: Mapping[str, tuple[nn.Module, Accumulator]],
           operands: Mapping[str, Mapping[str, Any]] | None = None, *,
           stats: bool = False) -> tuple[list[RemovableHandle], dict[str, AccumulatorStats]]:
    """Hook every supported module of ``targets`` (``{name: (module, accumulator)}``); warn, naming them, about
    those whose GEMM cannot be rebuilt (their sums stay exact). ``operands``: ``{name: {"input"|"weight": format}}``
    checked first (:func:`check_operands`). Returns the handles and the statistics."""
    for name, (_, acc) in targets.items():
        check_operands(name, acc, (operands or {}).get(name, {}))
    handles: list[RemovableHandle] = []
    out: dict[str, AccumulatorStats] = {}
    skipped = []
    try:
        for name, (module, acc) in targets.items():
            why = unsupported(module)
            if why is not None:
                skipped.append(f"{name or '<model>'} ({why})")
                continue
            st = AccumulatorStats(name, acc.name) if stats else None
            if st is not None:
                out[name] = st
            pre, hook = _hooks(acc, st)
            handles.append(module.register_forward_pre_hook(pre))  # last: after the input point's pre-hook
            # first among the forward hooks (before the output point), and also when the forward raised
            handles.append(module.register_forward_hook(hook, prepend=True, always_call=True))
    except BaseException:
        for h in handles:
            h.remove()
        raise
    if skipped:
        warnings.warn("accumulator not simulated (sums stay exact) for: " + "; ".join(skipped), UserWarning,
                      stacklevel=3)
    return handles, out
