"""What :func:`qsim_hooks.search` returns: the chosen configuration, what it costs, predicted and measured.

Plain data with three views: ``str()`` (plain text, :mod:`qsim_hooks.text`), rich rendering (``__rich__``,
tables built by :mod:`qsim_hooks.report_search`) and :meth:`SearchResult.to_dict` / :meth:`to_json`.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
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


def _v(v: float | None) -> str:
    """A value in a few significant digits (a KL is small, an SQNR is tens of dB)."""
    if v is None:
        return "-"
    if not math.isfinite(v) or v == 0:
        return str(v)
    return f"{v:.2f}" if abs(v) >= 1 else f"{v:.4g}"


@dataclass(frozen=True)
class Evaluated:
    """One configuration the search ran (or, for an over-budget uniform one, only priced).

    Attributes:
        source: ``"exact"`` (the solver's), ``"greedy"`` or ``"uniform <candidate>"``.
        choice: unit -> candidate name.
        config: the :class:`~qsim_hooks.QuantConfig` it is (``None``: not run, over the budget).
        cost: its exact cost (a fraction) in the cost model's unit.
        predicted: from the per-unit losses: the score (``estimate="pass"``) or the increase of the loss
            (``estimate="fisher"``).
        measured: the same quantity from a real run (``None``: not run).
        score: the score of the real run (equal to ``measured`` with ``estimate="pass"``).
        output_sqnr_db, metric, top1_agreement: of the real run (``None``: not run, or no metric).
    """

    source: str
    choice: dict[str, str]
    config: QuantConfig | None
    cost: Fraction
    predicted: float
    measured: float | None
    score: float | None
    output_sqnr_db: float | None
    metric: float | None
    top1_agreement: float | None

    @property
    def measured_sqnr_db(self) -> float | None:
        return self.output_sqnr_db

    def row(self) -> dict[str, Any]:
        return {"source": self.source, "cost": float(self.cost), "cost_exact": str(self.cost),
                "predicted": _num(self.predicted), "measured": _num(self.measured), "score": _num(self.score),
                "output_sqnr_db": _num(self.output_sqnr_db), "metric": self.metric,
                "top1_agreement": self.top1_agreement}


@dataclass(frozen=True)
class SearchResult:
    """The outcome of a search.

    Attributes:
        best: the configuration chosen: the best *measured score* of those run within the budget.
        budget: the budget asked; ``cost_name`` / ``cost_unit``: the cost model.
        candidates: the candidate names; ``units``: unit -> its modules.
        evaluated: every configuration run (exact, greedy, uniform within budget).
        uniform: each candidate on every unit, with its cost (run when within the budget).
        front: the predicted Pareto front (cost vs predicted) of all assignments, cheapest first.
        sensitivity: per unit, each candidate's additive loss, its prediction alone and its cost share.
        metric_full: the ``metric=`` in full precision (``None`` without one).
        score, score_label, higher_is_better: the score (``"output_sqnr"``, ``"kl"``, a metric's name).
        estimate: ``"pass"`` or ``"fisher"``; ``score_full``: a metric score in full precision;
        ``loss_full``: the mean ``loss`` in full precision (``"fisher"``).
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
    score: str = "output_sqnr"
    score_label: str = "SQNR dB"
    higher_is_better: bool = True
    estimate: str = "pass"
    score_full: float | None = None
    loss_full: float | None = None

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
    def predicted_label(self) -> str:
        """What ``predicted`` and ``measured`` are: the score's label, or the loss increase (``"fisher"``)."""
        return "loss increase" if self.estimate == "fisher" else self.score_label

    @property
    def predicted_sqnr_db(self) -> float | None:
        """The predicted output SQNR (``score="output_sqnr"`` with ``estimate="pass"``; else ``None``)."""
        return self.best.predicted if self.score == "output_sqnr" and self.estimate == "pass" else None

    @property
    def measured_sqnr_db(self) -> float:
        assert self.best.output_sqnr_db is not None
        return self.best.output_sqnr_db

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-safe data (the config as its per-unit choice and rule patterns)."""
        return {
            "budget": self.budget, "cost": self.cost_name, "unit": self.cost_unit, "candidates": self.candidates,
            "score": self.score, "score_label": self.score_label, "higher_is_better": self.higher_is_better,
            "estimate": self.estimate, "predicted_label": self.predicted_label,
            "chosen": {**self.best.row(), "choice": self.best.choice,
                       "rules": [{"match": r.match, "name": r.name} for r in self.config.rules]},
            "evaluated": [{**e.row(), "choice": e.choice} for e in self.evaluated],
            "uniform": [{**e.row(), "within_budget": e.config is not None} for e in self.uniform],
            "front": [{**p, "predicted": _num(p["predicted"])} for p in self.front],
            "sensitivity": [{"unit": r["unit"], "modules": r["modules"],
                             **{c: {k: _num(v) for k, v in r[c].items()} for c in self.candidates}}
                            for r in self.sensitivity],
            "units": self.units, "metric_full": self.metric_full, "score_full": self.score_full,
            "loss_full": self.loss_full,
        }

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def save(self, path: str | os.PathLike[str]) -> tuple[Path, Path]:
        """Write the chosen config to ``path`` (``.toml`` or ``.json``, :meth:`QuantConfig.save`: what
        ``QuantConfig.load`` and ``--config`` read) and the whole result (the front, every configuration
        run, the sensitivities: :meth:`to_dict`) beside it as ``<stem>.front.json``.

        Returns:
            the two paths written.
        """
        cfg_path = self.config.save(path)
        front_path = cfg_path.with_name(cfg_path.stem + ".front.json")
        front_path.write_text(self.to_json() + "\n", encoding="utf-8")
        return cfg_path, front_path

    def rows(self) -> list[dict[str, Any]]:
        """One row per unit: its modules, the candidate chosen, its loss and prediction alone, its cost share."""
        by_unit = {r["unit"]: r for r in self.sensitivity}
        return [{"unit": u or "<model>", "modules": ",".join(self.units[u]), "format": c,
                 "loss": by_unit[u][c]["loss"], "alone": by_unit[u][c]["alone"],
                 "cost_share": by_unit[u][c]["cost"]}
                for u, c in self.best.choice.items()]

    def summary(self) -> str:
        b = self.best
        return (f"search ({self.cost_name}, budget {self.budget:g} {self.cost_unit}; score {self.score}, estimate "
                f"{self.estimate}): {b.source}, cost {float(b.cost):.4g}, predicted {_v(b.predicted)} "
                f"{self.predicted_label}, measured {_v(b.measured)}; score {_v(b.score)} {self.score_label}")

    def __str__(self) -> str:
        units = [{k: (_v(v) if isinstance(v, float) else v) for k, v in r.items()} for r in self.rows()]
        ev = [{"config": e.source, "cost": f"{float(e.cost):.4g}", "predicted": _v(e.predicted),
               "measured": _v(e.measured), "score": _v(e.score)}
              for e in (*self.evaluated, *[u for u in self.uniform if u.config is None])]
        return "\n\n".join([self.summary(), _plain(units, ["unit", "modules", "format", "loss", "alone",
                                                            "cost_share"]),
                            _plain(ev, ["config", "cost", "predicted", "measured", "score"])])

    def __rich__(self) -> Any:
        return search_renderable(self)


def _plain(rows: list[dict[str, Any]], keys: list[str]) -> str:
    """Plain columns of ``rows`` (text first, numbers right-aligned), laid out for the terminal's width."""
    width = shutil.get_terminal_size((160, 24)).columns
    cols = [Column(k, k, justify="left" if i == 0 or k in ("modules", "format") else "right")
            for i, k in enumerate(keys)]
    return FittedTable(rows, cols, header_rule=False).text(width).rstrip("\n")
