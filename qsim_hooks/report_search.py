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

__all__ = ["search_unit_columns", "search_config_columns", "search_front_columns", "search_tables",
           "search_renderable", "render_search", "render_front", "front_table"]


def _fmt(label: str) -> Any:
    return fmt_db if label == "SQNR dB" else fmt_number


def search_unit_columns(result: Any) -> tuple[Column, ...]:
    p = result.predicted_label
    return (Column("unit", "unit", justify="left", style="bold"),
            Column("modules", "modules", justify="left"),
            Column("format", "format", justify="left"),
            Column("loss", "additive\nloss", fmt_number),
            Column("alone", f"{p}\nalone", _fmt(p)),
            Column("cost_share", "cost\nshare", fmt_number))


def search_config_columns(result: Any) -> tuple[Column, ...]:
    p, s = result.predicted_label, result.score_label
    cols = [Column("source", "configuration", justify="left", style="bold"),
            Column("cost", "cost", fmt_number),
            Column("predicted", f"predicted\n{p}", _fmt(p)),
            Column("measured", f"measured\n{p}", _fmt(p))]
    if result.estimate == "fisher":
        cols.append(Column("score", f"score\n{s}", _fmt(s)))
    if result.score != "output_sqnr":
        cols.append(Column("output_sqnr_db", "output\nSQNR dB", fmt_db))
    cols += [Column("top1_agreement", "top-1\nagree %", fmt_percent), Column("metric", "metric", fmt_number)]
    return tuple(cols)


def search_front_columns(result: Any) -> tuple[Column, ...]:
    return (Column("cost", "cost", fmt_number),
            Column("predicted", f"predicted\n{result.predicted_label}", _fmt(result.predicted_label)),
            Column("choice", "assignment", justify="left"))


def search_tables(result: Any) -> list[Table]:
    """The per-unit choice, and every configuration evaluated or priced (built, not printed)."""
    b = result.best
    units = build_table(result.rows(), search_unit_columns(result),
                        title=f"Mixed precision: {b.source} choice, cost {float(b.cost):.4g} {result.cost_unit} "
                              f"(budget {result.budget:g}; score {result.score}, estimate {result.estimate})")
    rows = [e.row() for e in result.evaluated] + [
        {**u.row(), "source": f"{u.source} (over budget)"} for u in result.uniform if u.config is None]
    notes = []
    if result.metric_full is not None:
        notes.append(f"metric in full precision: {fmt_number(result.metric_full)}")
    if result.score_full is not None:
        notes.append(f"score {result.score} in full precision: {fmt_number(result.score_full)}")
    if result.loss_full is not None:
        notes.append(f"loss in full precision: {fmt_number(result.loss_full)}")
    configs = build_table(rows, search_config_columns(result), title="Configurations: predicted vs measured",
                          caption="; ".join(notes) or None)
    return [units, configs]


def front_table(result: Any, max_rows: int = 12) -> Table:
    """The predicted Pareto front, cheapest first: cost, prediction, the assignment (built, not printed); a
    long front is shown as ``max_rows`` points evenly spread over it, the cheapest and the dearest included."""
    pts = result.front
    n = len(pts)
    keep = sorted({round(i * (n - 1) / (max_rows - 1)) for i in range(max_rows)}) if n > max_rows else range(n)
    rows = [{**pts[i], "choice": ", ".join(f"{u or '<model>'} {c}" for u, c in pts[i]["choice"].items())}
            for i in keep]
    shown = f"{len(rows)} of {n} assignments" if n > len(rows) else f"{n} assignments"
    return build_table(rows, search_front_columns(result),
                       title=f"Pareto front (predicted, {shown}): {result.cost_unit} vs {result.predicted_label}",
                       caption=None if n == len(rows) else "the whole front: the result JSON (--result, or "
                                                           "--out's .front.json)")


def search_renderable(result: Any) -> Group:
    """The tables as one rich renderable (``SearchResult.__rich__``)."""
    return Group(*search_tables(result))


def render_search(result: Any, console: Console | None = None) -> None:
    """Print the search's tables."""
    console = console or Console()
    for t in search_tables(result):
        print_table(t, console)


def render_front(result: Any, console: Console | None = None) -> None:
    """Print the Pareto front table."""
    print_table(front_table(result), console or Console())
