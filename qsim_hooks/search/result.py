"""What :func:`qsim_hooks.search` returns: the chosen configuration, what it costs, predicted and measured.

Plain data with three views: ``str()`` (plain text, :mod:`qsim_hooks.text`), rich rendering (``__rich__``,
tables built by :mod:`qsim_hooks.report_search`) and :meth:`SearchResult.to_dict` / :meth:`to_json`.
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from ..config import QuantConfig
from ..report_layout import Column, FittedTable
from ..report_search import search_renderable

__all__ = ["Evaluated", "SearchResult"]


def _num(v: float | None) -> Any:
    """JSON-safe: non-finite floats as strings (strict JSON has no inf)."""
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v


def _db(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


@dataclass(frozen=True)
class Evaluated:
    """One configuration the search ran (or, for an over-budget uniform one, only priced).

    Attributes:
        source: ``"exact"`` (the solver's), ``"greedy"`` or ``"uniform <candidate>"``.
        choice: unit -> candidate name.
        config: the :class:`~qsim_hooks.QuantConfig` it is (``None``: not run, over the budget).
        cost: its exact cost (a fraction) in the cost model's unit.
        predicted_sqnr_db: from the per-unit sensitivities (summed noise).
        measured_sqnr_db, metric, top1_agreement: of a real run (``None``: not run).
    """

    source: str
    choice: dict[str, str]
    config: QuantConfig | None
    cost: Fraction
    predicted_sqnr_db: float
    measured_sqnr_db: float | None
    metric: float | None
    top1_agreement: float | None

    def row(self) -> dict[str, Any]:
        return {"source": self.source, "cost": float(self.cost), "cost_exact": str(self.cost),
                "predicted_sqnr_db": _num(self.predicted_sqnr_db), "measured_sqnr_db": _num(self.measured_sqnr_db),
                "metric": self.metric, "top1_agreement": self.top1_agreement}


@dataclass(frozen=True)
class SearchResult:
    """The outcome of a search.

    Attributes:
        best: the configuration chosen: the best *measured* of those run within the budget.
        budget: the budget asked; ``cost_name`` / ``cost_unit``: the cost model.
        candidates: the candidate names; ``units``: unit -> its modules.
        evaluated: every configuration run (exact, greedy, uniform within budget).
        uniform: each candidate on every unit, with its cost (run when within the budget).
        front: the predicted Pareto front (cost vs predicted SQNR) of all assignments, cheapest first.
        sensitivity: per unit, each candidate's SQNR alone and cost share.
        metric_full: the user's metric in full precision (``None`` without one).
    """

    best: Evaluated
    budget: float
    cost_name: str
    cost_unit: str
    candidates: list[str]
    units: dict[str, list[str]]
    evaluated: list[Evaluated]
    uniform: list[Evaluated]
    front: list[dict[str, Any]] = field(default_factory=list)
    sensitivity: list[dict[str, Any]] = field(default_factory=list)
    metric_full: float | None = None

    @property
    def config(self) -> QuantConfig:
        """The chosen configuration (``best.config``)."""
        assert self.best.config is not None
        return self.best.config

    @property
    def choice(self) -> dict[str, str]:
        """Unit -> the candidate it was given."""
        return dict(self.best.choice)

    @property
    def cost(self) -> float:
        return float(self.best.cost)

    @property
    def predicted_sqnr_db(self) -> float:
        return self.best.predicted_sqnr_db

    @property
    def measured_sqnr_db(self) -> float:
        assert self.best.measured_sqnr_db is not None
        return self.best.measured_sqnr_db

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-safe data (the config as its per-unit choice and rule patterns)."""
        return {
            "budget": self.budget, "cost": self.cost_name, "unit": self.cost_unit, "candidates": self.candidates,
            "chosen": {**self.best.row(), "choice": self.best.choice,
                       "rules": [{"match": r.match, "name": r.name} for r in self.config.rules]},
            "evaluated": [{**e.row(), "choice": e.choice} for e in self.evaluated],
            "uniform": [{**e.row(), "within_budget": e.config is not None} for e in self.uniform],
            "front": [{**p, "predicted_sqnr_db": _num(p["predicted_sqnr_db"])} for p in self.front],
            "sensitivity": [{"unit": r["unit"], "modules": r["modules"],
                             **{c: {"sqnr_db": _num(r[c]["sqnr_db"]), "cost": r[c]["cost"]} for c in self.candidates}}
                            for r in self.sensitivity],
            "units": self.units, "metric_full": self.metric_full,
        }

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def rows(self) -> list[dict[str, Any]]:
        """One row per unit: its modules, the candidate chosen, that candidate's SQNR alone and cost share."""
        by_unit = {r["unit"]: r for r in self.sensitivity}
        return [{"unit": u or "<model>", "modules": ",".join(self.units[u]), "format": c,
                 "sqnr_alone_db": by_unit[u][c]["sqnr_db"], "cost_share": by_unit[u][c]["cost"]}
                for u, c in self.best.choice.items()]

    def summary(self) -> str:
        b = self.best
        return (f"search ({self.cost_name}, budget {self.budget:g} {self.cost_unit}): {b.source}, cost "
                f"{float(b.cost):.4g}, predicted {_db(b.predicted_sqnr_db)} dB, measured {_db(b.measured_sqnr_db)} dB")

    def __str__(self) -> str:
        units = [{k: (f"{v:.2f}" if isinstance(v, float) else v) for k, v in r.items()} for r in self.rows()]
        ev = [{"config": e.source, "cost": f"{float(e.cost):.4g}", "predicted dB": _db(e.predicted_sqnr_db),
               "measured dB": _db(e.measured_sqnr_db)} for e in (*self.evaluated, *[
                   u for u in self.uniform if u.config is None])]
        return "\n\n".join([self.summary(), _plain(units, ["unit", "modules", "format", "sqnr_alone_db",
                                                            "cost_share"]),
                            _plain(ev, ["config", "cost", "predicted dB", "measured dB"])])

    def __rich__(self) -> Any:
        return search_renderable(self)


def _plain(rows: list[dict[str, Any]], keys: list[str]) -> str:
    """Plain columns of ``rows`` (text first, numbers right-aligned), laid out for the terminal's width."""
    width = shutil.get_terminal_size((160, 24)).columns
    cols = [Column(k, k, justify="left" if i == 0 or k in ("modules", "format") else "right")
            for i, k in enumerate(keys)]
    return FittedTable(rows, cols, header_rule=False).text(width).rstrip("\n")
