"""Rendering: rich tables, JSON and CSV. The only module of the library that writes output.

Everything here takes plain data (lists of dicts, as produced by
:mod:`qsim_hooks.stats`) and turns it into text; nothing here computes a
statistic. A table is described by a tuple of :class:`Column` (which key,
which header, how a value is written), so a new table (per layer, per
sweep) is one more column tuple and one small function on top of
:func:`build_table`; JSON and CSV work on any rows. Which rows a table shows
(order, top N, grouping) is data, chosen by :mod:`qsim_hooks.rows`
(``select_stats`` is re-exported here).

Non-finite floats (an exact format's ``inf`` SQNR) are written ``inf`` /
``-inf`` / ``nan``: as strings in JSON (strict JSON has no such numbers) and
as text in CSV and tables (Python's ``float()`` reads all three back).
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from rich import box
from rich.console import Console
from rich.table import Table

from .rows import select_stats
from .stats import FORMAT_ROW_KEYS, format_rows

__all__ = ["Column", "build_table", "print_table", "FORMAT_COLUMNS", "formats_table",
           "render_formats_table", "formats_caption", "render_heading", "to_json", "to_csv", "fmt_number", "fmt_pow2",
           "fmt_db", "format_rows", "STATS_COLUMNS", "select_stats", "stats_table", "render_stats",
           "GROUP_STATS_COLUMNS", "STATIC_AMAX_COLUMN", "fmt_range", "STATS_EXPORT_KEYS", "compare_line",
           "render_compare", "SENSITIVITY_COLUMNS", "sensitivity_table", "render_sensitivity", "SWEEP_COLUMNS",
           "sweep_table", "render_sweep", "fmt_module", "fmt_percent"]

Rows = Sequence[Mapping[str, Any]]


# ---------------------------------------------------------------------------
# Writing one value
# ---------------------------------------------------------------------------
def _nonfinite(v: float) -> str:
    return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")


def fmt_text(v: Any) -> str:
    """``-`` for a missing value, ``str(v)`` otherwise."""
    return "-" if v is None else str(v)


def fmt_number(v: Any) -> str:
    """Integers in full up to 10^7 (448, 57344), otherwise 4 significant digits."""
    if v is None:
        return "-"
    v = float(v)
    if not math.isfinite(v):
        return _nonfinite(v)
    if v == int(v) and abs(v) < 1e7:
        return str(int(v))
    return f"{v:.4g}"


def fmt_pow2(v: Any) -> str:
    """A power of two below 1 as ``2^k`` (``2^-9``), anything else as :func:`fmt_number`."""
    if v is None:
        return "-"
    v = float(v)
    if v > 0 and math.isfinite(v):
        mant, exp = math.frexp(v)
        if mant == 0.5 and exp - 1 < 0:
            return f"2^{exp - 1}"
    return fmt_number(v)


def fmt_db(v: Any) -> str:
    """Decibels with two decimals; ``inf`` for exact."""
    if v is None:
        return "-"
    v = float(v)
    return f"{v:.2f}" if math.isfinite(v) else _nonfinite(v)


# ---------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Column:
    """One table column: the row key it shows, its header, how a value is written."""

    key: str
    header: str
    write: Callable[[Any], str] = fmt_text
    justify: Literal["left", "center", "right"] = "right"
    style: str | None = None


def build_table(rows: Rows, columns: Sequence[Column], *, title: str | None = None,
                caption: str | None = None) -> Table:
    """A rich Table with one line per row and one column per :class:`Column`."""
    table = Table(title=title, caption=caption, caption_justify="left", header_style="bold",
                  box=box.SIMPLE_HEAD)
    for col in columns:
        # fold, never truncate: a figure cut to "3.4e…" would be wrong, not just short
        table.add_column(col.header, justify=col.justify, style=col.style, overflow="fold")
    for row in rows:
        table.add_row(*(col.write(row.get(col.key)) for col in columns))
    return table


def print_table(table: Table, console: Console | None = None) -> Table:
    """Print ``table`` to ``console`` (a new stdout Console when ``None``) and return it."""
    (console or Console()).print(table)
    return table


def render_heading(title: str, lines: Iterable[str] = (), console: Console | None = None) -> None:
    """A bold title and a few plain lines under it (run headers, settings)."""
    console = console or Console()
    console.print(f"[bold]{title}[/bold]")
    for line in lines:
        console.print(line, markup=False, highlight=False)
    console.print()


# -- the named formats ---------------------------------------------------------
FORMAT_COLUMNS: tuple[Column, ...] = (
    Column("name", "format", justify="left", style="bold"),
    Column("bits", "bits", fmt_text),
    Column("max", "max", fmt_number),
    Column("min_subnormal", "min\nsubnormal", fmt_pow2),
    Column("spacing_at_1", "spacing\nat 1.0", fmt_pow2),
    Column("sqnr_db", "SQNR dB\nN(0,1)", fmt_db),
    Column("granularity", "scaling", justify="left"),  # last: the one long, wrapping text
)
assert {c.key for c in FORMAT_COLUMNS} == set(FORMAT_ROW_KEYS)


def formats_table(rows: Rows, *, title: str | None = "Number formats",
                  caption: str | None = None) -> Table:
    """The table of :func:`qsim_hooks.stats.format_rows` rows (built, not printed)."""
    return build_table(rows, FORMAT_COLUMNS, title=title, caption=caption)


def formats_caption(samples: int, seed: int) -> str:
    """The caption of the formats table: what its SQNR column was measured on."""
    return (f"SQNR: each format applied to {samples} samples of N(0,1) (seed {seed}). "
            "Scaled formats (scaling other than 'cast'): max and steps in units of the scale.")


def render_formats_table(rows: Rows, console: Console | None = None, *,
                         title: str | None = "Number formats", caption: str | None = None) -> Table:
    """Print the formats table to ``console`` (stdout by default) and return it."""
    return print_table(formats_table(rows, title=title, caption=caption), console)


# ---------------------------------------------------------------------------
# JSON and CSV (any rows)
# ---------------------------------------------------------------------------
def _jsonable(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return _nonfinite(v)
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
def fmt_percent(v: Any) -> str:
    """A fraction in [0, 1] as a percentage with two decimals."""
    if v is None:
        return "-"
    return f"{100.0 * float(v):.2f}"


def fmt_module(v: Any) -> str:
    """A module name; the model itself (``""``) as ``<model>``."""
    if v is None:
        return "-"
    return str(v) or "<model>"


STATS_COLUMNS: tuple[Column, ...] = (
    Column("module", "module", fmt_module, justify="left", style="bold"),
    Column("point", "point", justify="left"),
    Column("format", "format", justify="left"),
    Column("granularity", "granularity", justify="left"),
    Column("amax", "amax seen", fmt_number),
    Column("sqnr_db", "SQNR dB", fmt_db),
    Column("saturated", "sat %", fmt_percent),
    Column("flushed", "flush %", fmt_percent),
    Column("calls", "calls", fmt_text),
)


def fmt_range(v: Any) -> str:
    """A static amax: one value, or ``min..max (n)`` for per-channel values; ``-`` for none (dynamic)."""
    if v is None:
        return "-"
    vals = [float(x) for x in v] if isinstance(v, (list, tuple)) else [float(v)]
    if not vals:
        return "-"
    if len(vals) == 1:
        return fmt_number(vals[0])
    return f"{fmt_number(min(vals))}..{fmt_number(max(vals))} ({len(vals)})"


#: shown after "amax seen" when some point has a static (calibrated) amax
STATIC_AMAX_COLUMN = Column("static_amax", "static\namax", fmt_range)

#: the per-point table when rows are grouped (``group=N``): one more column, the points merged
GROUP_STATS_COLUMNS: tuple[Column, ...] = (
    Column("module", "module (group)", fmt_module, justify="left", style="bold"),
    Column("point", "point", justify="left"),
    Column("points", "points", fmt_text),
    *STATS_COLUMNS[2:],
)

#: the keys of ``Session.stats()`` rows written by CSV exports, in order
STATS_EXPORT_KEYS = ("module", "point", "tensor", "format", "granularity", "amax", "sqnr_db", "saturated",
                     "flushed", "calls", "numel", "signal_power", "noise_power", "decided_by")


def stats_table(rows: Rows, *, title: str | None = "Quantization points", caption: str | None = None,
                sort: Literal["model", "sqnr"] = "model", top: int | None = None,
                point: str | Sequence[str] | None = None, group: int | None = None,
                sqnr_below: float | None = None) -> Table:
    """The per-point table of ``Session.stats()`` rows (built, not printed); options as
    :func:`qsim_hooks.rows.select_stats`."""
    selected = select_stats(rows, sort=sort, top=top, point=point, group=group, sqnr_below=sqnr_below)
    if group is not None and caption is None:
        caption = (f"points grouped by the first {group} component{'s' if group > 1 else ''} of the module name: "
                   "SQNR from the summed signal and noise powers, % weighted by elements, calls summed")
    columns = GROUP_STATS_COLUMNS if group is not None else STATS_COLUMNS
    if group is None and any(r.get("static_amax") is not None for r in selected):  # a calibration: its scales
        at = [c.key for c in columns].index("amax") + 1
        columns = (*columns[:at], STATIC_AMAX_COLUMN, *columns[at:])
    return build_table(selected, columns, title=title, caption=caption)


def _wide_console(console: Console | None) -> Console:
    if console is None:
        console = Console()
        if not console.is_terminal:  # a pipe or a file: room for the long module names
            console = Console(width=160)
    return console


def render_stats(rows: Rows, console: Console | None = None, *, title: str | None = "Quantization points",
                 caption: str | None = None, sort: Literal["model", "sqnr"] = "model", top: int | None = None,
                 point: str | Sequence[str] | None = None, group: int | None = None,
                 sqnr_below: float | None = None) -> Table:
    """Print the per-point table (``qs.report()``) and return it; options as :func:`qsim_hooks.rows.select_stats`."""
    if caption is None and rows and all(r.get("calls") is None for r in rows):
        caption = "statistics were not collected: create the session with stats=True"
    return print_table(stats_table(rows, title=title, caption=caption, sort=sort, top=top, point=point,
                                   group=group, sqnr_below=sqnr_below), _wide_console(console))


# -- the model against full precision (qsim_hooks.compare) ----------------------
def _as_mapping(result: Any) -> Mapping[str, Any]:
    if isinstance(result, Mapping):
        return result
    if hasattr(result, "as_dict"):
        return result.as_dict()
    raise TypeError(f"expected a qsim_hooks.analysis.Comparison or its as_dict(), got {type(result).__name__}")


def compare_line(result: Any) -> str:
    """One line: output SQNR, max abs error, top-1 agreement, metric (from a Comparison or its dict)."""
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
    return "; ".join(parts)


def render_compare(result: Any, console: Console | None = None, *, title: str | None = "Simulated vs full precision",
                   stats: bool = True, **stats_options: Any) -> None:
    """Print the summary line of a comparison and, with ``stats``, its per-point table.

    ``stats_options`` go to :func:`render_stats` (``sort``, ``top``, ``point``, ``group``, ...).
    """
    console = _wide_console(console)
    d = _as_mapping(result)
    if title:
        render_heading(title, [compare_line(d)], console)
    else:
        console.print(compare_line(d), markup=False, highlight=False)
    rows = d.get("stats") or []
    if stats and rows:
        render_stats(rows, console, **stats_options)


# -- sensitivity (qsim_hooks.sensitivity) ----------------------------------------
SENSITIVITY_COLUMNS: tuple[Column, ...] = (
    Column("rank", "rank", fmt_text),
    Column("layer", "layer", fmt_module, justify="left", style="bold"),
    Column("points", "points", fmt_text),
    Column("formats", "formats", justify="left"),
    Column("output_sqnr_db", "output\nSQNR dB", fmt_db),
    Column("max_abs_error", "max\n|error|", fmt_number),
    Column("top1_agreement", "top-1\nagree %", fmt_percent),
)
_GAIN_COLUMN = Column("gain_db", "gain dB\nvs all", fmt_db)


def sensitivity_table(rows: Rows, *, title: str | None = None, caption: str | None = None,
                      top: int | None = None) -> Table:
    """The ranking of :func:`qsim_hooks.sensitivity` (built, not printed)."""
    if top is not None and (not isinstance(top, int) or top < 1):
        raise ValueError(f"top={top!r} must be a positive int or None")
    mode = rows[0].get("mode") if rows else "one"
    if title is None:
        title = ("Sensitivity: one layer quantized at a time, lowest output SQNR first" if mode == "one" else
                 "Sensitivity: all quantized but one layer, largest recovery first")
    if caption is None and mode != "one" and rows:
        caption = f"with every layer quantized: output SQNR {fmt_db(rows[0].get('all_quantized_sqnr_db'))} dB"
    cols = SENSITIVITY_COLUMNS + ((_GAIN_COLUMN,) if mode != "one" else ())
    return build_table(list(rows)[:top] if top is not None else rows, cols, title=title, caption=caption)


def render_sensitivity(rows: Rows, console: Console | None = None, *, title: str | None = None,
                       caption: str | None = None, top: int | None = None) -> Table:
    """Print the sensitivity ranking and return it."""
    return print_table(sensitivity_table(rows, title=title, caption=caption, top=top), _wide_console(console))


# -- a sweep over formats (qsim_hooks.analysis.sweep) ----------------------------
SWEEP_COLUMNS: tuple[Column, ...] = (
    Column("format", "format", justify="left", style="bold"),
    Column("roles", "roles", justify="left"),
    Column("output_sqnr_db", "output\nSQNR dB", fmt_db),
    Column("max_abs_error", "max\n|error|", fmt_number),
    Column("top1_agreement", "top-1\nagree %", fmt_percent),
)
_METRIC_COLUMN = Column("metric", "metric", fmt_number)


def sweep_table(rows: Rows, *, title: str | None = "Output SQNR per format", caption: str | None = None) -> Table:
    """The rows of :func:`qsim_hooks.analysis.sweep` (built, not printed); a metric column when there is one."""
    has_metric = any(r.get("metric") is not None for r in rows)
    if caption is None and has_metric:
        caption = f"metric in full precision: {fmt_number(rows[0].get('metric_full'))}"
    cols = SWEEP_COLUMNS + ((_METRIC_COLUMN,) if has_metric else ())
    return build_table(rows, cols, title=title, caption=caption)


def render_sweep(rows: Rows, console: Console | None = None, *, title: str | None = "Output SQNR per format",
                 caption: str | None = None) -> Table:
    """Print the sweep table and return it."""
    return print_table(sweep_table(rows, title=title, caption=caption), _wide_console(console))
