"""Mixed-precision search: the solver against brute force, costs against hand counts, the result's config
against an independent run and cost count, and the errors of bad input."""

from __future__ import annotations

import json
import random
from fractions import Fraction

import pytest
import torch
from torch import nn

import qsim_hooks as qh
from qsim_hooks.search import Option, brute_force, config_cost, cost_model, front, greedy, solve
from qsim_hooks.search.costs import MacCounter, layer_costs


# ---------------------------------------------------------------------------
# solver
# ---------------------------------------------------------------------------
def _instance(rng: random.Random, units: int, k: int, frac: bool) -> list[list[Option]]:
    def cost() -> int | Fraction:
        return Fraction(rng.randint(1, 40), rng.randint(1, 4)) if frac else rng.randint(0, 20)
    return [[Option(cost(), rng.random() * 10 ** rng.uniform(-3, 1)) for _ in range(k)] for _ in range(units)]


@pytest.mark.parametrize("seed", range(40))
def test_solver_equals_brute_force(seed):
    rng = random.Random(seed)
    opts = _instance(rng, rng.randint(1, 6), rng.randint(1, 4), frac=seed % 2 == 1)
    lo = sum(min(o.cost for o in u) for u in opts)
    hi = sum(max(o.cost for o in u) for u in opts)
    for budget in {lo, hi, lo + (hi - lo) / 3, lo + (hi - lo) / 2, (lo + hi) * Fraction(2, 3)}:
        if budget < lo:
            continue
        bf = brute_force(opts, budget)
        ex = solve(opts, budget)
        assert ex.loss == bf.loss  # exact optimum, bit for bit (same summation order)
        assert ex.cost <= budget
        assert ex.cost == sum(opts[u][j].cost for u, j in enumerate(ex.choice))
        g = greedy(opts, budget)
        assert g is not None and g.cost <= budget and g.loss >= ex.loss


def test_greedy_is_not_optimal_on_a_known_instance():
    # greedy takes the best-ratio upgrade (unit 0) and then cannot afford unit 1's big saving
    opts = [[Option(0, 1.0), Option(1, 0.0)], [Option(0, 1.5), Option(2, 0.0)]]
    assert greedy(opts, 2).loss == 1.5
    assert solve(opts, 2).loss == 1.0 == brute_force(opts, 2).loss


def test_front_dominates_every_assignment():
    rng = random.Random(7)
    opts = _instance(rng, 4, 3, frac=False)
    pts = front(opts)
    assert [p.cost for p in pts] == sorted(p.cost for p in pts)
    assert all(a.loss > b.loss for a, b in zip(pts, pts[1:]))
    lo = sum(min(o.cost for o in u) for u in opts)
    hi = sum(max(o.cost for o in u) for u in opts)
    for b in range(lo, hi + 1):
        best = brute_force(opts, b)
        assert min(p.loss for p in pts if p.cost <= b) == best.loss


def test_solver_budget_below_cheapest_names_the_range():
    with pytest.raises(ValueError, match=r"feasible range is \[3, 7\]"):
        solve([[Option(1, 1.0), Option(3, 0.0)], [Option(2, 1.0), Option(4, 0.0)]], 2)
    with pytest.raises(ValueError, match="NaN"):
        solve([[Option(1, float("nan"))]], 2)


# ---------------------------------------------------------------------------
# costs on a two-layer model, counted by hand
# ---------------------------------------------------------------------------
def _two_layer() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))


def _costs(model, cfg, x):
    counter = MacCounter.attach(model, ["0", "2"])
    try:
        with torch.no_grad():
            model(x)
    finally:
        counter.remove()
    return layer_costs(model, qh.plan(model, cfg), counter), counter


def test_bits_by_hand():
    m, x = _two_layer(), torch.randn(3, 8)
    bits = cost_model("bits")
    int8 = _costs(m, qh.QuantConfig(weight="int8"), x)[0]
    assert bits.total(int8) == Fraction(128 * 8 + 32 + 64 * 8 + 32, 192)  # an fp32 scale per tensor
    mx = _costs(m, qh.QuantConfig(weight="mxfp4"), x)[0]
    # blocks of 32 along in_features: 16 rows of 8 (one ragged block each), 4 rows of 16
    assert bits.total(mx) == Fraction(128 * 4 + 16 * 8 + 64 * 4 + 4 * 8, 192)
    none = _costs(m, qh.QuantConfig(), x)[0]
    assert bits.total(none) == 32


def test_bitops_by_hand():
    m, x = _two_layer(), torch.randn(3, 8)
    macs0, macs1 = 3 * 16 * 8, 3 * 4 * 16
    cfg = qh.QuantConfig(rules=(qh.Rule(match="0", input="e4m3", weight="e4m3"),
                                qh.Rule(match="2", input="fp16", weight="int8")))
    lcs, counter = _costs(m, cfg, x)
    assert counter.macs == {"0": macs0, "2": macs1}
    assert cost_model("bitops").total(lcs) == Fraction(macs0 * 8 * 8 + macs1 * 8 * 16, macs0 + macs1)
    assert cost_model("bitops").total(_costs(m, qh.QuantConfig(), x)[0]) == 32 * 32


# ---------------------------------------------------------------------------
# search end to end
# ---------------------------------------------------------------------------
def _cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 36, 32), nn.ReLU(),
                         nn.Linear(32, 10))


CANDS = ["fp16", "e4m3", "int8", "mxfp4"]


@pytest.fixture(scope="module")
def searched():
    m = _cnn()
    x = [torch.randn(8, 1, 6, 6), torch.randn(8, 1, 6, 6)]
    before = {k: v.clone() for k, v in m.state_dict().items()}
    r = qh.search(m, x, candidates=CANDS, budget=6)
    return m, x, r, before


def test_search_config_really_costs_what_it_reports(searched):
    m, x, r, before = searched
    assert r.cost <= 6
    counter = MacCounter.attach(m, ["0", "3", "5"])
    with torch.no_grad():
        m(x[0])
    counter.remove()
    assert config_cost(m, r.config, cost_model("bits"), counter) == r.best.cost
    # by hand, from the choice: element bits x numel + scales, over all weights
    numel = {"0": 72, "3": 9216, "5": 320}
    rows = {"0": 8, "3": 32, "5": 10}
    per = {"fp16": lambda n, r_: 16 * n, "e4m3": lambda n, r_: 8 * n, "int8": lambda n, r_: 8 * n + 32,
           "mxfp4": None}
    total = 0
    for u, c in r.choice.items():
        n = numel[u]
        if c == "mxfp4":
            inner = n // rows[u]
            total += 4 * n + rows[u] * -(-inner // 32) * 8
        else:
            total += per[c](n, rows[u])
    assert Fraction(total, sum(numel.values())) == r.best.cost
    assert all(torch.equal(v, m.state_dict()[k]) for k, v in before.items())  # the model is unchanged


def test_search_measured_is_an_independent_run(searched):
    m, x, r, _ = searched
    cmp = qh.compare(m, r.config, batches=x, stats=False)
    assert cmp.output_sqnr_db == pytest.approx(r.measured_sqnr_db, abs=1e-9)
    for u in r.uniform:
        if u.config is not None:
            assert r.measured_sqnr_db >= u.measured_sqnr_db
    assert any(u.config is None for u in r.uniform)  # fp16 is over a budget of 6 bits


def test_search_views(searched):
    _, _, r, _ = searched
    d = json.loads(r.to_json())
    assert d["chosen"]["choice"] == r.choice and d["budget"] == 6
    assert set(r.choice.values()) <= set(CANDS)
    text = str(r)
    assert "predicted" in text and r.best.source in text
    from rich.console import Console
    con = Console(record=True, width=140)
    con.print(r)
    assert "predicted vs measured" in con.export_text()


def test_bad_input():
    m = _two_layer()
    x = [torch.randn(2, 8)]
    with pytest.raises(ValueError, match=r"feasible range \[4\.\d+, 16\]"):
        qh.search(m, x, candidates=["fp16", "mxfp4"], budget=2)
    with pytest.raises(ValueError, match="feasible range"):
        qh.search(m, x, candidates=["fp16", "mxfp4"], budget=20)
    with pytest.raises(ValueError, match="nosuchformat"):
        qh.search(m, x, candidates=["fp16", "nosuchformat"], budget=8)
    with pytest.raises(ValueError, match="empty"):
        qh.search(m, x, candidates=[], budget=8)
    with pytest.raises(ValueError, match="cost="):
        qh.search(m, x, candidates=["fp16"], budget=8, cost="flops")


def test_layers_the_data_does_not_reach():
    class Branch(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 4)

        def forward(self, x):
            return self.a(x)

    with pytest.raises(ValueError, match=r"\['b'\] did not run"):
        qh.search(Branch(), [torch.randn(2, 4)], candidates=["int8"], budget=8.1)
