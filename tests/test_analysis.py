"""Model-level analysis and the report's figures, against hand computation.

Per-point rows (SQNR, saturated and flushed fractions, merged over calls) of a
known tensor through a known format; grouping that sums powers rather than
averaging decibels; ``compare`` against a hand-written fake-quantized model;
a sensitivity ranking that finds a layer built to be fragile; ``capture``.
"""

import io
import math
from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from rich.console import Console
from torch import nn

import qsim_hooks as qh
from qsim_hooks import analysis, report

from .core.model_check import snapshot, verify_unchanged


def _db(signal, noise):
    return 10 * math.log10(signal / noise)


# ---------------------------------------------------------------------------
# per-point rows against hand-computed figures
# ---------------------------------------------------------------------------
X1 = [1000.0, -600.0, 1e-4, -1e-5, 1.0, 0.5, 3.0, -2.0]     # e4m3: 448, -448, 0, 0, then exact
X2 = [0.25, 448.0, 500.0, 7e-4, -1.5, 6.0, 0.0, 10.0]        # e4m3: exact, 448 (max, not clipped), 448, 0, ...
Q1 = [448.0, -448.0, 0.0, 0.0, 1.0, 0.5, 3.0, -2.0]
Q2 = [0.25, 448.0, 448.0, 0.0, -1.5, 6.0, 0.0, 10.0]


def _identity():
    m = nn.Linear(8, 8, bias=False)
    with torch.no_grad():
        m.weight.copy_(torch.eye(8))
    return m


def test_row_figures_of_a_known_tensor_through_e4m3_merged_over_two_calls():
    m = _identity()
    with torch.no_grad(), qh.quantized(m, qh.QuantConfig(input="e4m3"), stats=True) as qs:
        y1 = m(torch.tensor([X1]))
        y2 = m(torch.tensor([X2]))
    assert y1.tolist() == [Q1] and y2.tolist() == [Q2]  # the outputs are the quantized inputs
    (row,) = qs.stats()
    xs = [float(torch.tensor(v, dtype=torch.float32)) for v in X1 + X2]  # the fp32 values the layer saw
    signal = sum(v * v for v in xs)
    noise = sum((v - q) ** 2 for v, q in zip(xs, Q1 + Q2))
    assert row["module"] == "" and row["point"] == "input" and row["format"] == "e4m3"
    assert row["calls"] == 2 and row["numel"] == 16
    assert row["sqnr_db"] == pytest.approx(_db(signal, noise), rel=1e-12)
    assert row["saturated"] == 3 / 16  # 1000, -600, 500 (448 itself is on the grid)
    assert row["flushed"] == 3 / 16  # 1e-4, -1e-5, 7e-4 (below half the smallest subnormal 2^-9); 0 is not
    assert row["amax"] == 1000.0


def test_row_figures_of_int8_weights_match_fake_quantize():
    torch.manual_seed(3)
    m = nn.Linear(16, 4)
    w = m.weight.detach().clone()
    with torch.no_grad(), qh.quantized(m, weight="int8", stats=True) as qs:
        m(torch.randn(2, 16))
    (row,) = qs.stats()
    q = torch.fake_quantize_per_tensor_affine(w, float(w.abs().max()) / 127, 0, -127, 127)
    ref = _db(float((w.double() ** 2).sum()), float(((w.double() - q.double()) ** 2).sum()))
    assert row["point"] == "weight" and row["granularity"].startswith("tensor")
    assert row["sqnr_db"] == pytest.approx(ref, rel=1e-9)
    assert row["saturated"] == 0.0 and row["calls"] == 1


# ---------------------------------------------------------------------------
# grouping session rows (the arithmetic itself: tests/test_rows.py)
# ---------------------------------------------------------------------------
def _blocks():
    torch.manual_seed(0)
    return nn.Sequential(OrderedDict(
        block0=nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16)),
        block1=nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4)))).eval()


def test_grouped_session_rows_match_the_summed_member_powers_and_render():
    m = _blocks()
    with torch.no_grad(), qh.quantized(m, input="int4", weight="int3", stats=True) as qs:
        m(torch.randn(8, 8))
        m(torch.randn(8, 8) * 3)
    rows = qs.stats()
    g = report.select_stats(rows, group=1, point="weight")
    assert [(r["module"], r["point"], r["points"]) for r in g] == [("block0", "weight", 2), ("block1", "weight", 2)]
    members = [r for r in rows if r["module"].startswith("block0.") and r["point"] == "weight"]
    want = _db(sum(r["signal_power"] for r in members), sum(r["noise_power"] for r in members))
    assert g[0]["sqnr_db"] == pytest.approx(want, rel=1e-12)
    assert g[0]["sqnr_db"] != pytest.approx(sum(r["sqnr_db"] for r in members) / 2, abs=1e-6)
    worst = report.select_stats(rows, group=1, sort="sqnr", top=1)
    assert worst[0]["sqnr_db"] == min(r["sqnr_db"] for r in report.select_stats(rows, group=1))
    cut = sorted(r["sqnr_db"] for r in rows)[3]
    below = report.select_stats(rows, sqnr_below=cut)
    assert len(below) == 3 and all(r["sqnr_db"] < cut for r in below)
    buf = io.StringIO()
    qs.report(console=Console(file=buf, width=200), group=1, sort="sqnr")
    text = buf.getvalue()
    assert "points" in text and "block0" in text and f"{g[0]['sqnr_db']:.2f}" in text
    assert "block0.0" not in text


# ---------------------------------------------------------------------------
# compare
# ---------------------------------------------------------------------------
def _linear_int8_by_hand(m, x):
    w = m.weight.detach()
    qw = torch.fake_quantize_per_tensor_affine(w, float(w.abs().max()) / 127, 0, -127, 127)
    return F.linear(x, qw, m.bias.detach())


def test_compare_against_hand_computation_over_two_batches():
    torch.manual_seed(1)
    m = nn.Sequential(nn.Linear(6, 5))
    xs = [torch.randn(7, 6), torch.randn(9, 6)]
    m.train()  # compare runs in eval mode and gives the flags back
    snap = snapshot(m)
    res = qh.compare(m, qh.QuantConfig(weight="int8"), batches=xs)
    verify_unchanged(m, snap)
    assert m.training
    with torch.no_grad():
        refs = [m(x).double() for x in xs]
        sims = [_linear_int8_by_hand(m[0], x).double() for x in xs]
    signal = sum(float((r ** 2).sum()) for r in refs)
    noise = sum(float(((r - s) ** 2).sum()) for r, s in zip(refs, sims))
    assert res.output_sqnr_db == pytest.approx(_db(signal, noise), rel=1e-6)
    assert res.max_abs_error == pytest.approx(max(float((r - s).abs().max()) for r, s in zip(refs, sims)),
                                              rel=1e-5)
    agree = sum(int((r.argmax(1) == s.argmax(1)).sum()) for r, s in zip(refs, sims))
    assert res.top1_agreement == agree / 16 and res.top1_rows == 16
    assert res.batches == 2 and res.numel == 80
    # the weight is quantized at every forward (no cache: writes through .data must be seen), one per batch
    assert [r["point"] for r in res.stats] == ["weight"] and res.stats[0]["calls"] == 2
    d = res.as_dict(stats=False)
    assert "stats" not in d and d["output_sqnr_db"] == res.output_sqnr_db
    line = report.compare_line(res)
    assert f"{res.output_sqnr_db:.2f} dB" in line and f"({agree} of 16)" in line


def test_compare_metric_and_exact_format():
    torch.manual_seed(2)
    m = nn.Linear(4, 3)
    x = torch.randn(32, 4)
    labels = torch.randint(0, 3, (32,))

    def accuracy(model, batches):
        return sum(float((model(b).argmax(1) == labels).float().mean()) for b in batches) / len(batches)

    res = qh.compare(m, qh.QuantConfig(input="int2", weight="int2"), x, metric=accuracy)
    with torch.no_grad():
        want_full = float((m(x).argmax(1) == labels).float().mean())
        i2 = qh.formats.get("int2")
        want_sim = float((F.linear(i2(x), i2(m.weight), m.bias).argmax(1) == labels).float().mean())
    assert res.metric_full == pytest.approx(want_full) and res.metric_sim == pytest.approx(want_sim)
    assert all(r["calls"] == 1 for r in res.stats)  # the metric's runs are not in the statistics
    exact = qh.compare(m, qh.QuantConfig(weight="fp32"), x, stats=False)
    assert exact.output_sqnr_db == math.inf and exact.max_abs_error == 0.0 and exact.stats == []


class _Kw(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x, scale=1.0):
        y = self.fc(x) * scale
        return {"hidden": y, "logits": y[:, :2]}


def test_compare_feeds_dicts_tuples_and_picks_outputs():
    m = _Kw()
    x = torch.randn(3, 4)
    cfg = qh.QuantConfig(weight="int4")
    by_dict = qh.compare(m, cfg, {"x": x, "scale": 2.0})
    by_tuple = qh.compare(m, cfg, (x, 2.0))
    assert by_dict.output_sqnr_db == by_tuple.output_sqnr_db and by_dict.numel == 12  # first tensor: hidden
    logits = qh.compare(m, cfg, (x, 2.0), output=lambda o: o["logits"])
    assert logits.numel == 6 and logits.top1_rows == 3
    custom = qh.compare(m, cfg, x, forward=lambda mod, b: mod(b, scale=2.0))
    assert custom.output_sqnr_db == by_dict.output_sqnr_db
    with pytest.raises(TypeError, match="output=fn"):
        qh.compare(nn.Identity(), cfg, "not a tensor", forward=lambda mod, b: {"a": 1})
    with pytest.raises(TypeError, match="batch"):
        qh.compare(m, cfg)


def test_first_tensor_of_a_hugging_face_model_output():
    gen = pytest.importorskip("transformers.utils")
    out = gen.ModelOutput(loss=None, logits=torch.ones(2, 3), hidden_states=(torch.zeros(1),))
    assert analysis.first_tensor(out) is out["logits"]
    assert analysis.first_tensor((None, [torch.zeros(1)])).shape == (1,)


# ---------------------------------------------------------------------------
# sensitivity
# ---------------------------------------------------------------------------
class Fragile(nn.Module):
    """fc2's input has one channel stuck at 1000 that fc2 ignores: int4 per tensor flushes the rest."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc1 = nn.Linear(16, 32)
        self.fc2 = nn.Linear(32, 32)
        self.fc3 = nn.Linear(32, 10)
        with torch.no_grad():
            self.fc1.weight[0] = 0.0
            self.fc1.bias[0] = 1000.0
            self.fc2.weight[:, 0] = 0.0

    def forward(self, x):
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


FRAGILE_CFG = qh.QuantConfig(input="int4", weight="int8")


@pytest.mark.parametrize("mode", ["one", "all-but-one"])
def test_sensitivity_ranks_the_fragile_layer_first(mode):
    m = Fragile().eval()
    x = torch.randn(64, 16, generator=torch.Generator().manual_seed(0))
    snap = snapshot(m)
    rows = qh.sensitivity(m, FRAGILE_CFG, x, mode=mode)
    verify_unchanged(m, snap)
    assert [r["rank"] for r in rows] == [1, 2, 3]
    assert rows[0]["layer"] == "fc2" and rows[0]["points"] == 2 and rows[0]["formats"] == "int4,int8"
    if mode == "one":
        assert rows[0]["output_sqnr_db"] < 6.0 < 12.0 < rows[1]["output_sqnr_db"] <= rows[2]["output_sqnr_db"]
        # each row is the comparison of a config that quantizes that layer alone
        by = {r["layer"]: r["output_sqnr_db"] for r in rows}
        for name in ("fc1", "fc2", "fc3"):
            alone = qh.compare(m, qh.QuantConfig(rules=[qh.Rule(match=name, input="int4", weight="int8")]), x)
            assert by[name] == pytest.approx(alone.output_sqnr_db)
    else:
        everything = qh.compare(m, FRAGILE_CFG, x, stats=False).output_sqnr_db
        assert all(r["all_quantized_sqnr_db"] == pytest.approx(everything) for r in rows)
        assert rows[0]["gain_db"] > 10.0 and rows[0]["output_sqnr_db"] >= rows[1]["output_sqnr_db"]
        buf = io.StringIO()
        report.render_sensitivity(rows, Console(file=buf, width=200))
        assert "gain dB" in buf.getvalue() and "fc2" in buf.getvalue()


def test_sensitivity_by_block_keeps_switched_off_layers_off():
    m = _blocks()
    x = torch.randn(16, 8)
    cfg = qh.QuantConfig(input="int4", weight="int4", rules=[qh.Rule(match="block1.2", enabled=False)])
    rows = qh.sensitivity(m, cfg, x, granularity=1)
    by = {r["layer"]: r for r in rows}
    assert set(by) == {"block0", "block1"} and by["block0"]["points"] == 4 and by["block1"]["points"] == 2
    # block1 alone = block1.0 alone (block1.2 stays in full precision)
    alone = qh.compare(m, qh.QuantConfig(rules=[qh.Rule(match="block1.0", input="int4", weight="int4")]), x)
    assert by["block1"]["output_sqnr_db"] == pytest.approx(alone.output_sqnr_db)
    for bad in ({"mode": "some"}, {"granularity": 0}, {"granularity": "block"}):
        with pytest.raises(ValueError):
            qh.sensitivity(m, cfg, x, **bad)
    with pytest.raises(ValueError, match="quantizes nothing"):
        qh.sensitivity(m, qh.QuantConfig(), x)


def test_sweep_rows_reuse_one_reference():
    m = Fragile().eval()
    x = torch.randn(16, 16)
    rows = qh.sweep(m, None, ["fp32", "int8", "int4"], x, roles=("weight",))
    assert [r["format"] for r in rows] == ["fp32", "int8", "int4"]
    assert rows[0]["output_sqnr_db"] == math.inf
    assert rows[1]["output_sqnr_db"] == pytest.approx(qh.compare(m, qh.QuantConfig(weight="int8"), x).output_sqnr_db)
    assert rows[2]["output_sqnr_db"] < rows[1]["output_sqnr_db"]
    with pytest.raises(ValueError, match="roles"):
        qh.sweep(m, None, ["int8"], x, roles=("bias",))


# ---------------------------------------------------------------------------
# capture
# ---------------------------------------------------------------------------
def test_capture_sees_the_unquantized_values():
    m = Fragile().eval()
    xs = [torch.randn(4, 16), torch.randn(3, 16)]
    cap = qh.capture(m, FRAGILE_CFG, batches=xs, points=["fc1:input", "fc2:weight", ("fc3", "input")])
    assert list(cap) == [("fc1", "input", "input"), ("fc2", "weight", "weight"), ("fc3", "input", "input")]
    c = cap[("fc1", "input", "input")]
    assert torch.equal(c.data, torch.cat([x.flatten() for x in xs])) and c.calls == 2 and c.numel == 112
    w = cap[("fc2", "weight", "weight")]
    assert torch.equal(w.data, m.fc2.weight.detach().flatten()) and w.calls == 1 and w.format.name == "int8"
    assert w.label == "fc2.weight" and c.label == "fc1 [input]"
    small = qh.capture(m, FRAGILE_CFG, xs[0], points="fc2", max_samples=10)
    assert {k[1] for k in small} == {"input", "weight"} and all(v.data.numel() <= 10 for v in small.values())
    assert not m.fc1._forward_pre_hooks
    with pytest.raises(ValueError, match="not a quantization point"):
        qh.capture(m, FRAGILE_CFG, xs[0], points=["fc9:input"])


def test_report_shows_static_amax_of_a_calibration():
    class Fixed:  # anything with amax_for(entry) serves a session as a calibration
        def amax_for(self, entry):
            return torch.tensor(2.0) if entry.point == "input" else None

    m = _identity()
    res = qh.compare(m, qh.QuantConfig(input="int8"), torch.tensor([X1]), calibration=Fixed())
    (row,) = res.stats
    assert row["static_amax"] == [2.0] and row["saturated"] == 3 / 8  # 1000, -600 and 3 clip at the static amax
    buf = io.StringIO()
    report.render_compare(res, Console(file=buf, width=200))
    text = buf.getvalue()
    assert "static" in text and "1000" in text
    assert report.fmt_range([0.5, 3.0, 2.0]) == "0.5..3 (3)" and report.fmt_range(None) == "-"
