"""What the real-weight evaluations (``efficientnet_lite``, ``tiny_lm``) share.

* :class:`Outcome`: the fields every result carries besides its own figures (the worst configuration and its
  per-point report, notes, whether the model was restored, timings) and ``as_dict()`` for JSON.
* :func:`steps`: the library's progress bar (:mod:`qsim_hooks.progress`) over an evaluation's labelled steps,
  shown only when stderr is a terminal (off a terminal, or with ``enabled=False``, nothing), so ``run()`` stays
  plain data and tables.
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

from qsim_hooks import progress

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
    """Yields ``step(label)``: the previous step is done, ``label`` runs now.

    The library's bar (:func:`qsim_hooks.progress.steps`: on stderr, transient, only when stderr is a terminal)
    counts the steps; the step running now is a second line under it, with its own elapsed time.
    """
    with progress.steps(what, total=total, enabled=None if enabled else False) as advance, \
            contextlib.ExitStack() as current:
        started = False

        def step(label: str) -> None:
            nonlocal started
            current.close()  # the previous step's line goes
            if started:
                advance()
            started = True
            current.enter_context(progress.steps(label, enabled=None if enabled else False))

        yield step
        current.close()
        if started:  # the last step is done too
            advance()


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
