"""``sweep``: one comparison per format (and accumulator), the formats given to chosen roles, all against one
reference."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from torch import nn

from ..accumulate import Accumulator, as_accumulator
from ..batches import ForwardLoop
from ..config import ROLES, QuantConfig
from ..formats import Format
from ..progress import track
from .comparison import reference, simulate
from .feeding import Forward, Metric, OutputFn, check_model_cfg, make_feed
from .results import SweepResult

__all__ = ["sweep"]


def sweep(model: nn.Module, cfg: QuantConfig | None, formats: Sequence[Any], batch: Any = None, *,
          batches: Iterable[Any] | None = None, roles: Sequence[str] = ("input", "weight"),
          forward: Forward | None = None, forward_loop: ForwardLoop | None = None, output: OutputFn | None = None,
          metric: Metric | None = None, calibration: Any = None, top1: bool | None = None,
          progress: bool | None = None, accumulators: Sequence[Any] | None = None) -> SweepResult:
    """One comparison per format: ``cfg`` with ``roles`` set to that format, against one reference.

    ``accumulators`` adds an axis: each format runs once per accumulator (an
    :class:`~qsim_hooks.accumulate.Accumulator`, a name such as ``"fp16"`` or ``"hopper_fp8"``, or ``None``:
    exact sums), as ``QuantConfig(accumulator=...)``; the rows gain an ``accumulator`` key. ``formats`` may
    then be empty: the config's own formats, once per accumulator (``format`` reads ``"config"``).

    ``cfg`` (``None``: an empty config) supplies the other roles and the rules;
    rules that set a role's format still win over the swept one for the layers
    they match. ``calibration`` is a Calibration used by every run, or a
    function ``cfg -> Calibration`` called for each swept config (static scales
    depend on the format: ``lambda c: qh.calibrate(model, c, batches)``).
    ``progress``: a bar over the formats (stderr; ``None``: in a terminal).

    Returns:
        a :class:`~qsim_hooks.analysis.results.SweepResult`: a list with one row per format (per format and
        accumulator, formats outermost), keys ``format``, ``roles``, (``accumulator``), ``output_sqnr_db``,
        ``max_abs_error``, ``top1_agreement``, ``metric``, ``metric_full``; ``.render()``, ``.to_pandas()``.
        The other arguments as in :func:`~qsim_hooks.analysis.compare`.
    """
    cfg = QuantConfig() if cfg is None else cfg
    check_model_cfg(model, cfg)
    roles = tuple(roles)
    bad = [r for r in roles if r not in ROLES]
    if bad or not roles:
        raise ValueError(f"roles={list(roles)!r}: each must be one of {list(ROLES)} (at least one)")
    accs = _accumulators(accumulators)
    if not formats and accs is None:
        raise ValueError("formats is empty: give at least one format (or accumulators to sweep the config's own)")
    swept = [(f, dataclasses.replace(cfg, **{r: f for r in roles})) for f in formats] or [("config", cfg)]
    cfgs = [(f, c, None) for f, c in swept] if accs is None else \
        [(f, dataclasses.replace(c, accumulator=a), a) for f, c in swept for a in accs]  # bad names fail first
    ref = reference(model, make_feed(batch, batches, forward, forward_loop), output, metric, top1,
                    progress=progress)
    calibrate_for: Callable[[QuantConfig], Any] = calibration if callable(calibration) else lambda c: calibration
    rows = SweepResult()
    with track(cfgs, "sweep", enabled=progress) as each:
        for f, c, a in each:
            res = simulate(ref, c, calibration=calibrate_for(c), progress=progress)
            row = {"format": f.name if isinstance(f, Format) else str(f), "roles": ",".join(roles)}
            if accs is not None:
                row["accumulator"] = "exact" if a is None else a.name
            rows.append({**row, "output_sqnr_db": res.output_sqnr_db, "max_abs_error": res.max_abs_error,
                         "top1_agreement": res.top1_agreement, "metric": res.metric_sim,
                         "metric_full": res.metric_full})
    return rows


def _accumulators(accumulators: Sequence[Any] | None) -> list[Accumulator | None] | None:
    if accumulators is None:
        return None
    if isinstance(accumulators, (str, Accumulator)) or not accumulators:
        raise ValueError(f"accumulators={accumulators!r}: give a non-empty list (names such as 'fp16', "
                         "'hopper_fp8', Accumulator objects, or None for exact sums)")
    return [as_accumulator(a, f"sweep accumulators[{i}]") for i, a in enumerate(accumulators)]
