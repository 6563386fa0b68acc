"""What the evaluations' accumulator tables share: run a model under each accumulator, one row each.

An evaluation gives its operand configurations (``QuantConfig`` without an accumulator), a function that
runs the model and returns its output, and its task metric on that output. For each configuration the model
runs once with exact sums (the baseline), then once per accumulator (``QuantConfig(accumulator=...)``,
``stats=True``), and each row says: the task metric, the output's SQNR against the exact-sum run of the same
operands (so the operands' own error is left out), the worst GEMM's accumulator SQNR (the simulated sums
against the exact fp32 GEMM of the same quantized operands, from ``qs.accumulator_stats``), and the
fraction of all GEMM outputs that overflowed.

The output SQNR is lower than the per-GEMM one: a sum that changes in its last bits can move a later
layer's input across a rounding boundary of its operand format, an error of one operand step there.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from qsim_hooks import QuantConfig, quantized, report
from qsim_hooks.accumulate import Accumulator
from qsim_hooks.formats import FloatFormat

__all__ = ["FP22", "float_accumulators", "int_accumulators", "evaluate", "no_grad", "render", "sqnr_db"]

#: the issue's "fp22": fp32's exponent, 13 mantissa bits
FP22 = FloatFormat(8, 13, name="fp22")


def float_accumulators(chunk: int) -> list[Accumulator]:
    """fp32, fp22, bf16, fp16, each without promotion (one sum over the whole K) and with a promotion into
    fp32 every ``chunk`` products."""
    out = []
    for f, name in (("fp32", "fp32"), (FP22, "fp22"), ("bf16", "bf16"), ("fp16", "fp16")):
        out += [Accumulator(f, name=name), Accumulator(f, chunk=chunk, promote="fp32", name=f"{name}-c{chunk}")]
    return out


def int_accumulators() -> list[Accumulator]:
    """int32 and int16, wrapping (two's complement, as integer MAC arrays do)."""
    return [Accumulator("int32"), Accumulator("int16")]


def sqnr_db(ref: Tensor, x: Tensor) -> float:
    r, d = ref.double(), x.double() - ref.double()
    noise = float((d * d).sum())
    return math.inf if noise == 0 else 10 * math.log10(float((r * r).sum()) / noise)


def _row(operands: str, acc: Accumulator | None, metric: float, out_sqnr: float | None,
         stats: Mapping[str, Any]) -> dict[str, Any]:
    sts = list(stats.values())
    outputs = sum(s.outputs for s in sts)
    promo = "-" if acc is None or acc.chunk is None or acc.is_int else f"fp32 every {acc.chunk}"
    return {"operands": operands, "accumulator": "exact" if acc is None else acc.name.split("-")[0],
            "promotion": promo, "metric": metric,
            "output_sqnr_db": out_sqnr, "accumulator_sqnr_db": min((s.sqnr_db for s in sts), default=None),
            "overflow": sum(s.overflowed for s in sts) / outputs if outputs else None,
            "gemms": len(sts)}


def evaluate(model: nn.Module, operands: Mapping[str, tuple[QuantConfig, Sequence[Accumulator]]],
             run: Callable[[nn.Module], Tensor],
             metric: Callable[[Tensor], float]) -> tuple[list[dict[str, Any]], list[Tensor]]:
    """One row per operand configuration with exact sums, then one per accumulator of that configuration, and
    the model's output of each row. ``run(model)`` runs the model (attached) and returns its output;
    ``metric(output)`` is the task metric."""
    rows, outputs = [], []
    for name, (cfg, accs) in operands.items():
        with quantized(model, cfg):
            exact = run(model)
        rows.append(_row(name, None, metric(exact), None, {}))
        outputs.append(exact)
        for acc in accs:
            with quantized(model, dataclasses.replace(cfg, accumulator=acc), stats=True) as qs:
                y = run(model)
                stats = qs.accumulator_stats
            rows.append(_row(name, acc, metric(y), sqnr_db(exact, y), stats))
            outputs.append(y)
    return rows, outputs


def no_grad(model: nn.Module, x: Tensor) -> Tensor:
    with torch.no_grad():
        return model(x)


def render(rows: Sequence[Mapping[str, Any]], console: Any, *, title: str, metric: str,
           fmt_metric: Callable[[Any], str], caption: str, seconds: float) -> None:
    """The accumulator table (80 columns: wraps, never cuts a number), then the time it took."""
    cols = (report.Column("operands", "operands", justify="left", style="bold"),
            report.Column("accumulator", "accum.", justify="left"),
            report.Column("promotion", "promotion", justify="left"),
            report.Column("metric", metric, fmt_metric),
            report.Column("output_sqnr_db", "output SQNR\ndB vs exact", report.fmt_db),
            report.Column("accumulator_sqnr_db", "sum SQNR dB\nworst GEMM", report.fmt_db),
            report.Column("overflow", "overflow\n%", report.fmt_percent))
    report.print_table(report.build_table(rows, cols, title=title, caption=caption), console)
    if console is not None:
        console.print(f"({seconds:.1f} s)", markup=False, highlight=False)
        console.print()
