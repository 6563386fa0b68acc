"""``report --histogram MODULE[:POINT]``: capture what points see on the simulated model, one PNG each.

matplotlib is optional: :func:`check_matplotlib` says so as a bad invocation before anything runs.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ..analysis import capture
from ..modelsrc import ModelSource
from ..plots import histogram, require_matplotlib
from .base import UsageError

__all__ = ["check_matplotlib", "write_histograms"]


def check_matplotlib(option: str) -> None:
    """A :class:`UsageError` naming ``option`` when matplotlib is not installed."""
    try:
        require_matplotlib()
    except ImportError as exc:
        raise UsageError(f"{option}: {exc}") from None


def write_histograms(src: ModelSource, cfg: Any, cal: Any, points: list[str], folder: str) -> list[str]:
    """Capture ``points`` on the simulated model and write one PNG each into ``folder``; returns the paths."""
    cap = capture(src.model, cfg, batches=src.batches, points=points, forward=src.forward, calibration=cal)
    paths = []
    for c in cap.values():
        stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{c.module or 'model'}_{c.tensor}")
        paths.append(str(histogram(c, Path(folder) / f"{stem}.png")))
    return paths
