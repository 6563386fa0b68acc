"""Per-point statistics rows as data: ordering, filtering, grouping by module prefix, and point names.

``Session.stats()`` gives one plain dict per quantization point; what a reader asks of those rows (worst
SQNR first, only the weights, one row per block) is arithmetic on dicts, not rendering, so it lives here,
below both :mod:`qsim_hooks.report` (which renders the result) and :mod:`qsim_hooks.analysis` (which
produces the rows). Merges are exact: a group's SQNR comes from summed signal and noise powers, never
from an average of decibels.

:func:`select_points` turns the names a user writes (``"layer1.0.conv1:input"``, ``"fc"``,
``("fc", "weight")``) into point keys ``(module, point, tensor)``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

from .stats import sqnr_db_from_sums

__all__ = ["Key", "Rows", "group_name", "group_stats", "select_stats", "select_points"]

#: a quantization point: (module name, point kind, tensor name)
Key = tuple[str, str, str]
Rows = Sequence[Mapping[str, Any]]


def group_name(module: str, depth: int | None) -> str:
    """The first ``depth`` dot-separated components of a module name (all of it for ``None``)."""
    if depth is None:
        return module
    return ".".join(module.split(".")[:depth])


def _joined(values: Iterable[Any]) -> str:
    return ",".join(dict.fromkeys(str(v) for v in values if v is not None))


def _weighted(members: Sequence[Mapping[str, Any]], key: str, numel: int) -> float:
    """The element-weighted mean of a fraction (saturated, flushed) over the members."""
    if not numel:
        return 0.0
    return sum(float(m.get(key) or 0.0) * int(m.get("numel") or 0) for m in members) / numel


def group_stats(rows: Rows, depth: int) -> list[dict[str, Any]]:
    """Collapse ``Session.stats()`` rows by module-name prefix (``depth`` components) and point.

    One row per (prefix, point), in order of first appearance. Exact merges:
    SQNR from the summed signal and noise powers (not an average of decibels),
    saturated and flushed fractions weighted by element counts, the largest
    amax, summed calls and elements; ``points`` counts the merged rows, and
    ``format`` / ``granularity`` / ``tensor`` list the distinct values.
    Rows without statistics (``stats=False``) give ``None`` figures.
    """
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
        raise ValueError(f"group={depth!r} must be a positive int (module-name components to keep)")
    groups: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for r in rows:
        groups.setdefault((group_name(str(r.get("module", "")), depth), str(r.get("point"))), []).append(r)
    out = []
    for (prefix, point), members in groups.items():
        g: dict[str, Any] = {"module": prefix, "point": point, "points": len(members),
                             "tensor": _joined(m.get("tensor") for m in members),
                             "format": _joined(m.get("format") for m in members),
                             "granularity": _joined(m.get("granularity") for m in members)}
        have = [m for m in members if m.get("calls") is not None]
        if not have:
            g.update({"calls": None, "numel": None, "sqnr_db": None, "saturated": None, "flushed": None,
                      "amax": None})
        else:
            numel = sum(int(m.get("numel") or 0) for m in have)
            sx = sum(float(m.get("signal_power") or 0.0) for m in have)
            se = sum(float(m.get("noise_power") or 0.0) for m in have)
            amaxes = [float(m["amax"]) for m in have if m.get("amax") is not None]
            g.update({"calls": sum(int(m["calls"]) for m in have), "numel": numel,
                      "sqnr_db": sqnr_db_from_sums(sx, se, numel) if numel else None,
                      "saturated": _weighted(have, "saturated", numel), "flushed": _weighted(have, "flushed", numel),
                      "amax": max(amaxes) if amaxes else None, "signal_power": sx, "noise_power": se})
        out.append(g)
    return out


def _sqnr_key(row: Mapping[str, Any]) -> float:
    v = row.get("sqnr_db")
    return math.inf if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def select_stats(rows: Rows, *, sort: Literal["model", "sqnr"] = "model", top: int | None = None,
                 point: str | Sequence[str] | None = None, group: int | None = None,
                 sqnr_below: float | None = None) -> list[Mapping[str, Any]]:
    """Order and filter statistics rows: model order or worst SQNR first, ``top`` rows, some points.

    ``group=N`` first collapses the rows by the first N components of the module
    name (and point), with exact merged figures (:func:`group_stats`);
    ``sqnr_below=x`` keeps the rows whose SQNR is below ``x`` dB.
    """
    if sort not in ("model", "sqnr"):
        raise ValueError(f"sort={sort!r} is not allowed; use 'model' or 'sqnr'")
    if top is not None and (not isinstance(top, int) or top < 1):
        raise ValueError(f"top={top!r} must be a positive int or None")
    out: list[Mapping[str, Any]] = list(rows)
    if point is not None:
        wanted = {point} if isinstance(point, str) else set(point)
        out = [r for r in out if r.get("point") in wanted]
    if group is not None:
        out = list(group_stats(out, group))
    if sqnr_below is not None:
        out = [r for r in out if _sqnr_key(r) < float(sqnr_below)]
    if sort == "sqnr":
        out.sort(key=_sqnr_key)
    return out[:top] if top is not None else out


def select_points(keys: Sequence[Key], points: Any) -> list[Key]:
    """The ``(module, point, tensor)`` keys that ``points`` names, in ``keys`` order per name.

    ``points``: ``None`` (every key) or some of ``"module"`` (all its points), ``"module:input"``,
    ``"module:output"``, ``"module:weight"`` (or the weight tensor's name), ``(module, point[, tensor])``.

    Raises:
        ValueError: a name that matches no key (the message lists some that exist).
    """
    if points is None:
        return list(keys)
    wanted = [points] if isinstance(points, (str, tuple)) else list(points)
    chosen: list[Key] = []
    for w in wanted:
        if isinstance(w, tuple):
            parts = tuple(str(p) for p in w)
        elif isinstance(w, str):
            module, sep, pt = w.rpartition(":")
            parts = (module, pt) if sep else (w,)
        else:
            raise TypeError(f"points: expected 'module', 'module:point' or a (module, point) tuple, got {w!r}")
        hits = [k for k in keys if k[0] == parts[0]
                and (len(parts) < 2 or parts[1] in (k[1], k[2])) and (len(parts) < 3 or parts[2] == k[2])]
        if not hits:
            known = ", ".join(f"{k[0] or '<model>'}:{k[2] if k[1] == 'weight' else k[1]}" for k in keys[:8])
            raise ValueError(f"points: {w!r} is not a quantization point under this config; "
                             f"some that are: {known}{' ...' if len(keys) > 8 else ''}")
        chosen.extend(h for h in hits if h not in chosen)
    return chosen
