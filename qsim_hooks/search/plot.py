"""A search's front as a PNG: cost on x, the predicted (and measured) score on y.

What is drawn is :func:`front_data`, plain data that needs no matplotlib: the predicted Pareto front
(a step line), every configuration that was run at its *measured* value (the solver's and the greedy
one as circles, each uniform candidate within the budget as a square), the uniform candidates over the
budget at their predicted value (hollow squares), the chosen one highlighted (a star) and the budget
(a dashed line). A lower-is-better quantity (a KL, a loss increase) is drawn on a log axis when all its
values are positive.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..plots import _axes, _save

__all__ = ["FrontData", "front_data", "front_plot"]


@dataclass(frozen=True)
class FrontData:
    """Everything :func:`front_plot` draws: ``(cost, value, label)`` points per kind."""

    front: tuple[tuple[float, float], ...]
    searched: tuple[tuple[float, float, str], ...]
    uniform: tuple[tuple[float, float, str], ...]
    over_budget: tuple[tuple[float, float, str], ...]
    chosen: tuple[float, float, str]
    budget: float
    xlabel: str
    ylabel: str
    log_y: bool
    title: str


def _finite(points: list[tuple[Any, ...]]) -> tuple[tuple[Any, ...], ...]:
    return tuple(p for p in points if p[1] is not None and math.isfinite(p[1]))


def front_data(result: Any) -> FrontData:
    """What :func:`front_plot` draws for a :class:`~qsim_hooks.search.SearchResult`."""
    label = result.predicted_label
    front = _finite([(p["cost"], p["predicted"]) for p in result.front])
    searched = _finite([(float(e.cost), e.measured, e.source) for e in result.evaluated
                        if not e.source.startswith("uniform")])
    uniform = _finite([(float(e.cost), e.measured, e.source.split(" ", 1)[1]) for e in result.uniform
                       if e.config is not None])
    over = _finite([(float(e.cost), e.predicted, e.source.split(" ", 1)[1]) for e in result.uniform
                    if e.config is None])
    b = result.best
    values = [p[1] for p in (*front, *searched, *uniform, *over)]
    lower_better = result.estimate == "fisher" or not result.higher_is_better
    log_y = lower_better and bool(values) and all(v > 0 for v in values)
    direction = "lower is better" if lower_better else "higher is better"
    return FrontData(front, searched, uniform, over, (float(b.cost), b.measured, b.source), result.budget,
                     f"cost ({result.cost_unit or result.cost_name})", f"{label} ({direction})", log_y,
                     f"Mixed-precision search: budget {result.budget:g}, chosen {b.source}")


def _figure(d: FrontData) -> Any:
    fig, ax = _axes((7.5, 4.8))
    if d.front:
        xs, ys = zip(*sorted(d.front))
        ax.step(xs, ys, where="post", color="0.55", lw=1, label="predicted Pareto front")
        ax.plot(xs, ys, ".", color="0.55", markersize=4)
    if d.searched:
        ax.plot([p[0] for p in d.searched], [p[1] for p in d.searched], "o", color="tab:blue", markersize=8,
                label="searched (measured)")
    if d.uniform:
        ax.plot([p[0] for p in d.uniform], [p[1] for p in d.uniform], "s", color="tab:orange", markersize=8,
                label="uniform within budget (measured)")
    if d.over_budget:
        ax.plot([p[0] for p in d.over_budget], [p[1] for p in d.over_budget], "s", mfc="none", mec="tab:orange",
                markersize=8, label="uniform over budget (predicted)")
    for x, y, name in (*d.uniform, *d.over_budget):  # over each square, clear of the star beside it
        ax.annotate(name, (x, y), textcoords="offset points", xytext=(-8, 7),
                    fontsize=8, color="tab:orange", zorder=6,
                    bbox={"boxstyle": "round,pad=0.1", "fc": "white", "ec": "none", "alpha": 0.8})
    x, y, src = d.chosen
    if y is not None and math.isfinite(y):
        ax.plot([x], [y], "*", color="tab:red", markersize=18, mec="black", mew=0.6, zorder=5,
                label=f"chosen: {src}")
    ax.axvline(d.budget, color="tab:red", ls="--", lw=1, label=f"budget {d.budget:g}")
    if d.log_y:
        ax.set_yscale("log")
    ax.set_xlabel(d.xlabel)
    ax.set_ylabel(d.ylabel)
    ax.set_title(d.title, fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return fig


def front_plot(result: Any, path: str | os.PathLike[str]) -> Path:
    """Draw the search's front (see the module doc) to a PNG at ``path``.

    Raises:
        ImportError: matplotlib is not installed (the message says how to install it).
    """
    return _save(_figure(front_data(result)), path)
