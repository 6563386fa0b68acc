"""``sweep``: one comparison per format, the formats given to chosen roles, all against one reference."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from typing import Any

from torch import nn

from ..config import ROLES, QuantConfig
from ..formats import Format
from .comparison import reference, simulate
from .feeding import Forward, Metric, OutputFn, batch_list, check_model_cfg

__all__ = ["sweep"]


def sweep(model: nn.Module, cfg: QuantConfig | None, formats: Sequence[Any], batch: Any = None, *,
          batches: Iterable[Any] | None = None, roles: Sequence[str] = ("input", "weight"),
          forward: Forward | None = None, output: OutputFn | None = None, metric: Metric | None = None,
          calibration: Any = None, top1: bool | None = None) -> list[dict[str, Any]]:
    """One comparison per format: ``cfg`` with ``roles`` set to that format, against one reference.

    ``cfg`` (``None``: an empty config) supplies the other roles and the rules;
    rules that set a role's format still win over the swept one for the layers
    they match. Returns one row per format with the keys ``format``, ``roles``,
    ``output_sqnr_db``, ``max_abs_error``, ``top1_agreement``, ``metric``,
    ``metric_full``. The other arguments as in :func:`~qsim_hooks.analysis.compare`.
    """
    cfg = QuantConfig() if cfg is None else cfg
    check_model_cfg(model, cfg)
    roles = tuple(roles)
    bad = [r for r in roles if r not in ROLES]
    if bad or not roles:
        raise ValueError(f"roles={list(roles)!r}: each must be one of {list(ROLES)} (at least one)")
    cfgs = [(f, dataclasses.replace(cfg, **{r: f for r in roles})) for f in formats]  # bad names fail first
    ref = reference(model, batch_list(batch, batches), forward, output, metric, top1)
    rows = []
    for f, c in cfgs:
        res = simulate(ref, c, calibration=calibration)
        rows.append({"format": f.name if isinstance(f, Format) else str(f), "roles": ",".join(roles),
                     "output_sqnr_db": res.output_sqnr_db, "max_abs_error": res.max_abs_error,
                     "top1_agreement": res.top1_agreement, "metric": res.metric_sim,
                     "metric_full": res.metric_full})
    return rows
