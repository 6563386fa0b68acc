"""Rendering of the accumulator statistics: one line per layer whose GEMM ran through the engine.

Kept beside :mod:`.report` (which it builds on) so that the per-point table stays one module under the size
limit; like it, this takes plain rows (``Session.accumulator_rows()``) and computes nothing.
"""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from .report import Column, build_table, fmt_db, fmt_module, fmt_number, fmt_percent, print_table

__all__ = ["ACCUMULATOR_COLUMNS", "accumulator_table", "render_accumulators"]

ACCUMULATOR_COLUMNS = (
    Column("module", "module", fmt_module, justify="left"),
    Column("accumulator", "accumulator", justify="left"),
    Column("calls", "calls"),
    Column("sqnr_db", "SQNR dB (vs exact fp32 sum)", fmt_db),
    Column("max_rel_error", "max rel. error", fmt_number),
    Column("overflow_fraction", "overflowed %", fmt_percent),
)


def accumulator_table(rows: list[dict], *, title: str | None = "Accumulators") -> Table:
    """The accumulator rows as a table (built, not printed)."""
    caption = ("simulated sums against the exact fp32 GEMM of the same quantized operands; overflowed: outputs "
               "at the format's largest value or beyond (float), any partial sum out of range (integer)")
    return build_table(rows, ACCUMULATOR_COLUMNS, title=title, caption=caption)


def render_accumulators(rows: list[dict], console: Console | None = None, *,
                        title: str | None = "Accumulators") -> Table:
    """Print the accumulator table and return it."""
    return print_table(accumulator_table(rows, title=title), console)
