"""Field checks shared by every format value (FloatFormat, IntFormat, Scaling, GradSpec, BlockFormat, ...).

Each check raises ``TypeError`` for a value of the wrong type and
``ValueError`` for a value of the right type outside what is allowed, with a
message that names ``Owner.field``, the bad value and what is allowed. They
live below every format module so that all of them say it the same way.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Collection
from typing import Any

__all__ = ["check_bool", "check_int", "check_choice", "check_name", "check_float", "check_amax", "as_f32",
           "AMAX_RANGE", "F32_MAX", "F32_TINY"]


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


F32_MAX = 3.4028234663852886e38  #: the largest finite float32
F32_TINY = 2.0**-149  #: the smallest positive (subnormal) float32
#: What an amax may be, as text for messages: a finite float32 value > 0.
AMAX_RANGE = f"a finite float32 value > 0, i.e. in [{F32_TINY:.4g}, {F32_MAX:.8g}]"


def as_f32(v: float) -> float:
    """``v`` rounded to float32 (inf beyond float32's range)."""
    try:
        return float(struct.unpack("<f", struct.pack("<f", v))[0])
    except OverflowError:
        return math.copysign(math.inf, v)


def check_amax(owner: str, field: str, v: Any) -> float:
    """A number that is usable as an amax once rounded to float32 (finite, > 0); returned as given."""
    a = check_float(owner, field, v)
    a32 = as_f32(a)
    if not (math.isfinite(a32) and a32 > 0):
        raise ValueError(f"{owner}.{field}={v!r} is not a usable amax: it must be {AMAX_RANGE} "
                         f"(float32 makes it {a32!r})")
    return a
