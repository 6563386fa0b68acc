"""Mixed-precision search, the parts on top of the solver: the scores (output SQNR, KL, a metric) against
independent runs, the prefix replay against running everything, the Fisher estimate against a hand
computation and against the one-at-a-time runs, save/load to an identical plan, and the bad input."""

from __future__ import annotations

import json
import math
from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import qsim_hooks as qh
from qsim_hooks.search import config_cost, cost_model
from qsim_hooks.search.costs import MacCounter

CANDS = ["fp16", "e4m3", "int8", "mxfp4"]


class Block(nn.Module):
    """A residual block with an in-place ReLU on a BatchNorm output (what the replay must not corrupt)."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x):
        return self.relu(self.conv2(self.relu(self.bn1(self.conv1(x)))) + x)


def _resnetish() -> nn.Module:
    torch.manual_seed(0)
    m = nn.Sequential(OrderedDict([
        ("stem", nn.Conv2d(1, 8, 3, padding=1)), ("bn", nn.BatchNorm2d(8)), ("act", nn.ReLU(inplace=True)),
        ("layer1", nn.Sequential(Block(8), Block(8))), ("layer2", nn.Sequential(Block(8))),
        ("pool", nn.AdaptiveAvgPool2d(1)), ("flat", nn.Flatten()), ("fc", nn.Linear(8, 10))]))
    with torch.no_grad():  # non-trivial BatchNorm statistics
        for mod in m.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.5, 0.5)
                mod.running_var.uniform_(0.5, 2.0)
    return m.eval()


@pytest.fixture(scope="module")
def resnetish():
    g = torch.Generator().manual_seed(1)
    return _resnetish(), [torch.randn(4, 1, 8, 8, generator=g) for _ in range(2)]


@pytest.mark.parametrize("granularity", ["layer", 2])
def test_replay_is_bit_identical_and_equals_sensitivity(resnetish, granularity):
    m, x = resnetish
    before = {k: v.clone() for k, v in m.state_dict().items()}
    fast = qh.search(m, x, candidates=CANDS, budget=6, granularity=granularity)
    slow = qh.search(m, x, candidates=CANDS, budget=6, granularity=granularity, replay=False)
    assert fast.sensitivity == slow.sensitivity  # every unit's loss, bit for bit
    assert fast.choice == slow.choice and fast.best.score == slow.best.score
    # the losses are qh.sensitivity's one-at-a-time SQNRs (an independent path), as noise powers
    rows = qh.sensitivity(m, qh.QuantConfig(input="int8", weight="int8"), batches=x, granularity=granularity)
    by_unit = {r["layer"]: r["output_sqnr_db"] for r in rows}
    for r in fast.sensitivity:
        assert r["int8"]["loss"] == pytest.approx(10 ** (-by_unit[r["unit"]] / 10), rel=1e-9)
    assert all(torch.equal(v, m.state_dict()[k]) for k, v in before.items())
    assert all(not mod._forward_hooks and not mod._forward_pre_hooks and "forward" not in mod.__dict__
               for mod in m.modules())


def test_kl_score_against_a_hand_computation(resnetish):
    m, x = resnetish
    r = qh.search(m, x, candidates=["int8", "mxfp4"], budget=6.5, score="kl")
    assert r.score == "kl" and not r.higher_is_better

    def kl(cfg):
        with torch.no_grad():
            ref = [m(b) for b in x]
            with qh.quantized(m, cfg):
                sim = [m(b) for b in x]
        vals = [F.kl_div(F.log_softmax(s.double(), -1), F.log_softmax(f.double(), -1), log_target=True,
                         reduction="sum") for f, s in zip(ref, sim)]
        return float(sum(vals)) / sum(f.shape[0] for f in ref)

    for e in r.evaluated:
        assert e.score == pytest.approx(kl(e.config), rel=1e-9)
    one = {u["unit"]: u["mxfp4"]["loss"] for u in r.sensitivity}
    cfg = qh.QuantConfig(rules=(qh.Rule(match="re:(?:fc)", input="mxfp4", weight="mxfp4"),))
    assert one["fc"] == pytest.approx(kl(cfg), rel=1e-9)
    # the searched one is at least as good as every uniform one within the budget
    assert all(r.best.score <= u.score for u in r.uniform if u.config is not None)


def test_metric_score_is_the_drop_from_full_precision(resnetish):
    m, x = resnetish
    calls = []

    def agreement(model, batches):  # higher is better
        calls.append(1)
        with torch.no_grad():
            return float(sum((model(b).argmax(-1) == ref).float().mean() for b, ref in zip(batches, labels)))

    with torch.no_grad():
        labels = [m(b).argmax(-1) for b in x]
    r = qh.search(m, x, candidates=["int8", "mxfp4"], budget=6.5, score=agreement, granularity=1)
    assert r.score == "agreement" and r.higher_is_better and r.score_full == 2.0
    for row in r.sensitivity:
        for c in ("int8", "mxfp4"):
            assert row[c]["loss"] == pytest.approx(2.0 - row[c]["alone"])
    for e in r.evaluated:
        with qh.quantized(m, e.config):
            assert e.score == agreement(m, x)
        assert e.predicted == pytest.approx(2.0 - sum(
            next(s for s in r.sensitivity if s["unit"] == u)[c]["loss"] for u, c in e.choice.items()))
    assert all(r.best.score >= u.score for u in r.uniform if u.config is not None)


def test_a_metric_that_is_also_the_score_runs_once_per_configuration(resnetish):
    """``score=f, metric=f`` (what the CLI passes): f's value is the score and the reported metric alike, so
    the search calls it no more often than with ``score=f`` alone, and reports it as the metric."""
    m, x = resnetish
    calls = []

    def agreement(model, batches):
        calls.append(1)
        with torch.no_grad():
            return float(sum((model(b).argmax(-1) == ref).float().mean() for b, ref in zip(batches, labels)))

    with torch.no_grad():
        labels = [m(b).argmax(-1) for b in x]
    kw = dict(candidates=["int8", "mxfp4"], budget=6.5, score=agreement, granularity=1)
    qh.search(m, x, **kw)
    alone = len(calls)
    calls.clear()
    r = qh.search(m, x, metric=agreement, **kw)
    assert len(calls) == alone
    assert r.best.metric == r.best.score and all(u.metric == u.score for u in r.uniform if u.config is not None)


# ---------------------------------------------------------------------------
# Fisher
# ---------------------------------------------------------------------------
def _trained_mlp():
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    x = torch.randn(256, 12, generator=g)
    y = (x[:, :3].sum(1) > 0).long() + (x[:, 3] > 0.5).long()
    flip = torch.rand(256, generator=g) < 0.2  # label noise: the loss stays away from zero
    y = torch.where(flip, torch.randint(0, 3, (256,), generator=g), y)
    m = nn.Sequential(OrderedDict([("a", nn.Linear(12, 48)), ("r1", nn.ReLU()), ("b", nn.Linear(48, 48)),
                                   ("r2", nn.ReLU()), ("c", nn.Linear(48, 8)), ("r3", nn.ReLU()),
                                   ("d", nn.Linear(8, 3))]))
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    for _ in range(60):  # trained, not memorised: the empirical Fisher of a zero loss is zero
        opt.zero_grad()
        F.cross_entropy(m(x), y).backward()
        opt.step()
    opt.zero_grad(set_to_none=True)
    return m.eval(), [(x[i:i + 64], y[i:i + 64]) for i in range(0, 256, 64)]


def _ce(model, batch):
    return F.cross_entropy(model(batch[0]), batch[1])


def _first(model, batch):
    return model(batch[0])


def _spearman(a, b):
    ra = torch.tensor(a).argsort().argsort().double()
    rb = torch.tensor(b).argsort().argsort().double()
    return float(torch.corrcoef(torch.stack([ra, rb]))[0, 1])


def test_fisher_ranks_units_like_the_pass_estimate():
    m, data = _trained_mlp()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    cands = ["fp16", "int8", "int4", "mxfp4"]
    fi = qh.search(m, data, candidates=cands, budget=6, estimate="fisher", loss=_ce, forward=_first)
    pa = qh.search(m, data, candidates=cands, budget=6, forward=_first, score="kl")  # both: the output distribution
    f = [r[c]["loss"] for r in fi.sensitivity for c in cands[1:]]
    p = [r[c]["loss"] for r in pa.sensitivity for c in cands[1:]]
    assert _spearman(f, p) > 0.8
    for c in ("int4", "mxfp4"):  # the most sensitive unit is the same
        assert (max(fi.sensitivity, key=lambda r, c=c: r[c]["loss"])["unit"]
                == max(pa.sensitivity, key=lambda r, c=c: r[c]["loss"])["unit"])
    counter = MacCounter.attach(m, list(fi.units))
    m(data[0][0])
    counter.remove()
    assert config_cost(m, fi.config, cost_model("bits"), counter) == fi.best.cost <= 6
    with torch.no_grad():
        assert fi.loss_full == pytest.approx(sum(float(_ce(m, b)) for b in data) / len(data))
    # predicted and measured are loss increases; the measured one is a real run's
    with torch.no_grad(), qh.quantized(m, fi.config):
        real = sum(float(_ce(m, b)) for b in data) / len(data)
    assert fi.best.measured == pytest.approx(real - fi.loss_full, rel=1e-6, abs=1e-9)
    assert all(p.grad is None for p in m.parameters())  # no .grad left behind
    assert all(torch.equal(v, m.state_dict()[k]) for k, v in before.items())


def test_fisher_estimate_by_hand():
    torch.manual_seed(3)
    lin = nn.Sequential(OrderedDict([("l", nn.Linear(6, 4))]))
    x, y = torch.randn(5, 6), torch.randint(0, 4, (5,))
    r = qh.search(lin, [(x, y)], candidates=["int4", "fp16"], budget=6, estimate="fisher", loss=_ce, forward=_first)
    out = lin(x)
    g, = torch.autograd.grad(F.cross_entropy(out, y), out)
    with torch.no_grad(), qh.quantized(lin, qh.QuantConfig(input="int4", weight="int4")):
        dy = lin(x) - out.detach()
    by_hand = 0.5 * 5 * float(((g * dy).sum(1) ** 2).sum())
    assert r.sensitivity[0]["int4"]["loss"] == pytest.approx(by_hand, rel=1e-5)  # float32 sums by hand


# ---------------------------------------------------------------------------
# save / load
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("suffix", [".toml", ".json"])
def test_save_round_trips_to_the_same_plan(resnetish, tmp_path, suffix):
    m, x = resnetish
    r = qh.search(m, x, candidates=["fp16", "int8", "mxfp4", "int8/int4"], budget=7)
    cfg_path, front_path = r.save(tmp_path / f"cfg{suffix}")
    assert cfg_path == tmp_path / f"cfg{suffix}" and front_path == tmp_path / "cfg.front.json"
    loaded = qh.QuantConfig.load(cfg_path)
    assert qh.plan(m, loaded) == qh.plan(m, r.config)
    data = json.loads(front_path.read_text())
    assert data["chosen"]["choice"] == r.choice and len(data["front"]) == len(r.front)
    assert qh.compare(m, loaded, batches=x, stats=False).output_sqnr_db == r.measured_sqnr_db


# ---------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------
def test_bad_input_each_one_clear_error(resnetish):
    m, x = resnetish
    with pytest.raises(ValueError, match=r"score='sqnr' is not allowed; use one of \['output_sqnr', 'kl'\]"):
        qh.search(m, x, candidates=CANDS, budget=6, score="sqnr")
    with pytest.raises(ValueError, match=r"estimate='hessian' is not allowed"):
        qh.search(m, x, candidates=CANDS, budget=6, estimate="hessian")
    with pytest.raises(ValueError, match=r"estimate='fisher' needs loss=fn"):
        qh.search(m, x, candidates=CANDS, budget=6, estimate="fisher")

    def nan_metric(model, batches):
        return math.nan
    with pytest.raises(ValueError, match=r"nan_metric\(model, batches\) returned NaN \(full precision\)"):
        qh.search(m, x, candidates=CANDS, budget=6, score=nan_metric)
    seen = []

    def nan_when_simulated(model, batches):  # a number in full precision, NaN afterwards
        seen.append(1)
        return 1.0 if len(seen) == 1 else math.nan
    with pytest.raises(ValueError, match=r"nan_when_simulated\(model, batches\) returned NaN \(simulated\)"):
        qh.search(m, x, candidates=CANDS, budget=6, score=nan_when_simulated)
    with pytest.raises(ValueError, match=r"budget=17 is outside the feasible range \[5\.05987, 16\]"):
        qh.search(m, x, candidates=CANDS, budget=17)
    with pytest.raises(ValueError, match=r"budget=5 is outside the feasible range \[5\.05987, 16\]"):
        qh.search(m, x, candidates=CANDS, budget=5)
    with pytest.raises(ValueError, match="empty"):
        qh.search(m, x, candidates=[], budget=6)
    with pytest.raises(ValueError, match="score='kl' needs outputs with a class axis last"):
        qh.search(nn.Sequential(nn.Linear(4, 1)), [torch.randn(3, 4)], candidates=["int8", "fp16"], budget=16,
                  score="kl")


def test_reuse_takes_the_losses_and_solves_another_budget(resnetish):
    m, x = resnetish
    first = qh.search(m, x, candidates=CANDS, budget=6)
    fresh = qh.search(m, x, candidates=CANDS, budget=9)
    again = qh.search(m, x, candidates=CANDS, budget=9, reuse=first)
    assert again.sensitivity == fresh.sensitivity and again.choice == fresh.choice
    assert again.best.score == fresh.best.score and again.budget == 9
    with pytest.raises(ValueError, match=r"reuse: the earlier search differs in \['score'\]"):
        qh.search(m, x, candidates=CANDS, budget=9, score="kl", reuse=first)


def test_front_plot_data_and_png(resnetish, tmp_path):
    from qsim_hooks.search.plot import front_data, front_plot
    m, x = resnetish
    r = qh.search(m, x, candidates=CANDS, budget=6, score="kl")
    d = front_data(r)
    assert d.chosen == (float(r.best.cost), r.best.measured, r.best.source)
    assert {n for _, _, n in d.uniform} == {u.source.split(" ", 1)[1] for u in r.uniform if u.config is not None}
    assert {n for _, _, n in d.over_budget} == {u.source.split(" ", 1)[1] for u in r.uniform if u.config is None}
    assert len(d.front) == len(r.front) and d.log_y and "lower is better" in d.ylabel  # a KL: log axis
    assert all(c <= 6 for c, _, _ in (*d.searched, *d.uniform))
    png = front_plot(r, tmp_path / "f.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _clean(m):
    return all(not mod._forward_hooks and not mod._forward_pre_hooks and "forward" not in mod.__dict__
               and not hasattr(mod, "parametrizations") for mod in m.modules())


def test_the_model_is_left_as_it_was_when_a_run_raises(resnetish):
    m, x = resnetish
    before = {k: v.clone() for k, v in m.state_dict().items()}
    calls = []

    def output(out):  # fine for the reference, raises inside a replayed one-at-a-time run
        calls.append(1)
        if len(calls) > 5:
            raise RuntimeError("boom in output")
        return out

    with pytest.raises(RuntimeError, match="boom in output"):
        qh.search(m, x, candidates=CANDS, budget=6, output=output)
    assert _clean(m) and all(torch.equal(v, m.state_dict()[k]) for k, v in before.items())

    def loss(model, batch):  # the full-precision backward runs, a candidate's forward raises
        calls.append(1)
        if len(calls) > 8:
            raise RuntimeError("boom in loss")
        return model(batch).logsumexp(-1).mean()

    with pytest.raises(RuntimeError, match="boom in loss"):
        qh.search(m, x, candidates=CANDS, budget=6, estimate="fisher", loss=loss)
    assert _clean(m) and all(torch.equal(v, m.state_dict()[k]) for k, v in before.items())
    assert all(p.grad is None for p in m.parameters()) and not m.training
