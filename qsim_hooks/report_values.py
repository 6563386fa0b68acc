"""How one value is written in a table, a line or a CSV cell: numbers, decibels, percentages, powers of two,
module names, static amax ranges.

Each writer takes a value (``None`` is ``-``) and returns text that a table never splits: a number is one
token (``3.4e+38``, ``2^-9``, ``inf``), so :mod:`qsim_hooks.report_layout` can keep it whole.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["fmt_text", "fmt_number", "fmt_pow2", "fmt_db", "fmt_percent", "fmt_module", "fmt_range", "nonfinite"]


def nonfinite(v: float) -> str:
    return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")


def fmt_text(v: Any) -> str:
    """``-`` for a missing value, ``str(v)`` otherwise."""
    return "-" if v is None else str(v)


def fmt_number(v: Any) -> str:
    """Integers in full up to 10^7 (448, 57344), otherwise 4 significant digits."""
    if v is None:
        return "-"
    v = float(v)
    if not math.isfinite(v):
        return nonfinite(v)
    if v == int(v) and abs(v) < 1e7:
        return str(int(v))
    return f"{v:.4g}"


def fmt_pow2(v: Any) -> str:
    """A power of two below 1 as ``2^k`` (``2^-9``), anything else as :func:`fmt_number`."""
    if v is None:
        return "-"
    v = float(v)
    if v > 0 and math.isfinite(v):
        mant, exp = math.frexp(v)
        if mant == 0.5 and exp - 1 < 0:
            return f"2^{exp - 1}"
    return fmt_number(v)


def fmt_db(v: Any) -> str:
    """Decibels with two decimals; ``inf`` for exact."""
    if v is None:
        return "-"
    v = float(v)
    return f"{v:.2f}" if math.isfinite(v) else nonfinite(v)


def fmt_percent(v: Any) -> str:
    """A fraction in [0, 1] as a percentage with two decimals."""
    if v is None:
        return "-"
    return f"{100.0 * float(v):.2f}"


def fmt_module(v: Any) -> str:
    """A module name; the model itself (``""``) as ``<model>``."""
    if v is None:
        return "-"
    return str(v) or "<model>"


def fmt_range(v: Any) -> str:
    """A static amax: one value, or ``min..max (n)`` for per-channel values; ``-`` for none (dynamic)."""
    if v is None:
        return "-"
    vals = [float(x) for x in v] if isinstance(v, (list, tuple)) else [float(v)]
    if not vals:
        return "-"
    if len(vals) == 1:
        return fmt_number(vals[0])
    return f"{fmt_number(min(vals))}..{fmt_number(max(vals))} ({len(vals)})"
