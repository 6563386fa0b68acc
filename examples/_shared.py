"""What the real-weight evaluations (``efficientnet_lite``, ``tiny_lm``) share: progress bars, a model check.

* :func:`steps`: a transient rich progress bar over an evaluation's long loop, shown only when stdout is a
  terminal (off a terminal, or with ``enabled=False``, a no-op), so ``run()`` stays plain data and tables.
* :func:`leftovers`: what a session left on a model (hooks, parametrizations): the evaluations check it
  after their last session, beside a bit-exact rerun of the full-precision output.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator

from torch import nn
from torch.nn.utils import parametrize

__all__ = ["steps", "leftovers"]


@contextlib.contextmanager
def steps(what: str, total: int, *, enabled: bool = True) -> Iterator[Callable[[str], None]]:
    """Yields ``step(label)``: the previous step is done, ``label`` runs now."""
    if not (enabled and sys.stdout.isatty()):
        yield lambda label: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  transient=True) as prog:
        task = prog.add_task(what, total=total)
        started = False

        def step(label: str) -> None:
            nonlocal started
            prog.update(task, advance=1 if started else 0, description=f"{what}: {label}")
            started = True

        yield step


def leftovers(model: nn.Module) -> list[str]:
    """``"name: what"`` for every module that still has forward (pre-)hooks or parametrizations."""
    found = []
    for name, m in model.named_modules():
        for what, present in (("forward hooks", m._forward_hooks), ("forward pre-hooks", m._forward_pre_hooks),
                              ("parametrizations", parametrize.is_parametrized(m))):
            if present:
                found.append(f"{name or '<model>'}: {what}")
    return found
