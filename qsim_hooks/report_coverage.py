"""Rendering of ``Session.coverage()``: the one-line summary and the table (data from :mod:`qsim_hooks.coverage`).

Kept beside :mod:`qsim_hooks.report` (whose :class:`~qsim_hooks.report.Column` tables it reuses) so that
the per-point report and the coverage report can change apart.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .report import Column, Rows, build_table, fmt_module, fmt_text, print_table, wide_console

__all__ = ["coverage_line", "COVERAGE_COLUMNS", "coverage_table", "render_coverage"]


def coverage_line(summary: Any, limit: int = 4) -> str:
    """``"412 GEMMs: 398 fully simulated, 14 not: lm_head (activation: off by rule[0]; weight: off by rule[0]),
    ..."`` (the reasons of :mod:`qsim_hooks.coverage`, per folded module, most calls first)."""
    n, ok = summary.gemms, summary.simulated
    if n == 0:
        return "0 GEMMs seen (none ran, or nothing was configured: then nothing is attached to see them)"
    if ok == n:
        text = f"{n} GEMM{'s' if n != 1 else ''}: all fully simulated"
    else:
        items = [f"{m} ({why})" if k == n - ok else f"{m} ({why}) x{k}" for m, why, k in summary.missing[:limit]]
        more = ", ..." if len(summary.missing) > limit else ""
        text = f"{n} GEMMs: {ok} fully simulated, {n - ok} not: {', '.join(items)}{more}"
    if summary.against_config:
        text += f"; {summary.against_config} against the config"
    if summary.never_fired:
        text += f"; {len(summary.never_fired)} configured point(s) never ran"
    return text


def _operands(v: Any) -> str:
    return escape(", ".join(f"{o['role']}: {o['point'] or '-'}" for o in v or ()))


COVERAGE_COLUMNS: tuple[Column, ...] = (
    Column("module", "module", fmt_module, justify="left", style="bold"),
    Column("op", "op", justify="left"),
    Column("calls", "calls", fmt_text),
    Column("status", "status", justify="left"),
    Column("operands", "covered by", _operands, justify="left"),
    Column("reason", "not covered because", lambda v: escape(fmt_text(v)), justify="left"),
)


def coverage_table(rows: Rows, *, title: str | None = "GEMM coverage", caption: str | None = None) -> Table:
    """One line per distinct (module, operation, operands) of ``Session.coverage()`` (built, not printed)."""
    return build_table(rows, COVERAGE_COLUMNS, title=title, caption=caption)


def render_coverage(cov: Any, console: Console | None = None, *, table: bool = False) -> None:
    """Print the coverage summary line of ``Session.coverage()`` and, with ``table``, the table."""
    rows, summary = cov
    console = wide_console(console)
    console.print(f"coverage: {coverage_line(summary)}", markup=False, highlight=False)
    if table and rows:
        print_table(coverage_table(rows), console)
