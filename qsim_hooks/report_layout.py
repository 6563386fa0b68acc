"""Tables that fit the console, drawn with rich: the layouts of :mod:`qsim_hooks.table_text` (every row in the
width there is, never a name, a header word or a number cut in two) with styles and a header rule.

:class:`FittedTable` lays its rows out when rich renders it, for the width the console has (80 columns, 200,
a notebook), by :func:`qsim_hooks.table_text.fit`'s order of retreat (wrapped text, constant columns in the
caption, short headers with a legend, the least important columns left out, module names folded at dots,
a vertical layout). The design reason: rich alone shrinks every column and folds text at any character
(``layer1 / .0.con / v1``); here rich only draws cells that were already wrapped at allowed places into
widths that add up to the console's. :class:`Parts` is one line broken only between its pieces.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from rich import box
from rich.console import Console, ConsoleOptions, Group, RenderResult
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from .table_text import (
    GAP,
    Column,
    Layout,
    cell_lines,
    fit,
    html_table,
    natural_table_width,
    notes,
    vertical_blocks,
    wrap,
)

__all__ = ["Column", "FittedTable", "Parts", "html_table", "render_text", "GAP"]

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
        return notes(self.columns, self.cells, self.caption, lay)

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
        below = self.notes(lay)
        if below:
            parts.append(Text("\n".join(below), style="dim"))
        yield Group(*parts)

    def __rich_measure__(self, console: Console, options: ConsoleOptions) -> Measurement:
        widest = natural_table_width(self.columns, self.cells)
        return Measurement(min(20, options.max_width), min(widest, options.max_width))

    def _table(self, lay: Layout) -> Table:
        t = Table(title=self.title, box=box.SIMPLE_HEAD if self.header_rule else None, show_edge=False,
                  pad_edge=False, padding=(0, 1), collapse_padding=True, header_style="bold")
        for i, w in zip(lay.columns, lay.widths):
            c = self.columns[i]
            head = "\n".join(wrap(c.short if lay.short and c.short else c.header, w, "words"))
            t.add_column(head, justify=c.justify, style=c.style, width=w, no_wrap=True, overflow="fold")
        for r in self.cells:
            t.add_row(*("\n".join(cell_lines(self.columns[i], r[i], w, lay.fold))
                        for i, w in zip(lay.columns, lay.widths)))
        return t

    def _vertical(self, width: int) -> Group:
        """One block per row: the first column's value (bold), then ``header: value`` lines."""
        parts: list[Any] = [Text(self.title, style="bold")] if self.title else []
        for first, *lines in vertical_blocks(self.columns, self.cells, width):
            parts.append(Group(Text(first, style="bold"), *(Text(ln) for ln in lines), Text("")))
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
