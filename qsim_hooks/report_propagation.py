"""Rendering of the propagated per-layer error (:mod:`qsim_hooks.propagation`): where the error starts.

Beside :mod:`qsim_hooks.report` (near its size limit) and like it, this module computes nothing: it takes
the per-layer rows (``layer``, ``type``, ``formats``, ``accumulated_sqnr_db``, ``added_sqnr_db``, ``calls``,
``numel``) and builds the table, laid out for the console (80 columns: names fold at dots, the call and
element counts go first).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from rich.console import Console

from .report import Column, FittedTable, build_table, fmt_db, fmt_module, fmt_text, print_table, wide_console

__all__ = ["PROPAGATION_COLUMNS", "PROPAGATION_CAPTION", "propagation_table", "propagation_summary",
           "render_propagation"]

PROPAGATION_COLUMNS: tuple[Column, ...] = (
    Column("layer", "layer", fmt_module, justify="left", style="bold", priority=0, wrap="dots"),
    Column("type", "type", justify="left", priority=2),
    Column("formats", "formats", justify="left", priority=1),
    Column("accumulated_sqnr_db", "accumulated\nSQNR dB", fmt_db, priority=0, short="acc. dB"),
    Column("added_sqnr_db", "added\nSQNR dB", fmt_db, priority=0, short="added dB"),
    Column("calls", "calls", fmt_text, priority=3),
    Column("numel", "elements", fmt_text, priority=4),
)

PROPAGATION_CAPTION = ("accumulated: the layer's output in the simulated run vs the full-precision run; added: its "
                       "simulated output vs its own full-precision function of the input it received in the "
                       "simulated run (inf: it adds nothing)")

Rows = Sequence[Mapping[str, Any]]


def propagation_summary(rows: Rows) -> str:
    """One line: where the error starts (the first finite accumulated SQNR) and which layer adds the most."""
    if not rows:
        return "no layers"
    start = next((r for r in rows if math.isfinite(r["accumulated_sqnr_db"])), None)
    if start is None:
        return f"{len(rows)} layers, all exact"
    worst = min(rows, key=lambda r: r["added_sqnr_db"])
    last = rows[-1]
    return (f"{len(rows)} layers; error starts at {fmt_module(start['layer'])} "
            f"({fmt_db(start['accumulated_sqnr_db'])} dB); most added by {fmt_module(worst['layer'])} "
            f"({fmt_db(worst['added_sqnr_db'])} dB); last layer {fmt_db(last['accumulated_sqnr_db'])} dB")


def propagation_table(rows: Rows, *, notes: Sequence[str] = (),
                      title: str | None = "Where the error starts: per-layer SQNR",
                      caption: str | None = None) -> FittedTable:
    """The per-layer table in execution order (built, not printed); ``notes`` (layers left out) go under it."""
    text = PROPAGATION_CAPTION if caption is None else caption
    return build_table(rows, PROPAGATION_COLUMNS, title=title, caption="\n".join([text, *notes]))


def render_propagation(rows: Rows, console: Console | None = None, *, notes: Sequence[str] = (),
                       **options: Any) -> None:
    """Print the per-layer table (``title``, ``caption`` as :func:`propagation_table`)."""
    print_table(propagation_table(rows, notes=notes, **options), wide_console(console))
