"""Tables as plain text: columns laid out for a width, never a name, a header word or a number cut in two.

A table is a tuple of :class:`Column` (which key, which header, how a value is written, how it may wrap,
how important it is) and its cells (the rows already written as text); :func:`fit` finds a layout for a
width, in this order of retreat:

1. the natural layout (one line per row);
2. text columns wrapped at spaces and commas, headers at spaces; a column whose value is the same in
   every row moves into the caption (``scaling: cast in every row``);
3. shorter headers (``sat %`` for ``saturated %``) with a legend under the table;
4. the least important columns left out, the caption naming them;
5. module names folded at their dots (``encoder.layer.1.`` / ``output.dense``);
6. a vertical layout: one block per row, one ``header: value`` line per column.

The design reason: rich alone shrinks every column to fit and then folds text at any character, which cuts
``layer1.0.conv1`` into ``layer1 / .0.con / v1`` and ``3.4e+38`` into two lines. This module needs no rich
and prints nothing, so plain data can have a ``str()`` that fits a terminal (:class:`qsim_hooks.planning.Plan`)
without importing a renderer: :func:`plain_table` draws a layout as text, :func:`html_table` writes the rows
as HTML. :mod:`qsim_hooks.report_layout` draws the same layouts with rich (styles, a header rule).
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from .report_values import fmt_text

__all__ = ["Column", "Layout", "fit", "wrap", "min_width", "natural_table_width", "cell_lines", "notes",
           "vertical_blocks", "plain_table", "html_table", "GAP"]

Rows = Sequence[Mapping[str, Any]]
Wrap = Literal["never", "dots", "words"]
#: spaces between two columns
GAP = 2
#: a column whose value is the same in more rows than this goes into the caption when space is short
_CONSTANT_MIN_ROWS = 2
#: columns of a priority above this are left out before module names are folded at their dots
_FOLD_BEFORE = 2


@dataclass(frozen=True)
class Column:
    """One table column.

    Attributes:
        key: the row key it shows.
        header: its header (``\\n`` starts a new header line; headers also wrap at spaces).
        write: value -> text.
        justify: ``"left"``, ``"center"`` or ``"right"``.
        style: a rich style for the cells.
        priority: 0 is always shown; when the width runs out, the largest numbers are left out first.
        wrap: how a value may break across lines: ``"never"`` (numbers), ``"dots"`` (module names: after a
            dot, a comma or a space), ``"words"`` (text: at spaces and after commas); ``None``: ``"words"``
            for left-justified columns, ``"never"`` otherwise.
        short: a shorter header used when the width runs out (a legend under the table explains it).
    """

    key: str
    header: str
    write: Callable[[Any], str] = fmt_text
    justify: Literal["left", "center", "right"] = "right"
    style: str | None = None
    priority: int = 1
    wrap: Wrap | None = None
    short: str | None = None

    @property
    def wrap_mode(self) -> Wrap:
        if self.wrap is not None:
            return self.wrap
        return "words" if self.justify == "left" else "never"

    @property
    def title(self) -> str:
        """The header on one line (for legends and notes)."""
        return " ".join(self.header.split())


# breaking text only where it may break --------------------
_BREAKS = {"never": None, "dots": re.compile(r"[^.,\s]*[.,]+|[^.,\s]+"), "words": re.compile(r"[^,\s]+,?|,")}


def _tokens(line: str, mode: Wrap) -> list[tuple[str, str]]:
    """``(piece, separator before it)`` pairs: a line may break before any piece (the separator is dropped)."""
    pat = _BREAKS[mode]
    if pat is None or not line:
        return [(line, "")]
    out: list[tuple[str, str]] = []
    pos = 0
    for m in pat.finditer(line):
        sep = line[pos:m.start()]
        out.append((m.group(), " " if sep else ""))
        pos = m.end()
    return out or [(line, "")]


def wrap(text: str, width: int, mode: Wrap) -> list[str]:
    """``text`` in lines of at most ``width`` (a piece longer than that keeps its own line, whole)."""
    lines: list[str] = []
    for line in text.split("\n"):
        cur = ""
        for piece, sep in _tokens(line, mode):
            cand = f"{cur}{sep}{piece}" if cur else piece
            if cur and len(cand) > width:
                lines.append(cur)
                cur = piece
            else:
                cur = cand
        lines.append(cur)
    return lines


def min_width(text: str, mode: Wrap) -> int:
    """The widest piece of ``text`` that may not be broken."""
    return max((len(p) for line in text.split("\n") for p, _ in _tokens(line, mode)), default=0)


def natural_width(text: str) -> int:
    return max((len(line) for line in text.split("\n")), default=0)


# the layout --------------------
@dataclass(frozen=True)
class Layout:
    """What :func:`fit` decided for one width."""

    columns: tuple[int, ...]  # indices of the shown columns, in order
    widths: tuple[int, ...]
    short: bool  # short headers used
    fold: bool  # module names folded at dots
    constant: tuple[int, ...]  # columns moved into the caption (the same value in every row)
    dropped: tuple[int, ...]  # columns left out


class _Sizes:
    """Every column's natural and minimal widths, for full and short headers, with and without folding."""

    def __init__(self, columns: Sequence[Column], cells: Sequence[Sequence[str]]) -> None:
        self.columns = columns
        self.cells = cells

    def header(self, i: int, short: bool) -> str:
        c = self.columns[i]
        return c.short if short and c.short else c.header

    def natural(self, i: int, short: bool) -> int:
        vals = [natural_width(r[i]) for r in self.cells]
        return max([natural_width(self.header(i, short)), *vals])

    def minimal(self, i: int, short: bool, fold: bool) -> int:
        c = self.columns[i]
        mode = c.wrap_mode
        if mode == "dots" and not fold:
            mode = "never"
        vals = [min_width(r[i], mode) for r in self.cells]
        return max([min_width(self.header(i, short), "words"), *vals])


def _constant_columns(columns: Sequence[Column], cells: Sequence[Sequence[str]]) -> tuple[int, ...]:
    if len(cells) <= _CONSTANT_MIN_ROWS:
        return ()
    return tuple(i for i, c in enumerate(columns)
                 if c.priority > 0 and len({r[i] for r in cells}) == 1)


def fit(columns: Sequence[Column], cells: Sequence[Sequence[str]], width: int) -> Layout | None:
    """The first layout of the retreat (module docstring) whose columns fit ``width``; ``None``: vertical."""
    sizes = _Sizes(columns, cells)
    every = tuple(range(len(columns)))
    const = _constant_columns(columns, cells)
    levels = sorted({c.priority for c in columns}, reverse=True)

    def gone(p: int) -> tuple[int, ...]:  # the columns left out when only priorities <= p are kept
        return tuple(i for i in every if columns[i].priority > p and i not in const)

    # (wrap, short headers, fold names, moved to the caption, left out), in the order of retreat; constant
    # columns move one at a time, least important first, while rows still fit on one line each
    by_priority = sorted(const, key=lambda i: (-columns[i].priority, -i))
    states = [(False, False, False, tuple(by_priority[:k]), ()) for k in range(len(const) + 1)]
    states += [(True, False, False, const, ()), (True, True, False, const, ())]
    states += [(True, True, False, const, gone(p)) for p in levels if p >= _FOLD_BEFORE]
    states += [(True, True, True, const, gone(p)) for p in levels]
    for wrapped, short, fold, moved, left_out in states:
        shown = tuple(i for i in every if i not in moved and i not in left_out)
        if not shown:
            continue
        mins = [sizes.minimal(i, short, fold) if wrapped else sizes.natural(i, short) for i in shown]
        room = width - GAP * (len(shown) - 1)
        if sum(mins) > room:
            continue
        widths = _spread(sizes, shown, mins, room - sum(mins), short, fold)
        return Layout(shown, tuple(widths), short, fold, moved, left_out)
    return None


def _spread(sizes: _Sizes, shown: tuple[int, ...], mins: list[int], spare: int, short: bool,
            fold: bool) -> list[int]:
    """Give the spare width to the wrapping columns where it saves the most lines per character, then to
    the most important columns up to their natural widths."""
    widths = list(mins)
    heights: dict[tuple[int, int], list[int]] = {}

    def lines(j: int, w: int) -> list[int]:  # lines of each row of column j at width w
        key = (j, w)
        if key not in heights:
            i, c = shown[j], sizes.columns[shown[j]]
            mode = c.wrap_mode if (c.wrap_mode != "dots" or fold) else "never"
            heights[key] = [len(wrap(r[i], w, mode)) for r in sizes.cells]
        return heights[key]

    def total(ws: list[int]) -> int:
        per = [lines(j, w) for j, w in enumerate(ws)]
        return sum(max(col[k] for col in per) for k in range(len(sizes.cells))) if per else 0

    wrapping = [j for j in range(len(shown)) if sizes.columns[shown[j]].wrap_mode != "never"]
    now = total(widths)
    while spare > 0 and wrapping:
        best: tuple[float, int, int] | None = None
        for j in wrapping:
            top = min(sizes.natural(shown[j], short), widths[j] + spare)
            for w in range(widths[j] + 1, top + 1):  # the narrowest widening that saves a line
                trial = widths[:j] + [w] + widths[j + 1:]
                saved = now - total(trial)
                if saved > 0:
                    gain = saved / (w - widths[j])
                    if best is None or gain > best[0]:
                        best = (gain, j, w)
                    break
        if best is None:
            break
        _, j, w = best
        spare -= w - widths[j]
        widths[j] = w
        now = total(widths)
    for j in sorted(range(len(shown)), key=lambda j: (sizes.columns[shown[j]].priority, j)):
        give = min(max(0, sizes.natural(shown[j], short) - widths[j]), spare)
        widths[j] += give
        spare -= give
    return widths


def natural_table_width(columns: Sequence[Column], cells: Sequence[Sequence[str]]) -> int:
    """The width of the natural layout (every column at its widest cell or header)."""
    sizes = _Sizes(columns, cells)
    return sum(sizes.natural(i, False) for i in range(len(columns))) + GAP * max(0, len(columns) - 1)


def cell_lines(column: Column, text: str, width: int, fold: bool) -> list[str]:
    """One cell's lines in a column ``width`` wide (module names break at dots only when ``fold``)."""
    mode = column.wrap_mode
    if mode == "dots" and not fold:
        return text.split("\n")
    return wrap(text, width, mode)


def notes(columns: Sequence[Column], cells: Sequence[Sequence[str]], caption: str | None,
          lay: Layout | None) -> list[str]:
    """The lines under a table for a layout (``None``: the vertical one): the caption, the constant columns,
    the legend of short headers, the columns left out."""
    out = [caption] if caption else []
    if lay is None:
        return out
    for i in sorted(lay.constant):
        out.append(f"{columns[i].title}: {cells[0][i]} in every row")
    if lay.short:
        legend = [f"{c.short} = {c.title}" for j, c in enumerate(columns) if c.short and j in lay.columns]
        if legend:
            out.append("; ".join(legend))
    if lay.dropped:
        out.append("left out at this width: " + ", ".join(columns[i].title for i in lay.dropped)
                   + " (a wider console shows them)")
    return out


def vertical_blocks(columns: Sequence[Column], cells: Sequence[Sequence[str]], width: int) -> list[list[str]]:
    """The vertical layout: per row, its first column's value (wrapped), then ``header: value`` lines."""
    label = max((len(c.title) for c in columns[1:]), default=0) + 2
    first = columns[0]
    blocks = []
    for r in cells:
        lines = ["\n".join(wrap(r[0], width, first.wrap_mode if first.wrap_mode != "never" else "dots"))]
        for c, v in zip(columns[1:], r[1:]):
            room = width - label - 2
            if room >= max(8, min_width(v, c.wrap_mode)):  # "  header:  value", continued under the value
                lines.append(f"  {c.title + ':':<{label}}" + f"\n  {'':<{label}}".join(wrap(v, room, c.wrap_mode)))
            else:  # too narrow for both: the header on its line, the value under it
                lines.append(f"  {c.title}:\n" + "\n".join(f"    {ln}" for ln in wrap(v, width - 4, c.wrap_mode)))
        blocks.append(lines)
    return blocks


def _justified(text: str, width: int, how: str) -> str:
    return text.rjust(width) if how == "right" else (text.center(width) if how == "center" else text.ljust(width))


def plain_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[Column], width: int, *,
                caption: str | None = None, empty: str | None = None) -> str:
    """The rows as plain text in at most ``width`` columns (the layout :func:`fit` chooses; no header rule, no
    trailing spaces), the caption's lines under it."""
    if not rows and empty is not None:
        return empty
    cells = [[c.write(r.get(c.key)) for c in columns] for r in rows]
    lay = fit(columns, cells, width)
    if lay is None:
        out = ["\n".join(block) for block in vertical_blocks(columns, cells, width)]
        text = "\n\n".join(out)
    else:
        shown = [(columns[i], i, w) for i, w in zip(lay.columns, lay.widths)]
        heads = [wrap(c.short if lay.short and c.short else c.header, w, "words") for c, _, w in shown]
        lines = []
        for block in [heads, *([cell_lines(c, r[i], w, lay.fold) for c, i, w in shown] for r in cells)]:
            for k in range(max(len(b) for b in block)):
                parts = [_justified(b[k] if k < len(b) else "", w, c.justify) for b, (c, _, w) in zip(block, shown)]
                lines.append((" " * GAP).join(parts).rstrip())
        text = "\n".join(lines)
    below = [ln for note in notes(columns, cells, caption, lay) for ln in wrap(note, width, "words")]
    return text + ("\n" + "\n".join(below) if below else "")


def html_table(rows: Rows, columns: Sequence[Column], *, title: str | None = None,
               caption: str | None = None) -> str:
    """An HTML ``<table>`` of the rows (every column: a notebook scrolls), for ``_repr_html_``."""
    esc = html.escape
    head = "".join(f"<th style='text-align:{c.justify}'>{esc(c.title)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td style='text-align:{c.justify}'>{esc(c.write(r.get(c.key)))}</td>"
                                    for c in columns) + "</tr>" for r in rows)
    out = (f"<div><b>{esc(title)}</b></div>" if title else "") + \
        f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    return out + (f"<div><small>{esc(caption)}</small></div>" if caption else "")
