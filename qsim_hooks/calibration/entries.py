"""The entries of a calibration file, checked one by one before anything is built from them.

A calibration file is data a user may have edited or produced elsewhere, so
:func:`read_entries` accepts exactly what :meth:`Calibration.save` writes and
refuses anything else with a ``ValueError`` naming the file, the entry (its
index and its point) and what is allowed: an amax that is not a finite
float32 value > 0 (``1e39`` is finite in float64 and inf in float32, ``1e-46``
rounds to 0), a bool or a string where a number belongs, a point name that
no session has, a tensor name that does not go with its point, the same point
twice, unknown keys.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from ..config import ATTENTION_POINTS, ROLES
from ..formats._checks import AMAX_RANGE, as_f32

__all__ = ["read_entries", "check_entry", "check_amax_values", "POINT_NAMES"]

Key = tuple[str, str, str]
#: the point names a session has (a weight point's tensor is the weight's name; any other point's is its own)
POINT_NAMES = ROLES + ATTENTION_POINTS
_REQUIRED = ("module", "point", "tensor", "amax")
_OPTIONAL = ("format", "method", "granularity", "axis", "shape", "numel", "nonfinite")


def check_amax_values(values: tuple[float, ...]) -> str | None:
    """Why ``values`` are not usable amax values (``None`` when they are)."""
    if not values:
        return "amax is empty"
    for v in values:
        v32 = as_f32(v)
        if not (math.isfinite(v32) and v32 > 0):
            return f"amax {v!r} is not usable: it must be {AMAX_RANGE} (float32 makes it {v32!r})"
    return None


def _number(v: Any) -> bool:
    return not isinstance(v, bool) and isinstance(v, (int, float))


def _int(v: Any, lo: int) -> bool:
    return not isinstance(v, bool) and isinstance(v, int) and v >= lo


def check_entry(e: Any, where: str) -> dict[str, Any]:
    """One point's entry as PointCalibration fields; ``ValueError`` starting with ``where`` if it is not usable."""
    if not isinstance(e, Mapping):
        raise ValueError(f"{where} must be an object with {', '.join(_REQUIRED)}, got {type(e).__name__}")
    missing = [k for k in _REQUIRED if k not in e]
    unknown = sorted(set(e) - set(_REQUIRED) - set(_OPTIONAL))
    if missing or unknown:
        raise ValueError(f"{where}: " + "; ".join(
            ([f"missing {', '.join(missing)}"] if missing else []) +
            ([f"unknown keys {unknown} (allowed: {', '.join(_REQUIRED + _OPTIONAL)})"] if unknown else [])))
    for k in ("module", "point", "tensor", "format", "method"):
        if k in e and not isinstance(e[k], str):
            raise ValueError(f"{where}: {k} must be a string, got {e[k]!r}")
    module, point, tensor = e["module"], e["point"], e["tensor"]
    where = f"{where} ({module or '<model>'}, {point}, {tensor})"
    if point not in POINT_NAMES:
        raise ValueError(f"{where}: point {point!r} is not a point name; allowed: {', '.join(POINT_NAMES)}")
    if point != "weight" and tensor != point:
        raise ValueError(f"{where}: the tensor of a {point!r} point is {point!r}, got {tensor!r}")
    a = e["amax"]
    per_channel = isinstance(a, list)
    values = a if per_channel else [a]
    if not all(_number(v) for v in values):
        raise ValueError(f"{where}: amax must be a number or a list of numbers, got {a!r}")
    why = check_amax_values(tuple(float(v) for v in values))
    if why is not None:
        raise ValueError(f"{where}: {why}")
    gran = e.get("granularity", "channel" if per_channel else "tensor")
    if gran not in ("tensor", "channel") or (gran == "channel") != per_channel:
        raise ValueError(f"{where}: granularity {gran!r} does not fit amax {a!r}; a 'tensor' amax is one number, "
                         "a 'channel' amax a list")
    axis, shape = e.get("axis"), e.get("shape")
    if axis is not None and (isinstance(axis, bool) or not isinstance(axis, int)):
        raise ValueError(f"{where}: axis must be an int or null, got {axis!r}")
    if shape is not None:
        if not isinstance(shape, list) or not all(_int(s, 1) for s in shape) or \
                math.prod(shape) != len(values) or not per_channel:
            raise ValueError(f"{where}: shape must be null or a list of positive ints with one entry per amax "
                             f"(a per-channel amax only), got {shape!r} for {len(values)} values")
    for k in ("numel", "nonfinite"):
        if k in e and not _int(e[k], 0):
            raise ValueError(f"{where}: {k} must be an int >= 0, got {e[k]!r}")
    return {"module": module, "point": point, "tensor": tensor,
            "amax": tuple(float(v) for v in values) if per_channel else float(a),
            "format": e.get("format", "?"), "method": e.get("method", "?"), "granularity": gran, "axis": axis,
            "shape": None if shape is None else tuple(shape), "numel": e.get("numel", 0),
            "nonfinite": e.get("nonfinite", 0)}


def read_entries(d: Mapping[str, Any], source: str) -> tuple[list[dict[str, Any]], dict[Key, str]]:
    """The checked ``points`` of a calibration file (as PointCalibration fields) and its ``skipped`` map."""
    points, skipped = d.get("points", []), d.get("skipped", [])
    for name, v in (("points", points), ("skipped", skipped)):
        if not isinstance(v, list):
            raise ValueError(f"{source}: {name} must be a list, got {type(v).__name__}")
    out: list[dict[str, Any]] = []
    seen: dict[Key, int] = {}
    for i, e in enumerate(points):
        fields = check_entry(e, f"{source}: points[{i}]")
        key = (fields["module"], fields["point"], fields["tensor"])
        if key in seen:
            raise ValueError(f"{source}: points[{i}] {key!r} repeats points[{seen[key]}]; a point has one amax")
        seen[key] = i
        out.append(fields)
    skip: dict[Key, str] = {}
    for i, s in enumerate(skipped):
        if not isinstance(s, Mapping) or not all(isinstance(s.get(k), str) for k in ("module", "point", "tensor")) \
                or s["point"] not in POINT_NAMES:
            raise ValueError(f"{source}: skipped[{i}] must be an object with module, point (one of "
                             f"{', '.join(POINT_NAMES)}), tensor and a reason, got {s!r}")
        skip[(s["module"], s["point"], s["tensor"])] = str(s.get("reason", ""))
    return out, skip
