"""``sensitivity``: which layers must stay in higher precision, each layer (or block) quantized alone or
everything quantized but it, ranked by output SQNR.

Each variant is the user's config plus rules (``Rule(match="*", enabled=False)`` then the unit's exact
module names switched on, or only those switched off), so each run is an ordinary session and a module
the user's rules switch off stays off.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Iterable, Sequence
from typing import Any, Literal

from torch import nn

from ..batches import ForwardLoop
from ..config import QuantConfig, Rule
from ..progress import track
from ..rows import group_name
from ..session import plan
from .comparison import reference, simulate
from .feeding import Forward, Metric, OutputFn, check_model_cfg, make_feed
from .results import SensitivityResult

__all__ = ["sensitivity", "SENSITIVITY_MODES"]

SENSITIVITY_MODES = ("one", "all-but-one")


def _exact_rule(modules: Sequence[str]) -> str:
    """A ``re:`` pattern matching exactly these module names (and nothing under or beside them)."""
    return "re:(?:" + "|".join(re.escape(m) for m in modules) + ")"


def _depth(granularity: Any) -> int | None:
    if granularity == "layer":
        return None
    if isinstance(granularity, int) and not isinstance(granularity, bool) and granularity >= 1:
        return granularity
    raise ValueError(f"granularity={granularity!r} is not allowed; use 'layer' or a positive int "
                     "(group modules by that many leading name components)")


def sensitivity(model: nn.Module, cfg: QuantConfig, batch: Any = None, *, batches: Iterable[Any] | None = None,
                mode: Literal["one", "all-but-one"] = "one", granularity: Literal["layer"] | int = "layer",
                forward: Forward | None = None, forward_loop: ForwardLoop | None = None,
                output: OutputFn | None = None, metric: Metric | None = None, calibration: Any = None,
                top1: bool | None = None, progress: bool | None = None) -> SensitivityResult:
    """Rank layers by the output SQNR their quantization costs.

    ``mode="one"``: each layer quantized as ``cfg`` says, every other layer in
    full precision; the layer with the lowest output SQNR ranks first (the
    layers that must stay in higher precision). ``mode="all-but-one"``:
    everything quantized except that layer; the layer whose exemption recovers
    the most (highest output SQNR) ranks first, and ``gain_db`` says by how
    much over everything quantized.

    Args:
        granularity: ``"layer"`` (each instrumented module) or an int depth:
            modules grouped by the first ``depth`` components of their names
            (``2``: ``layer1.0.conv1`` and ``layer1.0.conv2`` form ``layer1.0``).
        metric: ``metric(model, batches) -> float`` measured for every unit too (``metric``, beside
            ``metric_full``); the ranking stays by output SQNR (a metric may be better high or low).
        progress: a progress bar over the units (``rich.progress`` on stderr, transient): ``None``
            (default) when stderr is a terminal, ``True`` always, ``False`` never.
        The rest as in :func:`~qsim_hooks.analysis.compare`.

    Returns:
        a :class:`~qsim_hooks.analysis.results.SensitivityResult`: a list of rows, best ranked first,
        with the keys ``rank``, ``layer``, ``points`` (quantization points in the unit), ``formats``,
        ``output_sqnr_db``, ``max_abs_error``, ``top1_agreement``, ``mode``, ``metric`` and
        ``metric_full`` (``None`` without a metric) and, for ``"all-but-one"``,
        ``all_quantized_sqnr_db`` and ``gain_db``; ``.render()``, ``.to_pandas()``.
    """
    check_model_cfg(model, cfg)
    if mode not in SENSITIVITY_MODES:
        raise ValueError(f"mode={mode!r} is not allowed; use one of {list(SENSITIVITY_MODES)}")
    depth = _depth(granularity)
    units: dict[str, list[str]] = {}  # unit -> formats of its active points
    modules: dict[str, dict[str, None]] = {}  # unit -> its modules with an active point (ordered)
    for e in plan(model, cfg).active():
        unit = group_name(e.module, depth)
        units.setdefault(unit, []).append(e.format_name)
        modules.setdefault(unit, {})[e.module] = None
    if not units:
        raise ValueError("cfg quantizes nothing in this model: there is no layer to rank")
    ref = reference(model, make_feed(batch, batches, forward, forward_loop), output, metric, top1,
                    progress=progress)
    base = simulate(ref, cfg, calibration=calibration, progress=progress) if mode == "all-but-one" else None
    rows = []
    with track(list(units), f"sensitivity ({mode})", enabled=progress) as each:
        for unit in each:
            # exact names, not a prefix pattern: a module the user's rules switched off stays off
            pattern = _exact_rule(list(modules[unit]))
            if mode == "one":
                extra = (Rule(match="*", enabled=False, name="sensitivity: all off"),
                         Rule(match=pattern, enabled=True, name=f"sensitivity: {unit or '<model>'} on"))
            else:
                extra = (Rule(match=pattern, enabled=False, name=f"sensitivity: {unit or '<model>'} off"),)
            res = simulate(ref, dataclasses.replace(cfg, rules=tuple(cfg.rules) + extra), calibration=calibration,
                           progress=progress)
            fmts = units[unit]
            row: dict[str, Any] = {"layer": unit, "points": len(fmts), "formats": ",".join(dict.fromkeys(fmts)),
                                   "output_sqnr_db": res.output_sqnr_db, "max_abs_error": res.max_abs_error,
                                   "top1_agreement": res.top1_agreement, "mode": mode, "metric": res.metric_sim,
                                   "metric_full": res.metric_full}
            if base is not None:
                row["all_quantized_sqnr_db"] = base.output_sqnr_db
                row["gain_db"] = res.output_sqnr_db - base.output_sqnr_db
            rows.append(row)

    def key(r: dict[str, Any]) -> float:
        v = r["output_sqnr_db"]
        if math.isnan(v):
            return math.inf  # no data: last
        return v if mode == "one" else -v

    rows.sort(key=key)  # stable: ties keep model order
    return SensitivityResult({"rank": i + 1, **r} for i, r in enumerate(rows))
