"""What the examples' mixed-precision searches share (``digits_cnn/search.py``, ``sentence_embeddings/search.py``):
the rows of one table (per budget: the searched configuration, then every uniform format within that
budget, each measured by a real run) and its rendering.

The check the main job makes, :func:`searched_is_best`: at every budget the searched configuration's
measured score is at least as good as every uniform format's that fits the budget. :func:`search_budgets`
runs the searches (the later budgets reusing the first's per-unit losses) and the per-layer view of the
worst configuration they ran into a :class:`SearchOutcome`.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import qsim_hooks as qh
from qsim_hooks import report
from qsim_hooks.report_propagation import render_propagation

__all__ = ["SearchOutcome", "search_budgets", "rows_for", "searched_is_best", "render_table", "worst_run",
           "render_worst", "verdict"]


@dataclass
class SearchOutcome:
    """What an example's searches give (each example's subclass adds what it measured besides)."""

    settings: Any = None
    rows: list[dict[str, Any]] = field(default_factory=list)
    searched_is_best: bool = False
    worst: str = ""  # the worst configuration the searches ran, and its per-layer propagated error
    per_layer: list[dict[str, Any]] = field(default_factory=list)
    per_layer_notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def search_budgets(out: SearchOutcome, model: Any, batches: list[Any], budgets: Sequence[float], *,
                   output: Any = None, **search: Any) -> SearchOutcome:
    """``qh.search`` at each budget (``search``: its other arguments), its rows, whether the searched
    configuration beat the uniform ones, and ``qh.compare(per_layer=True)`` of the worst one, into ``out``."""
    previous, results = None, []
    with warnings.catch_warnings():  # 4-bit formats flush many values on purpose; the table says what it costs
        warnings.filterwarnings("ignore", message=r"qsim_hooks: .* flushed .* to zero", category=RuntimeWarning)
        for budget in budgets:
            previous = qh.search(model, batches, budget=budget, output=output, reuse=previous, **search)
            results.append(previous)
            out.rows += rows_for(previous)
        out.worst, cfg = worst_run(results)
        per_layer = qh.compare(model, cfg, batches=batches, output=output, per_layer=True, stats=False,
                               progress=False).per_layer
    out.per_layer, out.per_layer_notes = per_layer.rows, list(per_layer.notes)
    out.searched_is_best = searched_is_best(out.rows)
    return out


def _choice(result: Any) -> str:
    return ", ".join(f"{u or '<model>'} {c}" for u, c in result.choice.items())


def rows_for(result: Any) -> list[dict[str, Any]]:
    """The searched row (its choice; which configuration won, when not the solver's) and the uniform rows."""
    b = result.best
    label = "searched" if b.source == "exact" else f"searched ({b.source})"
    rows = [{"budget": result.budget, "config": label, "choice": _choice(result), "cost": float(b.cost),
             "predicted": b.predicted, "score": b.score, "output_sqnr_db": b.output_sqnr_db, "metric": b.metric,
             "searched": True, "higher_is_better": result.higher_is_better}]
    for u in result.uniform:
        if u.config is not None:
            rows.append({"budget": result.budget, "config": u.source, "choice": "", "cost": float(u.cost),
                         "predicted": u.predicted, "score": u.score, "output_sqnr_db": u.output_sqnr_db,
                         "metric": u.metric, "searched": False, "higher_is_better": result.higher_is_better})
    return rows


def searched_is_best(rows: Sequence[dict[str, Any]]) -> bool:
    """At every budget: the searched row's score at least as good as every uniform row's."""
    for budget in {r["budget"] for r in rows}:
        at = [r for r in rows if r["budget"] == budget]
        s = next(r for r in at if r["searched"])
        sign = 1 if s["higher_is_better"] else -1
        if any(sign * (s["score"] - r["score"]) < 0 for r in at if not r["searched"]):
            return False
    return True


def render_table(rows: Sequence[dict[str, Any]], console: Any, *, title: str, score_label: str,
                 metric_label: str, metric_fmt: Any, caption: str) -> None:
    fmt = report.fmt_db if score_label == "SQNR dB" else report.fmt_number
    cols = (report.Column("budget", "budget\nbits/weight", report.fmt_number),
            report.Column("config", "configuration", justify="left", style="bold"),
            report.Column("choice", "per unit", justify="left"),
            report.Column("cost", "bits /\nweight", report.fmt_number),
            report.Column("predicted", f"predicted\n{score_label}", fmt),
            report.Column("score", f"measured\n{score_label}", fmt),
            report.Column("output_sqnr_db", "output\nSQNR dB", report.fmt_db),
            report.Column("metric", metric_label, metric_fmt))
    report.print_table(report.build_table(list(rows), cols, title=title, caption=caption), console)


def worst_run(results: Sequence[Any]) -> tuple[str, Any]:
    """The configuration with the worst measured score among everything the searches ran (the searched,
    greedy and uniform ones at every budget): its label and its ``QuantConfig``."""
    runs = [(f"{e.source} at budget {r.budget:g}", e, r.higher_is_better) for r in results for e in r.evaluated
            if e.config is not None and e.score is not None]
    label, e, _ = min(runs, key=lambda t: t[1].score if t[2] else -t[1].score)
    return label, e.config


def verdict(outcome: SearchOutcome) -> str:
    """The end of a search table's caption: whether the searched configuration won, and the time."""
    return (f"searched at least as good as every uniform format within its budget: "
            f"{'yes' if outcome.searched_is_best else 'NO'}; {outcome.seconds:.1f} s")


def render_worst(outcome: SearchOutcome, console: Any, *, what: str) -> None:
    """The propagated-error view (``qh.compare(..., per_layer=True)``) of the worst configuration, if measured."""
    if outcome.per_layer:
        render_propagation(list(outcome.per_layer), console, notes=list(outcome.per_layer_notes),
                           title=f"{what}: where the error of the worst configuration ({outcome.worst}) starts "
                                 "(qh.compare(per_layer=True))")
