"""Progress bars: :func:`track` (over items) and :func:`steps` (a count), what every loop of the library that can
take a while uses.

Library code never prints; a progress bar is the one exception, and it goes through ``rich.progress`` on
stderr (stdout carries data: ``--json``, ``--csv``), transient (gone when the loop ends), and by default
only where someone watches: ``enabled=None`` shows it when its console is a terminal or a notebook. Both
are context managers so the bar is removed on every way out of the loop (its end, a ``break``, an exception).
Bars nest: a loop inside a loop with a bar (a sweep's formats, each over its batches) adds a line to the
bar already shown (rich allows one live display per console), and removes it when it ends.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

__all__ = ["track", "tracked", "steps", "Advance"]

T = TypeVar("T")
#: ``advance(n=1)``: n more steps are done
Advance = Callable[..., None]
_local = threading.local()  # .bar: the Progress shown by this thread's outermost open bar


def _off(n: int = 1) -> None:
    return None


@contextmanager
def steps(description: str, *, total: int | None = None, enabled: bool | None = None,
          console: Console | None = None) -> Iterator[Advance]:
    """``with steps("calibrating", total=8) as advance: ... advance()``: a bar that counts what you say is done.

    Args:
        description: the bar's label.
        total: how many steps there will be (``None``: the bar counts up).
        enabled: ``None`` (default) shows the bar when ``console`` is a terminal or a Jupyter notebook,
            ``True`` always (into a pipe or a file rich writes no bar, the bar being transient, only a line
            end), ``False`` never.
        console: where the bar is drawn (default: a new stderr console).
    """
    if enabled is False:
        yield _off
        return
    outer: Progress | None = getattr(_local, "bar", None)
    if outer is not None:  # inside another bar: one more line on it
        task = outer.add_task(description, total=total)
        try:
            yield lambda n=1: outer.advance(task, n)
        finally:
            outer.remove_task(task)
        return
    console = console if console is not None else Console(stderr=True)
    if enabled is None and not (console.is_terminal or console.is_jupyter):
        yield _off
        return
    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   console=console, transient=True)
    task = bar.add_task(description, total=total)
    _local.bar = bar
    try:
        with bar:
            yield lambda n=1: bar.advance(task, n)
    finally:
        _local.bar = None


@contextmanager
def track(items: Iterable[T], description: str, *, total: int | None = None, enabled: bool | None = None,
          console: Console | None = None) -> Iterator[Iterator[T]]:
    """``with track(batches, "calibrating") as it: for b in it: ...``: the items, with a bar while they run.

    Args:
        items: any iterable (a list, a DataLoader, a generator), iterated once, lazily.
        description: the bar's label.
        total: how many items there will be (default ``len(items)`` where it has one; without a total
            the bar counts up).
        enabled, console: as :func:`steps`.

    Yields:
        an iterator over ``items``; the bar advances as each item is finished (when the next one is asked for).
    """
    if enabled is False:
        yield iter(items)
        return
    if total is None:
        try:
            total = len(items)  # type: ignore[arg-type]
        except TypeError:
            total = None
    with steps(description, total=total, enabled=enabled, console=console) as advance:
        if advance is _off:
            yield iter(items)
            return

        def advancing() -> Iterator[T]:
            for item in items:
                yield item
                advance()

        yield advancing()


def tracked(items: Iterable[T], description: str, *, total: int | None = None, enabled: bool | None = None,
            console: Console | None = None) -> Iterator[T]:
    """``for x in tracked(items, "training"): ...``: :func:`track` as a plain iterator, for a loop that is
    already written (the bar goes when the loop ends or is left, as the generator closes)."""
    with track(items, description, total=total, enabled=enabled, console=console) as it:
        yield from it
