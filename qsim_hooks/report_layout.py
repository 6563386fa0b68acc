"""Tables that fit the console: every row laid out in the width there is, never a name, a header word or a
number cut in two.

A table is a tuple of :class:`Column` (which key, which header, how a value is written, how it may wrap,
how important it is) and plain rows; :class:`FittedTable` lays them out when rich renders it, for the
width the console has (80 columns, 200, a notebook), in this order of retreat:

1. the natural layout (one line per row);
2. text columns wrapped at spaces and commas, headers at spaces; a column whose value is the same in
   every row moves into the caption (``scaling: cast in every row``);
3. shorter headers (``sat %`` for ``saturated %``) with a legend under the table;
4. the least important columns left out, the caption naming them;
5. module names folded at their dots (``encoder.layer.1.`` / ``output.dense``);
6. a vertical layout: one block per row, one ``header: value`` line per column.

The design reason: rich alone shrinks every column to fit and then folds text at any character, which cuts
``layer1.0.conv1`` into ``layer1 / .0.con / v1`` and ``3.4e+38`` into two lines. Here rich only draws
cells that were already wrapped at allowed places into widths that add up to the console's.
:func:`html_table` writes the same rows as an HTML table (notebooks scroll, so nothing is left out).
"""

from __future__ import annotations

import html
import io
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from rich import box
from rich.console import Console, ConsoleOptions, Group, RenderResult
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from .report_values import fmt_text

__all__ = ["Column", "FittedTable", "Parts", "html_table", "render_text", "GAP"]

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


# rendering --------------------
class FittedTable:
    """Rows under columns, laid out for the console's width when rich renders it (see the module docstring).

    ``caption`` is printed under the table with what the layout adds (constant columns, left-out columns,
    the legend of short headers). ``str()`` is the table at 100 columns, without colour.
    """

    def __init__(self, rows: Iterable[Mapping[str, Any]], columns: Sequence[Column], *, title: str | None = None,
                 caption: str | None = None, header_rule: bool = True, empty: str | None = None) -> None:
        self.rows = [dict(r) for r in rows]
        self.columns = tuple(columns)
        self.title = title
        self.caption = caption
        self.header_rule = header_rule
        self.empty = empty  # printed instead of an empty table
        self.cells = [[c.write(r.get(c.key)) for c in self.columns] for r in self.rows]

    def layout(self, width: int) -> Layout | None:
        return fit(self.columns, self.cells, width)

    def notes(self, lay: Layout | None) -> list[str]:
        """The caption's lines for a layout (``None``: the vertical one)."""
        out = [self.caption] if self.caption else []
        if lay is None:
            return out
        for i in sorted(lay.constant):
            out.append(f"{self.columns[i].title}: {self.cells[0][i]} in every row")
        if lay.short:
            legend = [f"{c.short} = {c.title}" for j, c in enumerate(self.columns)
                      if c.short and j in lay.columns]
            if legend:
                out.append("; ".join(legend))
        if lay.dropped:
            out.append("left out at this width: " + ", ".join(self.columns[i].title for i in lay.dropped)
                       + " (a wider console shows them)")
        return out

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        width = options.max_width
        if not self.rows and self.empty is not None:
            yield Text(self.empty)
            return
        lay = self.layout(width)
        parts: list[Any] = []
        if lay is None:
            parts.append(self._vertical(width))
        else:
            parts.append(self._table(lay))
        notes = self.notes(lay)
        if notes:
            parts.append(Text("\n".join(notes), style="dim"))
        yield Group(*parts)

    def __rich_measure__(self, console: Console, options: ConsoleOptions) -> Measurement:
        sizes = _Sizes(self.columns, self.cells)
        n = len(self.columns)
        widest = sum(sizes.natural(i, False) for i in range(n)) + GAP * max(0, n - 1)
        return Measurement(min(20, options.max_width), min(widest, options.max_width))

    def _table(self, lay: Layout) -> Table:
        t = Table(title=self.title, box=box.SIMPLE_HEAD if self.header_rule else None, show_edge=False,
                  pad_edge=False, padding=(0, 1), collapse_padding=True, header_style="bold")
        for i, w in zip(lay.columns, lay.widths):
            c = self.columns[i]
            head = "\n".join(wrap(c.short if lay.short and c.short else c.header, w, "words"))
            t.add_column(head, justify=c.justify, style=c.style, width=w, no_wrap=True, overflow="fold")
        for r in self.cells:
            t.add_row(*("\n".join(self._wrap_cell(r[i], i, w, lay.fold)) for i, w in zip(lay.columns, lay.widths)))
        return t

    def _wrap_cell(self, text: str, i: int, width: int, fold: bool) -> list[str]:
        mode = self.columns[i].wrap_mode
        if mode == "dots" and not fold:
            return text.split("\n")
        return wrap(text, width, mode)

    def _vertical(self, width: int) -> Group:
        """One block per row: the first column's value, then ``header: value`` lines."""
        parts: list[Any] = []
        if self.title:
            parts.append(Text(self.title, style="bold"))
        label = max((len(c.title) for c in self.columns[1:]), default=0) + 2
        for r in self.cells:
            first = self.columns[0]
            lines = [Text("\n".join(wrap(r[0], width, first.wrap_mode if first.wrap_mode != "never" else "dots")),
                          style="bold")]
            for c, v in zip(self.columns[1:], r[1:]):
                room = max(8, width - label - 2)
                body = wrap(v, room, c.wrap_mode if c.wrap_mode != "never" else "never")
                lines.append(Text(f"  {c.title + ':':<{label}}" + f"\n  {'':<{label}}".join(body)))
            parts.append(Group(*lines, Text("")))
        return Group(*parts)

    def text(self, width: int = 100) -> str:
        """The table as plain text, laid out for ``width`` columns."""
        return render_text(self, width)

    def __str__(self) -> str:
        return self.text()

    def _repr_html_(self) -> str:
        return html_table(self.rows, self.columns, title=self.title, caption=self.caption)


def render_text(renderable: Any, width: int) -> str:
    """What rich prints for ``renderable`` on a ``width``-column console, as plain text."""
    con = Console(width=width, file=io.StringIO(), color_system=None, force_terminal=False)
    con.print(renderable)
    return con.file.getvalue()  # type: ignore[attr-defined]


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


class Parts:
    """Pieces of one line (``"output SQNR 22.94 dB"``, ``"max |error| 0.2188"``, ...) joined by ``sep``; a long
    line breaks only between pieces, so no piece (and no number in it) is split."""

    def __init__(self, parts: Iterable[str], sep: str = "; ") -> None:
        self.parts = [p for p in parts if p]
        self.sep = sep

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        width = options.max_width
        lines: list[str] = []
        cur = ""
        for p in self.parts:
            cand = f"{cur}{self.sep}{p}" if cur else p
            if cur and len(cand) + len(self.sep.rstrip()) > width:
                lines.append(cur + self.sep.rstrip())
                cur = p
            else:
                cur = cand
        lines.append(cur)
        yield Text("\n".join(lines))

    def __str__(self) -> str:
        return self.sep.join(self.parts)
