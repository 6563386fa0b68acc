"""Progress bars: :func:`track`, the one helper every loop of the library that can take a while uses.

Library code never prints; a progress bar is the one exception, and it goes through ``rich.progress`` on
stderr (stdout carries data: ``--json``, ``--csv``), transient (gone when the loop ends), and by default
only where someone watches: ``enabled=None`` shows it when its console is a terminal or a notebook. It is a context
manager so the bar is removed on every way out of the loop (its end, a ``break``, an exception).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

__all__ = ["track"]

T = TypeVar("T")


@contextmanager
def track(items: Iterable[T], description: str, *, total: int | None = None, enabled: bool | None = None,
          console: Console | None = None) -> Iterator[Iterator[T]]:
    """``with track(batches, "calibrating") as it: for b in it: ...``: the items, with a bar while they run.

    Args:
        items: any iterable (a list, a DataLoader, a generator), iterated once, lazily.
        description: the bar's label.
        total: how many items there will be (default ``len(items)`` where it has one; without a total
            the bar counts up).
        enabled: ``None`` (default) shows the bar when ``console`` is a terminal or a Jupyter notebook,
            ``True`` always (into a pipe or a file rich writes no bar, the bar being transient, only a line
            end), ``False`` never (the items pass through untouched).
        console: where the bar is drawn (default: a new stderr console).

    Yields:
        an iterator over ``items``; the bar advances as each item is finished (when the next one is asked for).
    """
    if enabled is False:
        yield iter(items)
        return
    console = console if console is not None else Console(stderr=True)
    if enabled is None and not (console.is_terminal or console.is_jupyter):
        yield iter(items)
        return
    if total is None:
        try:
            total = len(items)  # type: ignore[arg-type]
        except TypeError:
            total = None
    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   console=console, transient=True)
    task = bar.add_task(description, total=total)

    def advancing() -> Iterator[T]:
        for item in items:
            yield item
            bar.advance(task)

    with bar:
        yield advancing()
