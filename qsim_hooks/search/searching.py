"""``search``: the format of each layer (or block) that scores best within a cost budget, verified by real runs.

Method, in four steps, each on the library's own machinery:

1. **Sensitivity** per unit and candidate, as an additive loss (:mod:`.scores` says what adds for each
   score): ``estimate="pass"`` runs the model once per unit and candidate with only that unit quantized
   (``qh.sensitivity``'s one-at-a-time runs, against one shared full-precision reference, the part of the
   model before the unit replayed from it: :mod:`.runs`); ``estimate="fisher"`` estimates every unit's
   loss increase from one backward pass per batch and one forward per candidate (:mod:`.fisher`).
2. **Costs** per unit and candidate, exact (:mod:`.costs`): MACs from the reference forward.
3. **Solve** the multiple-choice knapsack exactly (:func:`.solver.solve`, a dynamic program over
   non-dominated partial assignments; the greedy baseline alongside).
4. **Verify**: run the chosen configuration, the greedy one and every uniform candidate within the
   budget (each distinct assignment once); report measured against predicted. The result is the best
   *measured* score of them (so it is never worse than a uniform format that fits the budget), and says
   which it was.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Sequence
from fractions import Fraction
from typing import Any

from torch import nn

from ..analysis.feeding import Forward, Metric, OutputFn, batch_list, check_model_cfg, first_tensor
from ..analysis.ranking import _depth, _exact_rule
from ..config import QuantConfig, Rule
from ..progress import steps
from ..rows import group_name
from ..session import plan
from .candidates import Candidate, as_candidates
from .costs import CostModel, MacCounter, cost_model, layer_costs
from .fisher import fisher_losses
from .result import Evaluated, SearchResult
from .runs import Runner
from .scores import Score, as_score
from .solver import Option, Solution, cost_range, front, greedy, solve

__all__ = ["search", "config_for", "config_cost", "ESTIMATES"]

ESTIMATES = ("pass", "fisher")


def _candidate_cfg(base: QuantConfig, c: Candidate) -> QuantConfig:
    return dataclasses.replace(base, input=c.input, weight=c.weight)


def _alone_cfg(base: QuantConfig, c: Candidate, unit: str, modules: list[str]) -> QuantConfig:
    """Only ``modules`` quantized (as ``qh.sensitivity``'s one-at-a-time runs): every other point off."""
    extra = (Rule(match="*", enabled=False, name="search: all off"),
             Rule(match=_exact_rule(modules), enabled=True, name=f"search: {unit or '<model>'} on"))
    return dataclasses.replace(_candidate_cfg(base, c), rules=tuple(base.rules) + extra)


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


def _check_args(score: Any, estimate: Any, loss: Any, budget: Any, cm: CostModel) -> Score:
    sc = as_score(score)
    if estimate not in ESTIMATES:
        raise ValueError(f"estimate={estimate!r} is not allowed; use one of {list(ESTIMATES)}")
    if estimate == "fisher" and not callable(loss):
        raise ValueError("estimate='fisher' needs loss=fn, a function loss(model, batch) -> scalar tensor (the "
                         "task loss, with autograd; e.g. lambda m, b: F.cross_entropy(m(b[0]), b[1])), got "
                         f"loss={loss!r}; or use estimate='pass'")
    if loss is not None and not callable(loss):
        raise TypeError(f"loss must be a function loss(model, batch) -> scalar tensor, got {type(loss).__name__}")
    if isinstance(budget, bool) or not isinstance(budget, (int, float, Fraction)) or not math.isfinite(budget):
        raise ValueError(f"budget={budget!r} must be a finite number (in {cm.unit or 'the cost function units'})")
    return sc


def _pass_losses(runner: Runner, base: QuantConfig, cands: list[Candidate], units: dict[str, list[str]],
                 progress: bool | None) -> list[dict[str, float]]:
    sc = runner.score
    todo = [(c, u) for c in cands if not (c.input is None and c.weight is None) for u in units]
    out: list[dict[str, float]] = [dict.fromkeys(units, 0.0) for _ in cands]  # full precision: nothing lost
    with steps("search: sensitivity (one unit at a time)", total=len(todo), enabled=progress) as advance:
        for k, c in enumerate(cands):
            if c.input is None and c.weight is None:
                continue
            for u, ms in units.items():
                m = runner.measure(_alone_cfg(base, c, u, ms), unit=u)
                value = sc.check(m.score, f"unit {u or '<model>'!r} under candidate {c.name!r}")
                out[k][u] = sc.loss(value, runner.score_full)
                advance()
    return out


def _reused(prev: SearchResult, cands: list[Candidate], units: dict[str, list[str]], sc: Score,
            estimate: str) -> list[dict[str, float]]:
    if not isinstance(prev, SearchResult):
        raise TypeError(f"reuse must be a SearchResult (of an earlier search), got {type(prev).__name__}")
    mine = {"candidates": [c.name for c in cands], "units": units, "score": sc.name, "estimate": estimate}
    theirs = {"candidates": prev.candidates, "units": prev.units, "score": prev.score, "estimate": prev.estimate}
    differ = [k for k in mine if mine[k] != theirs[k]]
    if differ:
        there = ", ".join(f"{k}={theirs[k]!r}" for k in differ)
        here = ", ".join(f"{k}={mine[k]!r}" for k in differ)
        raise ValueError(f"reuse: the earlier search differs in {differ} ({there} there, {here} here); its losses "
                         "do not apply")
    by_unit = {r["unit"]: r for r in prev.sensitivity}
    return [{u: by_unit[u][c.name]["loss"] for u in units} for c in cands]


def search(model: nn.Module, batches: Iterable[Any], *, candidates: Sequence[Any], budget: float,
           cost: Any = "bits", score: str | Callable[..., float] = "output_sqnr", estimate: str = "pass",
           loss: Callable[[nn.Module, Any], Any] | None = None, base: QuantConfig | None = None,
           granularity: Any = "layer", forward: Forward | None = None, output: OutputFn | None = None,
           metric: Metric | None = None, calibration: Any = None, progress: bool | None = None,
           replay: bool = True, reuse: SearchResult | None = None) -> SearchResult:
    """Choose one candidate per layer (or block) so the cost is within ``budget`` and the score best.

    Args:
        model: any ``nn.Module``; unchanged afterwards.
        batches: the data (a list of batches, fed by ``forward``).
        candidates: formats, ``(input, weight)`` pairs, ``"input/weight"`` strings or ``"none"``
            (:class:`~qsim_hooks.search.Candidate`).
        budget: the largest allowed cost, in the cost model's unit (``"bits"``: average bits per weight;
            ``"bitops"``: average weight bits x input bits per MAC; a function: the sum of its values).
        cost: ``"bits"``, ``"bitops"`` or ``cost(layer: LayerCost) -> float`` (:mod:`.costs`).
        score: what is optimised and verified: ``"output_sqnr"`` (dB, higher is better), ``"kl"`` (mean KL
            divergence of the softmax of the outputs against full precision, for classifiers and LMs; lower
            is better) or ``metric_fn(model, batches) -> float``, **higher is better** (negate a loss or a
            perplexity). The solver adds per-unit losses: relative noise powers, KLs, or drops of the metric
            from full precision (:mod:`.scores`).
        estimate: the per-unit losses: ``"pass"`` (a real run per unit and candidate, the score's own loss)
            or ``"fisher"`` (the loss increase of ``loss`` estimated from one backward pass per batch:
            :mod:`.fisher`, ModelOpt ``auto_quantize``'s gradient score); with ``"fisher"`` the predicted
            and measured columns are the increase of ``loss``, and the configurations are still ranked by
            ``score``.
        loss: ``loss(model, batch) -> scalar tensor`` (with autograd); needed by ``estimate="fisher"``.
        base: the config the candidates go into (output formats, rules, layer specs); default empty.
        granularity: ``"layer"`` or an int: units are module-name prefixes of that many components.
        metric: ``metric(model, batches) -> float``, reported for the verified configurations.
        progress: progress bars (``None``: when stderr is a terminal).
        replay: replay the unchanged part of the model before a unit from the reference run in the
            one-at-a-time runs (bit-identical, faster; :mod:`.runs`); ``False`` runs everything.
        reuse: an earlier result on the same model, data, candidates, granularity, score and estimate: its
            per-unit losses are taken instead of measured again (another budget, or another cost model, costs
            only the verification runs).
        The rest as in :func:`~qsim_hooks.analysis.compare`.

    Returns:
        a :class:`SearchResult`.

    Raises:
        ValueError: no candidates, an unknown format name, a score or estimate not allowed, ``"fisher"``
            without ``loss``, a budget outside the feasible range (the message gives it), layers the data
            does not reach, a NaN score.
    """
    base = QuantConfig() if base is None else base
    check_model_cfg(model, base)
    cands = as_candidates(candidates)
    cm = cost_model(cost)
    sc = _check_args(score, estimate, loss, budget, cm)
    depth = _depth(granularity)
    bl = batch_list(None, batches)
    units = _units(model, base, depth)
    runner = Runner(model, bl, forward, output or first_tensor, sc, metric, calibration, units,
                    loss=loss if estimate == "fisher" else None, replay=replay)

    per_module = [layer_costs(model, plan(model, _candidate_cfg(base, c)), runner.counter) for c in cands]
    scale = cm.scale(per_module[0].values())
    unit_cost = [{u: sum((cm.layer(lcs[m]) for m in ms), Fraction(0)) for u, ms in units.items()}
                 for lcs in per_module]
    names = list(units)
    zero = [[Option(unit_cost[k][u], 0.0) for k in range(len(cands))] for u in names]
    lo, hi = cost_range(zero)
    target = Fraction(budget) * scale
    if not lo <= target <= hi:
        raise ValueError(f"budget={budget} is outside the feasible range [{float(lo / scale):.6g}, "
                         f"{float(hi / scale):.6g}] {cm.unit} (cost={cm.name!r}, candidates "
                         f"{[c.name for c in cands]})")

    if reuse is not None:
        losses = _reused(reuse, cands, units, sc, estimate)
    elif estimate == "pass":
        losses = _pass_losses(runner, base, cands, units, progress)
    else:
        assert loss is not None
        losses = fisher_losses(model, bl, loss, units, [_candidate_cfg(base, c) for c in cands], calibration,
                               progress)
    options = [[Option(unit_cost[k][u], losses[k][u]) for k in range(len(cands))] for u in names]

    def predicted(total: float) -> float:
        return total if estimate == "fisher" else sc.predicted(total, runner.score_full)

    runs: dict[tuple[int, ...], Any] = {}

    def evaluate(source: str, sol: Solution) -> Evaluated:
        chosen = {u: cands[j] for u, j in zip(names, sol.choice)}
        cfg = config_for(base, units, chosen)
        if sol.choice not in runs:
            runs[sol.choice] = runner.measure(cfg, full=True)
        m = runs[sol.choice]
        value = sc.check(m.score, f"the {source} configuration")
        if estimate == "fisher":
            measured = None if m.loss is None or runner.loss_full is None else m.loss - runner.loss_full
        else:
            measured = value
        return Evaluated(source, {u: c.name for u, c in chosen.items()}, cfg, Fraction(sol.cost) / scale,
                         predicted(sol.loss), measured, value, m.output_sqnr_db, m.metric, m.top1_agreement)

    todo: list[tuple[str, Solution]] = [("exact", solve(options, target))]
    g = greedy(options, target)
    if g is not None:
        todo.append(("greedy", g))
    uniform_sols = [(f"uniform {c.name}", Solution(tuple([k] * len(names)), sum(o[k].cost for o in options),
                                                   sum((o[k].loss for o in options), 0.0)))
                    for k, c in enumerate(cands)]
    todo += [(s, sol) for s, sol in uniform_sols if sol.cost <= target]
    evaluated = []
    with steps("search: verification", total=len({sol.choice for _, sol in todo}), enabled=progress) as advance:
        for source, sol in todo:
            fresh = sol.choice not in runs
            evaluated.append(evaluate(source, sol))
            if fresh:
                advance()
    by_source = {e.source: e for e in evaluated}
    uniform = [by_source.get(s) or Evaluated(s, dict.fromkeys(names, s.split(" ", 1)[1]), None,
                                             Fraction(sol.cost) / scale, predicted(sol.loss), None, None, None,
                                             None, None)
               for s, sol in uniform_sols]
    best = max(evaluated, key=lambda e: (sc.better(e.score), -e.cost))
    pareto = [{"cost": float(Fraction(s.cost) / scale), "predicted": predicted(s.loss),
               "choice": {u: cands[j].name for u, j in zip(names, s.choice)}} for s in front(options)]
    table = [{"unit": u, "modules": units[u],
              **{c.name: {"loss": losses[k][u], "alone": predicted(losses[k][u]),
                          "cost": float(unit_cost[k][u] / scale)} for k, c in enumerate(cands)}} for u in names]
    return SearchResult(best=best, budget=float(budget), cost_name=cm.name, cost_unit=cm.unit,
                        candidates=[c.name for c in cands], units=units, evaluated=evaluated, uniform=uniform,
                        front=pareto, sensitivity=table, metric_full=runner.metric_full, score=sc.name,
                        score_label=sc.label, higher_is_better=sc.higher_is_better, estimate=estimate,
                        score_full=runner.score_full, loss_full=runner.loss_full)
