"""Block formats (OCP MX, NVFP4, BFP, ABFP): filled in by the block-formats work."""

from __future__ import annotations

from typing import Any, Callable

from .base import Format

__all__ = ["NAMED", "from_qtorch_bfp"]

NAMED: dict[str, Callable[[], Format]] = {}


def from_qtorch_bfp(obj: Any) -> Format:
    raise NotImplementedError("qtorch BlockFloatingPoint support is not built yet")
