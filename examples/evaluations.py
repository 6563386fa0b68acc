"""What the real-weight evaluations (``digits_cnn``, ``sentence_embeddings``) share.

Each evaluation is a module with ``run(...) -> result`` (plain data, no output) and
``render(result, console)``; ``examples/demo.py`` (the main job) runs them one after the other. Their
runs are pinned (:func:`pinned`: the kernel backend and torch's CPU threads, put back afterwards) so the
figures do not depend on the machine's core count, and their renderings end alike
(:func:`render_report_and_time`: the per-point report of one configuration, then the run time).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch

from qsim_hooks import report
from qsim_hooks.formats import get_backend, set_backend

__all__ = ["pinned", "render_report_and_time"]


@contextmanager
def pinned(backend: str, threads: int | None) -> Iterator[None]:
    """Run the block with this kernel backend and ``threads`` CPU threads (``None``: torch's setting)."""
    previous, previous_threads = get_backend(), torch.get_num_threads()
    set_backend(backend)
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        set_backend(previous)
        torch.set_num_threads(previous_threads)


def render_report_and_time(rows: Sequence[Mapping[str, Any]], console: Any, *, top: int, what: str,
                           seconds: float) -> None:
    """The ``top`` points with the worst SQNR of one run (``qs.report``), then how long the evaluation took."""
    if rows:
        report.render_stats(rows, console, sort="sqnr", top=top,
                            title=f"{what}: the {top} points with the worst SQNR (qs.report)")
    if console is not None:
        console.print(f"({seconds:.1f} s)", markup=False, highlight=False)
        console.print()
