"""Rendering: rich tables, JSON and CSV. The only module of the library that writes output.

Everything here takes plain data (lists of dicts, as produced by
:mod:`qsim_hooks.stats`) and turns it into text; nothing here computes a
statistic. A table is described by a tuple of :class:`Column` (which key,
which header, how a value is written, how it may wrap, how important it is),
so a new table is one more column tuple and one small function on top of
:func:`build_table`; JSON and CSV work on any rows. Tables are laid out for the
console's width when they are printed (:mod:`qsim_hooks.report_layout`): at 80
columns they wrap text, fold module names at dots and leave out the least
important columns, never cutting a name or a number. Which rows a table shows
(order, top N, grouping) is data, chosen by :mod:`qsim_hooks.rows`
(``select_stats`` is re-exported here).

``render_*`` print and return ``None`` (nothing for a REPL to echo); ``*_table``
build the renderable without printing.

Non-finite floats (an exact format's ``inf`` SQNR) are written ``inf`` /
``-inf`` / ``nan``: as strings in JSON (strict JSON has no such numbers) and
as text in CSV and tables (Python's ``float()`` reads all three back).
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

from rich.console import Console, Group

from .planning import EMPTY_PLAN, PLAN_TABLE_COLUMNS
from .report_layout import Column, FittedTable, Parts, html_table
from .report_values import fmt_db, fmt_module, fmt_number, fmt_percent, fmt_pow2, fmt_range, fmt_text, nonfinite
from .rows import select_stats
from .stats import FORMAT_ROW_KEYS, format_rows

__all__ = ["Column", "FittedTable", "build_table", "print_table", "FORMAT_COLUMNS", "formats_table",
           "render_formats_table", "formats_caption", "render_heading", "to_json", "to_csv", "fmt_text",
           "fmt_number", "fmt_pow2", "fmt_db", "format_rows", "STATS_COLUMNS", "select_stats", "stats_table",
           "render_stats", "GROUP_STATS_COLUMNS", "STATIC_AMAX_COLUMN", "fmt_range", "STATS_EXPORT_KEYS",
           "compare_line", "compare_parts", "compare_renderable", "render_compare", "SENSITIVITY_COLUMNS",
           "sensitivity_table", "render_sensitivity", "SWEEP_COLUMNS", "sweep_table", "render_sweep",
           "fmt_module", "fmt_percent", "PLAN_TABLE_COLUMNS", "plan_table", "render_plan",
           "CALIBRATION_COLUMNS", "calibration_table", "render_calibration", "html_table", "wide_console"]

Rows = Sequence[Mapping[str, Any]]


# ---------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------
def build_table(rows: Rows, columns: Sequence[Column], *, title: str | None = None,
                caption: str | None = None) -> FittedTable:
    """A table of ``rows`` under ``columns``, laid out for the console's width when printed."""
    return FittedTable(rows, columns, title=title, caption=caption)


def print_table(table: Any, console: Console | None = None) -> None:
    """Print ``table`` (any rich renderable) to ``console`` (a new stdout Console when ``None``)."""
    (console or Console()).print(table)


def render_heading(title: str, lines: Iterable[str] = (), console: Console | None = None) -> None:
    """A bold title and a few plain lines under it (run headers, settings); a line too long for the console
    breaks after a ``"; "`` between its parts first (``8 x 3 x 64 x 64`` stays on one line)."""
    console = console or Console()
    console.print(f"[bold]{title}[/bold]")
    for line in lines:
        console.print(Parts(line.split("; ")) if line else "")
    console.print()


def wide_console(console: Console | None) -> Console:
    """``console``, or a new stdout console (160 columns when stdout is not a terminal)."""
    if console is None:
        console = Console()
        if not console.is_terminal:  # a pipe or a file: room for the long module names
            console = Console(width=160)
    return console


# -- the named formats ---------------------------------------------------------
FORMAT_COLUMNS: tuple[Column, ...] = (
    Column("name", "format", justify="left", style="bold", priority=0),
    Column("bits", "bits", fmt_text, priority=2),
    Column("max", "max", fmt_number, priority=1),
    Column("min_subnormal", "min\nsubnormal", fmt_pow2, priority=2, short="min sub"),
    Column("spacing_at_1", "spacing\nat 1.0", fmt_pow2, priority=2, short="step at 1"),
    Column("sqnr_db", "SQNR dB\nN(0,1)", fmt_db, priority=0),
    Column("granularity", "scaling", justify="left", priority=1),  # last: the one long, wrapping text
)
assert {c.key for c in FORMAT_COLUMNS} == set(FORMAT_ROW_KEYS)


def formats_table(rows: Rows, *, title: str | None = "Number formats", caption: str | None = None) -> FittedTable:
    """The table of :func:`qsim_hooks.stats.format_rows` rows (built, not printed)."""
    return build_table(rows, FORMAT_COLUMNS, title=title, caption=caption)


def formats_caption(samples: int, seed: int) -> str:
    """The caption of the formats table: what its SQNR column was measured on."""
    return (f"SQNR: each format applied to {samples} samples of N(0,1) (seed {seed}). "
            "Scaled formats (scaling other than 'cast'): max and steps in units of the scale.")


def render_formats_table(rows: Rows, console: Console | None = None, *,
                         title: str | None = "Number formats", caption: str | None = None) -> None:
    """Print the formats table to ``console`` (stdout by default)."""
    print_table(formats_table(rows, title=title, caption=caption), console)


# ---------------------------------------------------------------------------
# JSON and CSV (any rows)
# ---------------------------------------------------------------------------
def _jsonable(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return nonfinite(v)
    if isinstance(v, Mapping):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    return v


def to_json(data: Any, *, indent: int | None = 2) -> str:
    """Strict JSON (non-finite floats as the strings ``"inf"``, ``"-inf"``, ``"nan"``)."""
    return json.dumps(_jsonable(data), indent=indent, allow_nan=False) + "\n"


def to_csv(rows: Rows, keys: Sequence[str] | None = None) -> str:
    """CSV with a header line; ``keys`` picks and orders the columns (default: the first row's)."""
    if keys is None:
        keys = list(rows[0].keys()) if rows else []
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(keys), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in keys})
    return buf.getvalue()


# -- per quantization point (a session's statistics) ---------------------------
STATS_COLUMNS: tuple[Column, ...] = (
    Column("module", "module", fmt_module, justify="left", style="bold", priority=0, wrap="dots"),
    Column("point", "point", justify="left", priority=0),
    Column("format", "format", justify="left", priority=1),
    Column("granularity", "granularity", justify="left", priority=3, short="scaling"),
    Column("amax", "amax seen", fmt_number, priority=3),
    Column("sqnr_db", "SQNR dB", fmt_db, priority=0),
    Column("saturated", "sat %", fmt_percent, priority=2),
    Column("flushed", "flush %", fmt_percent, priority=2),
    Column("calls", "calls", fmt_text, priority=4),
)

#: shown after "amax seen" when some point has a static (calibrated) amax
STATIC_AMAX_COLUMN = Column("static_amax", "static\namax", fmt_range, priority=2)

#: the per-point table when rows are grouped (``group=N``): one more column, the points merged
GROUP_STATS_COLUMNS: tuple[Column, ...] = (
    Column("module", "module (group)", fmt_module, justify="left", style="bold", priority=0, wrap="dots",
           short="group"),
    Column("point", "point", justify="left", priority=0),
    Column("points", "points", fmt_text, priority=3),
    *STATS_COLUMNS[2:],
)

#: the keys of ``Session.stats()`` rows written by CSV exports, in order
STATS_EXPORT_KEYS = ("module", "point", "tensor", "format", "granularity", "amax", "sqnr_db", "saturated",
                     "flushed", "calls", "numel", "signal_power", "noise_power", "decided_by")


def stats_table(rows: Rows, *, title: str | None = "Quantization points", caption: str | None = None,
                sort: Literal["model", "sqnr"] = "model", top: int | None = None,
                point: str | Sequence[str] | None = None, group: int | None = None,
                sqnr_below: float | None = None) -> FittedTable:
    """The per-point table of ``Session.stats()`` rows (built, not printed); options as
    :func:`qsim_hooks.rows.select_stats`."""
    if caption is None and rows and all(r.get("calls") is None for r in rows):
        caption = "statistics were not collected: create the session with stats=True"
    selected = select_stats(rows, sort=sort, top=top, point=point, group=group, sqnr_below=sqnr_below)
    if group is not None and caption is None:
        caption = (f"points grouped by the first {group} component{'s' if group > 1 else ''} of the module name: "
                   "SQNR from the summed signal and noise powers, % weighted by elements, calls summed")
    columns = GROUP_STATS_COLUMNS if group is not None else STATS_COLUMNS
    if group is None and any(r.get("static_amax") is not None for r in selected):  # a calibration: its scales
        at = [c.key for c in columns].index("amax") + 1
        columns = (*columns[:at], STATIC_AMAX_COLUMN, *columns[at:])
    return build_table(selected, columns, title=title, caption=caption)


def render_stats(rows: Rows, console: Console | None = None, *, title: str | None = "Quantization points",
                 caption: str | None = None, sort: Literal["model", "sqnr"] = "model", top: int | None = None,
                 point: str | Sequence[str] | None = None, group: int | None = None,
                 sqnr_below: float | None = None) -> None:
    """Print the per-point table (``qs.report()``); options as :func:`qsim_hooks.rows.select_stats`."""
    print_table(stats_table(rows, title=title, caption=caption, sort=sort, top=top, point=point, group=group,
                            sqnr_below=sqnr_below), wide_console(console))


# -- the plan (qsim_hooks.plan) ----------------------------------------------------
def plan_table(plan: Any, *, title: str | None = "Plan: the format of every quantization point",
               caption: str | None = None, header_rule: bool = True) -> FittedTable:
    """The rows of a :class:`~qsim_hooks.planning.Plan` (``plan.to_rows()``, or the rows themselves);
    ``header_rule=False`` and ``title=None`` give the layout of ``str(plan)`` (which draws it without rich)."""
    rows = plan.to_rows() if hasattr(plan, "to_rows") else list(plan)
    return FittedTable(rows, PLAN_TABLE_COLUMNS, title=title, caption=caption, header_rule=header_rule,
                       empty=EMPTY_PLAN)


def render_plan(plan: Any, console: Console | None = None, **options: Any) -> None:
    """Print the plan table."""
    print_table(plan_table(plan, **options), wide_console(console))


# -- the model against full precision (qsim_hooks.compare) ----------------------
def _as_mapping(result: Any) -> Mapping[str, Any]:
    if isinstance(result, Mapping):
        return result
    if hasattr(result, "as_dict"):
        return result.as_dict()
    raise TypeError(f"expected a qsim_hooks.analysis.Comparison or its as_dict(), got {type(result).__name__}")


def compare_parts(result: Any) -> list[str]:
    """The pieces of the summary line: output SQNR, max abs error, top-1 agreement, metric, batches."""
    d = _as_mapping(result)
    parts = [f"output SQNR {fmt_db(d.get('output_sqnr_db'))} dB",
             f"max |error| {fmt_number(d.get('max_abs_error'))}"]
    if d.get("top1_agreement") is not None:
        rows = int(d.get("top1_rows") or 0)
        agree = round(float(d["top1_agreement"]) * rows)
        parts.append(f"top-1 agreement {fmt_percent(d['top1_agreement'])}% ({agree} of {rows})")
    if d.get("metric_full") is not None or d.get("metric_sim") is not None:
        parts.append(f"metric {fmt_number(d.get('metric_sim'))} (full precision {fmt_number(d.get('metric_full'))})")
    n = d.get("batches")
    if n is not None:
        parts.append(f"{n} batch{'es' if n != 1 else ''}, {d.get('numel')} output elements")
    return parts


def compare_line(result: Any) -> str:
    """One line: output SQNR, max abs error, top-1 agreement, metric (from a Comparison or its dict)."""
    return "; ".join(compare_parts(result))


def compare_renderable(result: Any, *, title: str | None = "Simulated vs full precision", stats: bool = True,
                       **stats_options: Any) -> Group:
    """The summary line of a comparison (broken only between its figures) and, with ``stats``, its table."""
    d = _as_mapping(result)
    parts: list[Any] = []
    if title:
        parts.append(f"[bold]{title}[/bold]")
    parts.append(Parts(compare_parts(d)))
    rows = d.get("stats") or []
    if stats and rows:
        parts += ["", stats_table(rows, **stats_options)]
    return Group(*parts)


def render_compare(result: Any, console: Console | None = None, *, title: str | None = "Simulated vs full precision",
                   stats: bool = True, **stats_options: Any) -> None:
    """Print the summary line of a comparison and, with ``stats``, its per-point table.

    ``stats_options`` go to :func:`stats_table` (``sort``, ``top``, ``point``, ``group``, ...).
    """
    print_table(compare_renderable(result, title=title, stats=stats, **stats_options), wide_console(console))


# -- sensitivity (qsim_hooks.sensitivity) ----------------------------------------
SENSITIVITY_COLUMNS: tuple[Column, ...] = (
    Column("rank", "rank", fmt_text, priority=1),
    Column("layer", "layer", fmt_module, justify="left", style="bold", priority=0, wrap="dots"),
    Column("points", "points", fmt_text, priority=3),
    Column("formats", "formats", justify="left", priority=2),
    Column("output_sqnr_db", "output\nSQNR dB", fmt_db, priority=0),
    Column("max_abs_error", "max\n|error|", fmt_number, priority=2),
    Column("top1_agreement", "top-1\nagree %", fmt_percent, priority=1),
)
_GAIN_COLUMN = Column("gain_db", "gain dB\nvs all", fmt_db, priority=0)
_METRIC_COLUMN = Column("metric", "metric", fmt_number, priority=1)


def _metric_caption(rows: Rows, caption: str | None) -> str | None:
    if caption is None and any(r.get("metric") is not None for r in rows):
        caption = f"metric in full precision: {fmt_number(rows[0].get('metric_full'))}"
    return caption


def sensitivity_table(rows: Rows, *, title: str | None = None, caption: str | None = None,
                      top: int | None = None) -> FittedTable:
    """The ranking of :func:`qsim_hooks.sensitivity` (built, not printed)."""
    if top is not None and (isinstance(top, bool) or not isinstance(top, int) or top < 1):
        raise ValueError(f"top={top!r} must be a positive int or None")
    mode = rows[0].get("mode") if rows else "one"
    if title is None:
        title = ("Sensitivity: one layer quantized at a time, lowest output SQNR first" if mode == "one" else
                 "Sensitivity: all quantized but one layer, largest recovery first")
    if caption is None and mode != "one" and rows:
        caption = f"with every layer quantized: output SQNR {fmt_db(rows[0].get('all_quantized_sqnr_db'))} dB"
    caption = _metric_caption(rows, caption)
    cols = SENSITIVITY_COLUMNS + ((_GAIN_COLUMN,) if mode != "one" else ())
    cols += (_METRIC_COLUMN,) if any(r.get("metric") is not None for r in rows) else ()
    return build_table(list(rows)[:top] if top is not None else rows, cols, title=title, caption=caption)


def render_sensitivity(rows: Rows, console: Console | None = None, *, title: str | None = None,
                       caption: str | None = None, top: int | None = None) -> None:
    """Print the sensitivity ranking (``result.render()`` does the same)."""
    print_table(sensitivity_table(rows, title=title, caption=caption, top=top), wide_console(console))


# -- a sweep over formats (qsim_hooks.analysis.sweep) ----------------------------
SWEEP_COLUMNS: tuple[Column, ...] = (
    Column("format", "format", justify="left", style="bold", priority=0),
    Column("roles", "roles", justify="left", priority=2),
    Column("output_sqnr_db", "output\nSQNR dB", fmt_db, priority=0),
    Column("max_abs_error", "max\n|error|", fmt_number, priority=1),
    Column("top1_agreement", "top-1\nagree %", fmt_percent, priority=1),
)


def sweep_table(rows: Rows, *, title: str | None = "Output SQNR per format",
                caption: str | None = None) -> FittedTable:
    """The rows of :func:`qsim_hooks.analysis.sweep` (built, not printed); a metric column when there is one."""
    caption = _metric_caption(rows, caption)
    cols = SWEEP_COLUMNS + ((_METRIC_COLUMN,) if any(r.get("metric") is not None for r in rows) else ())
    if any("accumulator" in r for r in rows):  # a sweep over accumulators (qsim_hooks.accumulate)
        cols = cols[:2] + (Column("accumulator", "accumulator", justify="left", priority=0),) + cols[2:]
    return build_table(rows, cols, title=title, caption=caption)


def render_sweep(rows: Rows, console: Console | None = None, *, title: str | None = "Output SQNR per format",
                 caption: str | None = None) -> None:
    """Print the sweep table (``result.render()`` does the same)."""
    print_table(sweep_table(rows, title=title, caption=caption), wide_console(console))


# -- a calibration (qsim_hooks.calibrate) ------------------------------------------
CALIBRATION_COLUMNS: tuple[Column, ...] = (
    Column("module", "module", fmt_module, justify="left", style="bold", priority=0, wrap="dots"),
    Column("point", "point", justify="left", priority=0),
    Column("amax", "amax", fmt_range, priority=0),
    Column("format", "format", justify="left", priority=1),
    Column("method", "method", justify="left", priority=2),
    Column("granularity", "scaling", justify="left", priority=2),
    Column("numel", "values seen", fmt_text, priority=3),
)


def calibration_table(calibration: Any, *, title: str | None = "Calibrated static scales",
                      caption: str | None = None) -> FittedTable:
    """One row per calibrated point of a :class:`~qsim_hooks.calibration.Calibration` (or its ``to_rows()``)."""
    rows = calibration.to_rows() if hasattr(calibration, "to_rows") else list(calibration)
    skipped = getattr(calibration, "skipped", None)
    if caption is None and skipped:
        caption = f"{len(skipped)} point(s) without a static amax (calibration.skipped says why)"
    return build_table(rows, CALIBRATION_COLUMNS, title=title, caption=caption)


def render_calibration(calibration: Any, console: Console | None = None, **options: Any) -> None:
    """Print the calibration table."""
    print_table(calibration_table(calibration, **options), wide_console(console))
