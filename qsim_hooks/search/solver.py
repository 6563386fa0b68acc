"""The budgeted assignment: one option per unit, total cost within a budget, least total loss.

A multiple-choice knapsack. :func:`solve` is exact: a dynamic program over the units whose state is the
set of non-dominated partial assignments (no other partial assignment of the same units is as cheap and
has less loss), so it needs no discretised budget and compares costs exactly (ints or fractions; the
budget too). :func:`brute_force` enumerates every assignment (the tests' reference) and :func:`greedy`
is the usual baseline (start from the cheapest option everywhere, take the upgrade with the best loss
saved per cost added until none fits). :func:`front` is the cost/loss Pareto front of all assignments.

Losses are summed in unit order in all three, so equal assignments give bit-identical totals.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

__all__ = ["Option", "Solution", "solve", "brute_force", "greedy", "front", "cost_range"]

Cost = int | Fraction


@dataclass(frozen=True)
class Option:
    """One choice for one unit: its exact cost and its (additive) loss."""

    cost: Cost
    loss: float


@dataclass(frozen=True)
class Solution:
    """An assignment: ``choice[u]`` is the index of the option unit ``u`` takes; its total cost and loss."""

    choice: tuple[int, ...]
    cost: Cost
    loss: float


def _check(options: Sequence[Sequence[Option]]) -> None:
    if not options:
        raise ValueError("no units to assign: the problem is empty")
    for u, opts in enumerate(options):
        if not opts:
            raise ValueError(f"unit {u} has no option")
        for o in opts:
            if math.isnan(o.loss):
                raise ValueError(f"unit {u}: an option has a NaN loss; the score must be a number")


def cost_range(options: Sequence[Sequence[Option]]) -> tuple[Cost, Cost]:
    """The cheapest and the dearest total cost any assignment has."""
    _check(options)
    return (sum(min(o.cost for o in opts) for opts in options),
            sum(max(o.cost for o in opts) for opts in options))


def _pareto(states: list[Solution]) -> list[Solution]:
    """The non-dominated states, by cost ascending (for a cost tie, the least loss; then the first)."""
    states.sort(key=lambda s: (s.cost, s.loss))
    out: list[Solution] = []
    for s in states:
        if not out or s.loss < out[-1].loss:
            out.append(s)
    return out


def _fronts(options: Sequence[Sequence[Option]], budget: Cost | None) -> list[Solution]:
    _check(options)
    # the cheapest cost of the units still to come: a partial assignment that cannot fit is dropped early
    rest = [0] * (len(options) + 1)
    for u in range(len(options) - 1, -1, -1):
        rest[u] = rest[u + 1] + min(o.cost for o in options[u])
    states = [Solution((), 0, 0.0)]
    for u, opts in enumerate(options):
        nxt = [Solution((*s.choice, j), s.cost + o.cost, s.loss + o.loss)
               for s in states for j, o in enumerate(opts)
               if budget is None or s.cost + o.cost + rest[u + 1] <= budget]
        states = _pareto(nxt)
    return states


def solve(options: Sequence[Sequence[Option]], budget: Cost) -> Solution:
    """The assignment of least total loss whose total cost is ``<= budget`` (exact).

    Raises:
        ValueError: no assignment fits (the message gives the feasible range).
    """
    states = _fronts(options, budget)
    if not states:
        lo, hi = cost_range(options)
        raise ValueError(f"budget {budget} is below the cheapest assignment; the feasible range is "
                         f"[{float(lo):g}, {float(hi):g}]")
    return min(states, key=lambda s: s.loss)  # first minimum: the cheapest of equal losses


def front(options: Sequence[Sequence[Option]]) -> list[Solution]:
    """Every Pareto-optimal assignment (no other is as cheap with less loss), cheapest first."""
    return _fronts(options, None)


def brute_force(options: Sequence[Sequence[Option]], budget: Cost) -> Solution | None:
    """Every assignment tried (``prod(len(opts))`` of them): the least loss within budget, or ``None``."""
    _check(options)
    best: Solution | None = None
    for choice in itertools.product(*(range(len(o)) for o in options)):
        cost: Cost = 0
        loss = 0.0
        for u, j in enumerate(choice):
            cost += options[u][j].cost
            loss += options[u][j].loss
        if cost <= budget and (best is None or loss < best.loss):
            best = Solution(tuple(choice), cost, loss)
    return best


def greedy(options: Sequence[Sequence[Option]], budget: Cost) -> Solution | None:
    """The greedy baseline: the cheapest option per unit, then the best loss-saved-per-cost upgrade that
    fits, repeatedly (``None``: even the cheapest does not fit). Not optimal in general."""
    _check(options)
    choice = [min(range(len(o)), key=lambda j, o=o: (o[j].cost, o[j].loss)) for o in options]
    cost = sum(options[u][j].cost for u, j in enumerate(choice))
    if cost > budget:
        return None
    while True:
        best: tuple[float, int, int] | None = None
        for u, opts in enumerate(options):
            cur = opts[choice[u]]
            for j, o in enumerate(opts):
                saved, added = cur.loss - o.loss, o.cost - cur.cost
                if saved <= 0 or cost + added > budget:
                    continue
                ratio = math.inf if added <= 0 else saved / float(added)
                if best is None or ratio > best[0]:
                    best = (ratio, u, j)
        if best is None:
            break
        _, u, j = best
        cost += options[u][j].cost - options[u][choice[u]].cost
        choice[u] = j
    loss = 0.0
    for u, j in enumerate(choice):
        loss += options[u][j].loss
    return Solution(tuple(choice), cost, loss)
