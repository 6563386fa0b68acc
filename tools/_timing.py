"""Timing shared by the benchmark scripts: the best of several runs after a warm-up, and the targets' summary."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TextIO

#: ``--clock`` choices: elapsed time, or this thread's CPU time (all the work with one torch thread, and what a
#: machine shared with other jobs disturbs least)
CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.thread_time}


def best_time(fn: Callable[[], object], repeats: int, warmup: int = 1,
              clock: Callable[[], float] = time.perf_counter) -> float:
    """Seconds (by ``clock``) of the fastest of ``repeats`` calls of ``fn`` after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = clock()
        fn()
        best = min(best, clock() - t0)
    return best


# ---------------------------------------------------------------------------
# targets: each bench states its issue's targets the same way, and tools/bench_all.py collects them
# ---------------------------------------------------------------------------
TARGETS_FILE_ENV = "QSIM_BENCH_TARGETS"  #: set by bench_all.py: each summary also appends JSON lines there


@dataclass(frozen=True)
class Target:
    """One target: what was measured, its bound, and the range of the figure over the rounds (if any)."""

    target: str
    measured: float
    bound: float
    lo: float | None = None  # the smallest / largest per-round figure (None: measured once)
    hi: float | None = None
    unit: str = "x"

    @property
    def met(self) -> bool:
        return self.measured <= self.bound  # NaN (a failed run) is not met

    def line(self) -> str:
        rng = "" if self.lo is None else f" (rounds {self.lo:.2f}-{self.hi:.2f}{self.unit})"
        return (f"{self.target}: {self.measured:.2f}{self.unit}{rng}, target <= {self.bound:g}{self.unit}: "
                f"{'met' if self.met else 'not met'}")

    def as_dict(self) -> dict[str, object]:
        return {"target": self.target, "measured": self.measured, "bound": self.bound, "lo": self.lo,
                "hi": self.hi, "unit": self.unit, "met": self.met}


def span(values: Iterable[float]) -> tuple[float, float]:
    """(min, max) of per-round figures."""
    v = list(values)
    return min(v), max(v)


def summary(targets: Iterable[Target], title: str = "issue 19 targets", out: TextIO | None = None) -> None:
    """Print each target as ``met`` / ``not met`` with its figure and range; append them to
    ``$QSIM_BENCH_TARGETS`` (JSON lines) when set."""
    targets = list(targets)
    out = out or sys.stdout
    print(f"{title}:", file=out)
    for t in targets:
        print(f"  {t.line()}", file=out)
    out.flush()
    path = os.environ.get(TARGETS_FILE_ENV)
    if path:
        with open(path, "a", encoding="utf-8") as f:
            for t in targets:
                f.write(json.dumps({"script": os.path.basename(sys.argv[0]), **t.as_dict()}) + "\n")
