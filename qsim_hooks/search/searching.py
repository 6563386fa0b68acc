"""``search``: the format of each layer (or block) that loses least output SQNR within a cost budget.

Method, in four steps, each on the library's own machinery:

1. **Sensitivity** per unit and candidate: :func:`qsim_hooks.analysis.sensitivity` (``mode="one"``) run
   once per candidate; a unit's *loss* under a candidate is the relative output noise power it causes
   alone, ``10 ** (-SQNR / 10)``. The predicted noise of an assignment is the sum over units (errors of
   different layers taken as uncorrelated), so the predicted SQNR is ``-10 log10(sum)``.
2. **Costs** per unit and candidate, exact (:mod:`.costs`): MACs from one full-precision forward.
3. **Solve** the multiple-choice knapsack exactly (:func:`.solver.solve`, a dynamic program over
   non-dominated partial assignments; the greedy baseline alongside).
4. **Verify**: run the chosen configuration, the greedy one and every uniform candidate within the
   budget; report measured against predicted. The result is the best *measured* of them (so it is never
   worse than a uniform format that fits the budget), and says which it was.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Sequence
from fractions import Fraction
from typing import Any

from torch import nn

from ..analysis import sensitivity
from ..analysis.comparison import reference, simulate
from ..analysis.feeding import Forward, Metric, OutputFn, batch_list, check_model_cfg, eval_no_grad, make_feed
from ..analysis.ranking import _depth, _exact_rule
from ..batches import default_forward
from ..config import QuantConfig, Rule
from ..progress import track
from ..rows import group_name
from ..session import plan
from .candidates import Candidate, as_candidates
from .costs import CostModel, MacCounter, cost_model, layer_costs
from .result import Evaluated, SearchResult
from .solver import Option, Solution, cost_range, front, greedy, solve

__all__ = ["search", "config_for", "config_cost"]


def _loss(sqnr_db: float, who: str) -> float:
    if math.isnan(sqnr_db):
        raise ValueError(f"{who}: the output SQNR is NaN (no finite output element to compare?); the search "
                         "needs a number for every unit and candidate")
    return 0.0 if sqnr_db == math.inf else 10.0 ** (-sqnr_db / 10.0)


def _predicted_db(loss: float) -> float:
    return math.inf if loss <= 0 else -10.0 * math.log10(loss)


def _candidate_cfg(base: QuantConfig, c: Candidate) -> QuantConfig:
    return dataclasses.replace(base, input=c.input, weight=c.weight)


def config_for(base: QuantConfig, units: dict[str, list[str]], chosen: dict[str, Candidate]) -> QuantConfig:
    """``base`` plus one rule per unit giving its modules (by exact name) the unit's candidate formats."""
    rules = tuple(Rule(match=_exact_rule(units[u]), input=c.input, weight=c.weight, name=f"search: {u} {c.name}")
                  for u, c in chosen.items())
    return dataclasses.replace(base, rules=tuple(base.rules) + rules)


def config_cost(model: nn.Module, cfg: QuantConfig, cm: CostModel, counter: MacCounter) -> Fraction:
    """The exact cost of ``cfg`` counted from its own plan (independent of the solver's per-unit sums)."""
    return cm.total(layer_costs(model, plan(model, cfg), counter))


def _units(model: nn.Module, base: QuantConfig, depth: int | None) -> dict[str, list[str]]:
    units: dict[str, list[str]] = {}
    for e in plan(model, base):
        if e.point == "weight":
            units.setdefault(group_name(e.module, depth), [])
            if e.module not in units[group_name(e.module, depth)]:
                units[group_name(e.module, depth)].append(e.module)
    if not units:
        raise ValueError("the model has no registered layer with weights (Linear, Conv, ...): nothing to search")
    return units


def _count_macs(model: nn.Module, units: dict[str, list[str]], batches: list[Any], fwd: Forward) -> MacCounter:
    modules = [m for ms in units.values() for m in ms]
    counter = MacCounter.attach(model, modules)
    try:
        with eval_no_grad(model):
            for b in batches:
                fwd(model, b)
    finally:
        counter.remove()
    unseen = [m for m in modules if not counter.calls[m]]
    if unseen:
        raise ValueError(f"modules {unseen} did not run on the data, so their sensitivity cannot be measured; "
                         "give data that reaches them or switch them off with a Rule(enabled=False) in base=")
    return counter


def _unit_losses(model: nn.Module, base: QuantConfig, c: Candidate, units: dict[str, list[str]],
                 depth: int | None, kw: dict[str, Any]) -> dict[str, float]:
    if c.input is None and c.weight is None:
        return dict.fromkeys(units, 0.0)  # full precision: nothing to measure
    try:
        rows = sensitivity(model, _candidate_cfg(base, c), mode="one", granularity="layer" if depth is None
                           else depth, **kw)
    except ValueError as exc:
        if "quantizes nothing" not in str(exc):
            raise
        rows = []
    sqnr = {r["layer"]: r["output_sqnr_db"] for r in rows}
    return {u: _loss(sqnr.get(u, math.inf), f"unit {u!r} under candidate {c.name!r}") for u in units}


def search(model: nn.Module, batches: Iterable[Any], *, candidates: Sequence[Any], budget: float,
           cost: Any = "bits", base: QuantConfig | None = None, granularity: Any = "layer",
           forward: Forward | None = None, output: OutputFn | None = None, metric: Metric | None = None,
           calibration: Any = None, progress: bool | None = False) -> SearchResult:
    """Choose one candidate per layer (or block) so the cost is within ``budget`` and the output SQNR highest.

    Args:
        model: any ``nn.Module``; unchanged afterwards.
        batches: the data (a list of batches, fed by ``forward``).
        candidates: formats, ``(input, weight)`` pairs, ``"input/weight"`` strings or ``"none"``
            (:class:`~qsim_hooks.search.Candidate`).
        budget: the largest allowed cost, in the cost model's unit (``"bits"``: average bits per weight;
            ``"bitops"``: average weight bits x input bits per MAC; a function: the sum of its values).
        cost: ``"bits"``, ``"bitops"`` or ``cost(layer: LayerCost) -> float`` (:mod:`.costs`).
        base: the config the candidates go into (output formats, rules, layer specs); default empty.
        granularity: ``"layer"`` or an int: units are module-name prefixes of that many components.
        metric: ``metric(model, batches) -> float``, measured on the verified configurations (the search
            itself optimises output SQNR).
        progress: progress bars (see :func:`qsim_hooks.analysis.sensitivity`).
        The rest as in :func:`~qsim_hooks.analysis.compare`.

    Returns:
        a :class:`SearchResult`.

    Raises:
        ValueError: no candidates, an unknown format name, a budget outside the feasible range (the message
            gives it), layers the data does not reach, a NaN score.
    """
    base = QuantConfig() if base is None else base
    check_model_cfg(model, base)
    cands = as_candidates(candidates)
    cm = cost_model(cost)
    if isinstance(budget, bool) or not isinstance(budget, (int, float, Fraction)) or not math.isfinite(budget):
        raise ValueError(f"budget={budget!r} must be a finite number (in {cm.unit or 'the cost function units'})")
    depth = _depth(granularity)
    bl = batch_list(None, batches)
    fwd = forward or default_forward
    units = _units(model, base, depth)
    counter = _count_macs(model, units, bl, fwd)

    per_module = [layer_costs(model, plan(model, _candidate_cfg(base, c)), counter) for c in cands]
    scale = cm.scale(per_module[0].values())
    unit_cost = [{u: sum((cm.layer(lcs[m]) for m in ms), Fraction(0)) for u, ms in units.items()}
                 for lcs in per_module]
    kw = dict(batches=bl, forward=forward, output=output, calibration=calibration)
    with track(cands, "search: sensitivity per candidate", enabled=progress) as each:
        losses = [_unit_losses(model, base, c, units, depth, kw) for c in each]
    names = list(units)
    options = [[Option(unit_cost[k][u], losses[k][u]) for k in range(len(cands))] for u in names]

    lo, hi = cost_range(options)
    target = Fraction(budget) * scale
    if not lo <= target <= hi:
        raise ValueError(f"budget={budget} is outside the feasible range [{float(lo / scale):.6g}, "
                         f"{float(hi / scale):.6g}] {cm.unit} (cost={cm.name!r}, candidates "
                         f"{[c.name for c in cands]})")

    ref = reference(model, make_feed(None, bl, forward, None), output, metric, None)

    def evaluate(source: str, sol: Solution) -> Evaluated:
        chosen = {u: cands[j] for u, j in zip(names, sol.choice)}
        cfg = config_for(base, units, chosen)
        res = simulate(ref, cfg, calibration=calibration)
        return Evaluated(source, {u: c.name for u, c in chosen.items()}, cfg, Fraction(sol.cost) / scale,
                         _predicted_db(sol.loss), res.output_sqnr_db, res.metric_sim, res.top1_agreement)

    evaluated = [evaluate("exact", solve(options, target))]
    g = greedy(options, target)
    if g is not None:
        evaluated.append(evaluate("greedy", g))
    uniform = []
    for k, c in enumerate(cands):
        sol = Solution(tuple([k] * len(names)), sum(o[k].cost for o in options),
                       sum((o[k].loss for o in options), 0.0))
        if sol.cost <= target:
            e = evaluate(f"uniform {c.name}", sol)
            evaluated.append(e)
        else:
            e = Evaluated(f"uniform {c.name}", dict.fromkeys(names, c.name), None, Fraction(sol.cost) / scale,
                          _predicted_db(sol.loss), None, None, None)
        uniform.append(e)
    best = max((e for e in evaluated if e.measured_sqnr_db is not None),
               key=lambda e: (e.measured_sqnr_db, -e.cost))
    pareto = [{"cost": float(Fraction(s.cost) / scale), "predicted_sqnr_db": _predicted_db(s.loss),
               "choice": {u: cands[j].name for u, j in zip(names, s.choice)}} for s in front(options)]
    table = [{"unit": u, "modules": units[u],
              **{f"{c.name}": {"sqnr_db": _predicted_db(losses[k][u]), "cost": float(unit_cost[k][u] / scale)}
                 for k, c in enumerate(cands)}} for u in names]
    return SearchResult(best=best, budget=float(budget), cost_name=cm.name, cost_unit=cm.unit,
                        candidates=[c.name for c in cands], units=units, evaluated=evaluated, uniform=uniform,
                        front=pareto, sensitivity=table, metric_full=ref.metric_full)
