"""Field checks shared by every format value (FloatFormat, IntFormat, Scaling, GradSpec, BlockFormat, ...).

Each check raises ``TypeError`` for a value of the wrong type and
``ValueError`` for a value of the right type outside what is allowed, with a
message that names ``Owner.field``, the bad value and what is allowed. They
live below every format module so that all of them say it the same way.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

__all__ = ["check_bool", "check_int", "check_choice", "check_name", "check_float"]


def _type_name(v: Any) -> str:
    return type(v).__name__


def check_bool(owner: str, field: str, v: Any) -> bool:
    if not isinstance(v, bool):
        raise TypeError(f"{owner}.{field} must be a bool (True or False), got {v!r} ({_type_name(v)})")
    return v


def check_int(owner: str, field: str, v: Any, lo: int | None = None, hi: int | None = None) -> int:
    """An int (not a bool) in ``[lo, hi]`` (either bound may be open)."""
    if isinstance(v, bool) or not isinstance(v, int):
        raise TypeError(f"{owner}.{field} must be an int, got {v!r} ({_type_name(v)})")
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        allowed = f"{lo}..{hi}" if lo is not None and hi is not None else (
            f">= {lo}" if lo is not None else f"<= {hi}")
        raise ValueError(f"{owner}.{field}={v} is out of range; allowed {allowed}")
    return v


def check_float(owner: str, field: str, v: Any) -> float:
    """A real number (int or float, not a bool or a string); returned as a float."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise TypeError(f"{owner}.{field} must be a number, got {v!r} ({_type_name(v)})")
    return float(v)


def check_choice(owner: str, field: str, v: Any, choices: Collection[str]) -> str:
    allowed = ", ".join(repr(c) for c in choices)
    if not isinstance(v, str):
        raise TypeError(f"{owner}.{field} must be a str, one of {allowed}; got {v!r} ({_type_name(v)})")
    if v not in choices:
        raise ValueError(f"{owner}.{field}={v!r} is not allowed; use one of {allowed}")
    return v


def check_name(owner: str, v: Any) -> str:
    if not isinstance(v, str):
        raise TypeError(f"{owner}.name must be a str, got {v!r} ({_type_name(v)})")
    return v
