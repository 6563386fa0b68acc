"""Rendering of a mixed-precision search (:class:`qsim_hooks.search.SearchResult`): rich tables.

Kept apart from :mod:`qsim_hooks.report` (which is near its size limit); like it, this module computes
nothing: it takes the result's plain rows and builds tables. It imports no ``search`` module (the result
is read through its attributes), so ``search`` can import it for ``__rich__``.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console, Group
from rich.table import Table

from .report import Column, build_table, fmt_db, fmt_number, fmt_percent, print_table

__all__ = ["SEARCH_UNIT_COLUMNS", "SEARCH_CONFIG_COLUMNS", "search_tables", "search_renderable", "render_search"]

SEARCH_UNIT_COLUMNS: tuple[Column, ...] = (
    Column("unit", "unit", justify="left", style="bold"),
    Column("modules", "modules", justify="left"),
    Column("format", "format", justify="left"),
    Column("sqnr_alone_db", "SQNR dB\nalone", fmt_db),
    Column("cost_share", "cost\nshare", fmt_number),
)
SEARCH_CONFIG_COLUMNS: tuple[Column, ...] = (
    Column("source", "configuration", justify="left", style="bold"),
    Column("cost", "cost", fmt_number),
    Column("predicted_sqnr_db", "predicted\nSQNR dB", fmt_db),
    Column("measured_sqnr_db", "measured\nSQNR dB", fmt_db),
    Column("top1_agreement", "top-1\nagree %", fmt_percent),
    Column("metric", "metric", fmt_number),
)


def search_tables(result: Any) -> list[Table]:
    """The per-unit choice, and every configuration evaluated or priced (built, not printed)."""
    b = result.best
    units = build_table(result.rows(), SEARCH_UNIT_COLUMNS,
                        title=f"Mixed precision: {b.source} choice, cost {float(b.cost):.4g} {result.cost_unit} "
                              f"(budget {result.budget:g})")
    rows = [e.row() for e in result.evaluated] + [
        {**u.row(), "source": f"{u.source} (over budget)"} for u in result.uniform if u.config is None]
    caption = None if result.metric_full is None else f"metric in full precision: {fmt_number(result.metric_full)}"
    configs = build_table(rows, SEARCH_CONFIG_COLUMNS, title="Configurations: predicted vs measured",
                          caption=caption)
    return [units, configs]


def search_renderable(result: Any) -> Group:
    """The tables as one rich renderable (``SearchResult.__rich__``)."""
    return Group(*search_tables(result))


def render_search(result: Any, console: Console | None = None) -> None:
    """Print the search's tables."""
    console = console or Console()
    for t in search_tables(result):
        print_table(t, console)
