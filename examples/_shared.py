"""What the real-weight evaluations (``efficientnet_lite``, ``tiny_lm``) share.

* :class:`Outcome`: the fields every result carries besides its own figures (the worst configuration and its
  per-point report, notes, whether the model was restored, timings) and ``as_dict()`` for JSON.
* :func:`steps`: a transient rich progress bar over an evaluation's long loop, shown only when stdout is a
  terminal (off a terminal, or with ``enabled=False``, a no-op), so ``run()`` stays plain data and tables.
* :func:`leftovers`: what a session left on a model (hooks, parametrizations): the evaluations check it
  after their last session, beside a bit-exact rerun of the full-precision output.
* :func:`cli`: the tail of each ``run.py``: settings, run, render, ``--json``; a missing package is one line.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from torch import nn
from torch.nn.utils import parametrize

__all__ = ["Outcome", "steps", "leftovers", "cli"]


@dataclass(kw_only=True)
class Outcome:
    """What every evaluation's result carries besides its own figures."""

    worst: str | None = None  # the configuration whose per-point report is shown
    report_rows: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what was skipped or not cached, and why
    restored: bool | None = None  # after the last session: no instrumentation left, full precision bit-identical
    seconds: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


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


def cli(parser: argparse.ArgumentParser, evaluation: ModuleType, settings: Callable[[argparse.Namespace], Any],
        argv: list[str] | None = None) -> dict[str, Any] | None:
    """Parse, build the Settings, run, render; ``--json FILE`` writes the figures. None when it was skipped."""
    from qsim_hooks import report

    from . import common

    args = parser.parse_args(argv)
    try:
        result = evaluation.run(settings(args))
    except evaluation.Unavailable as exc:
        print(f"skipped: {exc}", file=sys.stderr)
        return None
    except ValueError as exc:
        parser.error(str(exc))
    evaluation.render(result, common.console(), top=args.top)
    out = result.as_dict()
    if args.json:
        Path(args.json).write_text(report.to_json(out))
    return out
