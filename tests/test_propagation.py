"""Propagated per-layer error (``compare(..., per_layer=True)``, ``qs.report(propagated=True)``), against hand
computation and against an independent all-at-once computation with plain forward hooks.

The definitions checked: *accumulated* is a layer's simulated output against the same layer's output in the
full-precision run; *added* is its simulated output against its own full-precision function of the input it
received in the simulated run. So in a chain with one quantized layer, the layers before it are exact (inf,
inf), the quantized one has accumulated == added, and the layers after it add nothing (inf) while their
accumulated SQNR stays finite.
"""

import csv
import functools
import io
import json
import math
import weakref
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from rich.console import Console
from torch import nn

import qsim_hooks as qh
from qsim_hooks import cli, propagation
from qsim_hooks.modelsrc import load_model

from .core.model_check import snapshot
from .core.model_check import verify_unchanged as _verify_unchanged


@pytest.fixture(autouse=True)
def _eager(eager_kernels):
    yield


def verify_unchanged(model, snap):
    """The model as it was, and no torch function mode (the session's interception) left on the stack."""
    _verify_unchanged(model, snap)
    assert torch._C._len_torch_function_stack() == 0, "a torch function mode was left entered"


def _db(pairs):
    """SQNR in dB of (reference, simulated) pairs, merged: summed float64 powers (written here, not the library's)."""
    signal = sum(float((r.double() ** 2).sum()) for r, _ in pairs)
    noise = sum(float(((r.double() - s.double()) ** 2).sum()) for r, s in pairs)
    return math.inf if noise == 0 else 10 * math.log10(signal / noise)


def _chain():
    g = torch.Generator().manual_seed(3)
    m = nn.Sequential(OrderedDict(fc1=nn.Linear(4, 6), act=nn.ReLU(), fc2=nn.Linear(6, 5), act2=nn.Tanh(),
                                  fc3=nn.Linear(5, 3)))
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.7)
    return m


def _has_pandas():
    try:
        import pandas  # noqa: F401
    except ImportError:
        return False
    return True


def _int8(t):
    return torch.fake_quantize_per_tensor_affine(t, float(t.abs().max()) / 127, 0, -127, 127)


def _e4m3(t):
    return t.to(torch.float8_e4m3fn).float()


CASTS = {"int8": _int8, "e4m3": _e4m3}


@pytest.mark.parametrize("fmt", ["int8", "e4m3"])
def test_chain_with_one_quantized_layer_against_hand_computation(fmt):
    m = _chain()
    m.train()  # run in eval mode, the flags given back
    xs = [torch.randn(7, 4), torch.randn(3, 4) * 4]
    cfg = qh.QuantConfig(rules=[qh.Rule(match="fc2", input=fmt, weight=fmt)])
    snap = snapshot(m)
    res = qh.compare(m, cfg, batches=xs, per_layer=True)
    verify_unchanged(m, snap)
    assert m.training
    q = CASTS[fmt]
    h2, h2s, y, ys = [], [], [], []
    with torch.no_grad():
        for x in xs:
            a1 = torch.relu(m.fc1(x))
            h2.append(m.fc2(a1))
            h2s.append(F.linear(q(a1), q(m.fc2.weight), m.fc2.bias))
            y.append(m.fc3(torch.tanh(h2[-1])))
            ys.append(m.fc3(torch.tanh(h2s[-1])))
    rows = {r["layer"]: r for r in res.per_layer.rows}
    assert list(rows) == ["fc1", "fc2", "fc3"]
    assert rows["fc1"]["accumulated_sqnr_db"] == math.inf and rows["fc1"]["added_sqnr_db"] == math.inf
    expected = _db(list(zip(h2, h2s)))
    assert math.isfinite(expected)
    assert rows["fc2"]["accumulated_sqnr_db"] == pytest.approx(expected, rel=1e-6)
    assert rows["fc2"]["added_sqnr_db"] == rows["fc2"]["accumulated_sqnr_db"]  # its input is still exact
    assert rows["fc3"]["added_sqnr_db"] == math.inf  # unquantized: adds nothing
    assert rows["fc3"]["accumulated_sqnr_db"] == pytest.approx(_db(list(zip(y, ys))), rel=1e-6)
    # the last layer's output is the model's: its accumulated SQNR is compare's output SQNR
    assert rows["fc3"]["accumulated_sqnr_db"] == pytest.approx(res.output_sqnr_db, rel=1e-12)
    assert [r["formats"] for r in res.per_layer] == ["-", f"in {fmt}, w {fmt}", "-"]
    assert [(r["calls"], r["numel"]) for r in res.per_layer] == [(2, 60), (2, 50), (2, 30)]
    assert res.per_layer.notes == []
    d = res.as_dict(stats=False)
    assert d["per_layer"] == res.per_layer.rows and d["per_layer_notes"] == []
    assert f"error starts at fc2 ({expected:.2f} dB)" in repr(res)
    assert "Where the error starts" in res._repr_html_() and "fc3" in res._repr_html_()
    if _has_pandas():
        assert list(res.per_layer.to_pandas()["layer"]) == ["fc1", "fc2", "fc3"]


def test_a_later_quantized_layer_adds_its_own_error_only():
    """fc1 and fc3 quantized: fc3's added SQNR is its own int8 on the (noisy) input it got, computed by hand."""
    m = _chain().eval()
    x = torch.randn(16, 4)
    cfg = qh.QuantConfig(rules=[qh.Rule(match="re:fc[13]", input="int8", weight="int8")])
    rows = {r["layer"]: r for r in qh.compare(m, cfg, x, per_layer=True).per_layer}
    with torch.no_grad():
        h1s = F.linear(_int8(x), _int8(m.fc1.weight), m.fc1.bias)
        a3s = torch.tanh(m.fc2(torch.relu(h1s)))  # fc3's input in the simulated run
        y3s = F.linear(_int8(a3s), _int8(m.fc3.weight), m.fc3.bias)
        y = m(x)
    assert rows["fc1"]["added_sqnr_db"] == rows["fc1"]["accumulated_sqnr_db"]
    assert rows["fc2"]["added_sqnr_db"] == math.inf and math.isfinite(rows["fc2"]["accumulated_sqnr_db"])
    with torch.no_grad():
        own = m.fc3(a3s)
    assert rows["fc3"]["added_sqnr_db"] == pytest.approx(_db([(own, y3s)]), rel=1e-6)
    assert rows["fc3"]["accumulated_sqnr_db"] == pytest.approx(_db([(y, y3s)]), rel=1e-6)


# ---------------------------------------------------------------------------
# real models against an independent computation: every layer captured at once with plain hooks
# ---------------------------------------------------------------------------
def _clone(v, memo=None):
    memo = {} if memo is None else memo  # a tensor passed twice stays one tensor (mha(x, x, x))
    if isinstance(v, torch.Tensor):
        return memo.setdefault(id(v), v.detach().clone())
    if isinstance(v, (tuple, list)):
        return type(v)(_clone(x, memo) for x in v)
    if isinstance(v, dict):
        return {k: _clone(x, memo) for k, x in v.items()}
    return v


def _first(o):
    return o if isinstance(o, torch.Tensor) else _first(o[0])


def _all_at_once(model, cfg, batches):
    """Rows by the definition, holding every layer's activations: one fp run, one simulated run, then each
    layer called on its simulated inputs."""
    names = list(dict.fromkeys(e.module for e in qh.plan(model, cfg) if e.kind != "attention"))
    mods = dict(model.named_modules())
    fp, sim_in, sim_out, order = {}, {}, {}, []

    def hooks(store_out, store_in=None):
        def out(n, o):
            store_out.setdefault(n, []).append(_clone(_first(o)))
            if n not in order:
                order.append(n)

        hs = []
        for n in names:
            if store_in is not None:
                hs.append(mods[n].register_forward_pre_hook(
                    lambda mod, a, k, n=n: store_in.setdefault(n, []).append(_clone((a, k))),
                    with_kwargs=True, prepend=True))
            hs.append(mods[n].register_forward_hook(lambda mod, a, o, n=n: out(n, o)))
        return hs

    model.eval()
    with torch.no_grad():
        hs = hooks(fp)
        for b in batches:
            model(b)
        for h in hs:
            h.remove()
        order.clear()
        with qh.quantized(model, cfg):
            hs = hooks(sim_out, sim_in)
            for b in batches:
                model(b)
            for h in hs:
                h.remove()
        rows = {}
        for n in order:
            own = [_first(mods[n](*a, **k)) for a, k in sim_in[n]]
            rows[n] = (_db(list(zip(fp[n], sim_out[n]))), _db(list(zip(own, sim_out[n]))), len(sim_out[n]))
    return rows


def _check_against_hooks(model, cfg, batches):
    snap = snapshot(model)
    got = qh.compare(model, cfg, batches=batches, per_layer=True, stats=False).per_layer
    verify_unchanged(model, snap)
    want = _all_at_once(model, cfg, batches)
    assert [r["layer"] for r in got] == list(want)
    for r in got:
        acc, added, calls = want[r["layer"]]
        assert r["accumulated_sqnr_db"] == pytest.approx(acc, rel=1e-9), r["layer"]
        assert r["added_sqnr_db"] == pytest.approx(added, rel=1e-9), r["layer"]
        assert r["calls"] == calls
    return got


def test_resnet18_rows_match_an_independent_computation():
    tv = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = tv.models.resnet18(weights=None, num_classes=10)
    rows = _check_against_hooks(model, qh.QuantConfig(input="e4m3", weight="e4m3"),
                                [torch.randn(1, 3, 16, 16)])
    assert len(rows) == 21 and rows[0]["layer"] == "conv1" and rows[-1]["layer"] == "fc"
    assert rows[0]["added_sqnr_db"] == rows[0]["accumulated_sqnr_db"]  # the first layer's input is exact
    assert all(math.isfinite(r["added_sqnr_db"]) for r in rows)
    # printed at 80 columns: every line fits, and every layer name is there (names fold at dots)
    buf = io.StringIO()
    rows.render(Console(file=buf, width=80, color_system=None))
    text = buf.getvalue()
    assert max(len(ln) for ln in text.splitlines()) <= 80
    assert "added" in text and "accumulated" in text.replace("\n", " ")
    assert all(f"{r['accumulated_sqnr_db']:.2f}" in text for r in rows)


def test_tiny_bert_rows_match_an_independent_computation():
    transformers = pytest.importorskip("transformers")
    cfg_b = transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                    intermediate_size=24, max_position_embeddings=16)
    torch.manual_seed(0)
    model = transformers.BertModel(cfg_b)
    ids = [torch.randint(0, 50, (2, 7)), torch.randint(0, 50, (1, 5))]
    rows = _check_against_hooks(model, qh.QuantConfig(input="int8", weight="int8"), ids)
    names = [r["layer"] for r in rows]
    assert names[:3] == ["encoder.layer.0.attention.self.query", "encoder.layer.0.attention.self.key",
                         "encoder.layer.0.attention.self.value"]
    assert names[-1] == "pooler.dense" and len(names) == 13


# ---------------------------------------------------------------------------
# shared modules, tuple outputs, layers that do not run
# ---------------------------------------------------------------------------
class Shared(nn.Module):
    """One Linear called twice per forward."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(5, 5)
        self.head = nn.Linear(5, 2)

    def forward(self, x):
        return self.head(self.fc(torch.relu(self.fc(x))))


def test_a_shared_layer_is_one_row_with_its_calls_merged():
    m = Shared().eval()
    xs = [torch.randn(4, 5), torch.randn(6, 5)]
    cfg = qh.QuantConfig(rules=[qh.Rule(match="fc", weight="int8")])
    rows = {r["layer"]: r for r in qh.compare(m, cfg, batches=xs, per_layer=True).per_layer}
    assert list(rows) == ["fc", "head"]
    with torch.no_grad():
        w = _int8(m.fc.weight)
        pairs_acc, pairs_added = [], []
        for x in xs:
            first, first_s = m.fc(x), F.linear(x, w, m.fc.bias)
            second_in, second_in_s = torch.relu(first), torch.relu(first_s)
            pairs_acc += [(first, first_s), (m.fc(second_in), F.linear(second_in_s, w, m.fc.bias))]
            pairs_added += [(first, first_s), (m.fc(second_in_s), F.linear(second_in_s, w, m.fc.bias))]
    assert rows["fc"]["calls"] == 4 and rows["fc"]["numel"] == 100
    assert rows["fc"]["accumulated_sqnr_db"] == pytest.approx(_db(pairs_acc), rel=1e-6)
    assert rows["fc"]["added_sqnr_db"] == pytest.approx(_db(pairs_added), rel=1e-6)
    assert rows["fc"]["added_sqnr_db"] > rows["fc"]["accumulated_sqnr_db"]  # the second call's input is noisy
    assert rows["head"]["added_sqnr_db"] == math.inf


def test_a_tuple_output_is_compared_on_its_first_tensor_and_a_layer_that_never_runs_is_noted():
    """nn.MultiheadAttention is a layer whose output is (attn_output, weights); its out_proj Linear is used
    through F.multi_head_attention_forward, never called: noted, not a row."""
    mha = nn.MultiheadAttention(8, 2, batch_first=True).eval()
    x = torch.randn(2, 3, 8)
    cfg = qh.QuantConfig(weight="int8")
    snap = snapshot(mha)
    res = qh.compare(mha, cfg, (x, x, x), per_layer=True)
    verify_unchanged(mha, snap)
    (row,) = res.per_layer
    assert row["layer"] == "<model>" or row["layer"] == ""
    with torch.no_grad():
        ref = mha(x, x, x)[0]
        with qh.quantized(mha, cfg):
            sim = mha(x, x, x)[0]
    assert row["accumulated_sqnr_db"] == pytest.approx(_db([(ref, sim)]), rel=1e-9)
    assert row["added_sqnr_db"] == row["accumulated_sqnr_db"]
    assert any("did not run" in n and "out_proj" in n for n in res.per_layer.notes)


class Counter(nn.Linear):
    """A layer whose output holds no tensor."""

    def forward(self, x):
        super().forward(x)
        return {"rows": int(x.shape[0])}


class Branchy(nn.Module):
    """fc2 runs only when fc1's output is exactly 17 everywhere: in full precision, not under e4m3 (16)."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.count = nn.Linear(2, 2, bias=False), nn.Linear(2, 2), Counter(2, 2)
        with torch.no_grad():
            self.fc1.weight.copy_(torch.eye(2))

    def forward(self, x):
        h = self.fc1(x)
        self.count(h)
        if bool((h == 17).all()):
            h = self.fc2(h)
        return h


def test_a_layer_with_no_tensor_output_is_noted_and_differing_calls_are_an_error():
    m = Branchy()
    with pytest.warns(RuntimeWarning, match="fc2.weight"):  # compare's own run says it once
        ok = qh.compare(m, qh.QuantConfig(weight="int8"), torch.full((3, 2), 5.0), per_layer=True).per_layer
    assert [r["layer"] for r in ok] == ["fc1"]
    assert any(n.startswith("count: its output holds no tensor (dict)") for n in ok.notes)
    assert any("did not run" in n and "fc2" in n for n in ok.notes)
    snap = snapshot(m)
    with pytest.raises(ValueError, match="fc2 ran 0 time.*simulated and 1 in full precision"), \
            pytest.warns(RuntimeWarning, match="fc2.input"):
        qh.compare(m, qh.QuantConfig(input="e4m3"), torch.full((3, 2), 17.0), per_layer=True)
    verify_unchanged(m, snap)


# ---------------------------------------------------------------------------
# memory: at most one layer's activations alive, and passes that stop at the layer's last call
# ---------------------------------------------------------------------------
def test_at_most_one_layers_captures_are_alive_at_a_time(monkeypatch):
    m = Shared().eval()
    xs = [torch.randn(4, 5), torch.randn(6, 5)]
    current = {}
    alive = []  # (layer, weakref) of every captured tensor
    worst = [0]
    real_keep, real_pass = propagation._Held.keep, propagation._layer_pass

    def keep(t):  # freed as soon as dropped (reference counting), not at some later garbage collection
        others = [n for n, r in alive if r() is not None and n != current["layer"]]
        assert not others, f"captures of {others} still alive while {current['layer']} runs"
        alive.append((current["layer"], weakref.ref(t)))
        worst[0] = max(worst[0], sum(r() is not None for _, r in alive))
        return real_keep(t)

    def layer_pass(model, module, name, *args):
        current["layer"] = name
        return real_pass(model, module, name, *args)

    monkeypatch.setattr(propagation._Held, "keep", staticmethod(keep))
    monkeypatch.setattr(propagation, "_layer_pass", layer_pass)
    res = qh.compare(m, qh.QuantConfig(weight="int8"), batches=xs, per_layer=True)
    assert [r["layer"] for r in res.per_layer] == ["fc", "head"]
    # fc runs twice per batch: its two inputs and two outputs of one batch, never both batches'
    assert worst[0] == 4
    assert all(r() is None for _, r in alive)


def test_each_pass_stops_after_the_layers_last_call():
    m = _chain().eval()
    calls = {"fc1": 0, "fc3": 0}
    for n in calls:
        getattr(m, n).register_forward_hook(lambda mod, a, o, n=n: calls.__setitem__(n, calls[n] + 1))
    x = torch.randn(3, 4)
    qh.compare(m, qh.QuantConfig(weight="int8"), x, per_layer=True, stats=False)
    # compare's two runs and the ordering pass; then fc1 runs in every layer's two passes, fc3 only in its own;
    # each once more in its own added error (its full-precision function on the simulated input)
    assert calls == {"fc1": 3 + 2 * 3 + 1, "fc3": 3 + 2 + 1}


def test_forward_loop_gives_the_rows_of_the_same_batches():
    m = _chain().eval()
    xs = [torch.randn(5, 4), torch.randn(2, 4)]
    cfg = qh.QuantConfig(input="e4m3", weight="int8")
    by_batches = qh.compare(m, cfg, batches=xs, per_layer=True).per_layer.rows

    def loop(model):
        for x in xs:
            model(x)
    assert qh.compare(m, cfg, forward_loop=loop, per_layer=True).per_layer.rows == by_batches


# ---------------------------------------------------------------------------
# the session's report, and bad input
# ---------------------------------------------------------------------------
def test_session_report_propagated_from_recorded_calls_or_given_batches():
    m = _chain().eval()
    xs = [torch.randn(5, 4), torch.randn(2, 4)]
    cfg = qh.QuantConfig(rules=[qh.Rule(match="fc2", input="int8", weight="int8")])
    want = qh.compare(m, cfg, batches=xs, per_layer=True).per_layer
    snap = snapshot(m)
    with qh.quantized(m, cfg, record=True) as qs:
        for x in xs:
            m(x)
        with pytest.raises(ValueError, match="after the with-block"):
            qs.report(propagated=True)
    buf = io.StringIO()
    qs.report(propagated=True, console=Console(file=buf, width=80, color_system=None))
    verify_unchanged(m, snap)
    text = buf.getvalue()
    assert "Where the error starts" in text and max(len(ln) for ln in text.splitlines()) <= 80
    text = text[text.index("Where the error starts"):]
    for r in want:
        line = next(ln for ln in text.splitlines() if ln.startswith(r["layer"] + " "))
        assert f"{r['accumulated_sqnr_db']:.2f}" in line and f"{r['added_sqnr_db']:.2f}" in line
    with qh.quantized(m, cfg) as plain:  # no record: say what to do; or give the batches
        m(xs[0])
    with pytest.raises(ValueError, match="record=True.*batches=.*per_layer=True"):
        plain.report(propagated=True)
    buf = io.StringIO()
    plain.report(propagated=True, batches=xs, console=Console(file=buf, width=80, color_system=None))
    assert f"{want[1]['added_sqnr_db']:.2f}" in buf.getvalue()
    with pytest.raises(TypeError, match="propagated=True"):
        plain.report(batches=xs)
    with pytest.raises(TypeError, match="propagated must be True or False"):
        plain.report(propagated="yes")


def test_bad_input():
    m = _chain()
    x = torch.randn(2, 4)
    with pytest.raises(TypeError, match="per_layer must be True or False, got str"):
        qh.compare(m, qh.QuantConfig(weight="int8"), x, per_layer="yes")
    snap = snapshot(m)
    with pytest.raises(ValueError, match="quantizes nothing"):
        qh.compare(m, qh.QuantConfig(), x, per_layer=True)
    with pytest.raises(ValueError, match="no layer"):
        qh.compare(nn.Sequential(nn.ReLU()), qh.QuantConfig(weight="int8"), x, per_layer=True)
    with pytest.raises(TypeError, match="record must be True or False, got int"):
        qh.quantized(m, qh.QuantConfig(weight="int8"), record=1)
    with qh.quantized(m, qh.QuantConfig(weight="int8"), record=True) as qs:
        pass  # the model never ran: nothing to run again
    with pytest.raises(ValueError, match="recorded no call of the model"):
        qs.report(propagated=True)
    with pytest.raises(TypeError, match="either batch= .* or batches="):
        qs.report(propagated=True, batch=x, batches=[x])
    with pytest.raises(ValueError, match="batches= is empty"):
        qs.report(propagated=True, batches=[])
    verify_unchanged(m, snap)


class Flaky(nn.Module):
    """Raises on its n-th forward: in the middle of the per-layer passes."""

    def __init__(self, n):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, 4), nn.Linear(4, 4)
        self.n, self.calls = n, 0

    def forward(self, x):
        self.calls += 1
        if self.calls == self.n:
            raise RuntimeError("boom")
        return self.fc2(self.fc1(x))


@pytest.mark.parametrize("n", [3, 4, 5, 6])
def test_a_failure_in_a_pass_leaves_the_model_unchanged(n):
    m = Flaky(n)
    snap = snapshot(m)
    with pytest.raises(RuntimeError, match="boom"):
        qh.compare(m, qh.QuantConfig(input="int8", weight="int8"), torch.randn(2, 4), per_layer=True)
    verify_unchanged(m, snap)


# ---------------------------------------------------------------------------
# the command line: report --propagated, in process, against the library call
# ---------------------------------------------------------------------------
SMALL_CNN = str(Path(__file__).resolve().parents[1] / "examples" / "small_cnn.py")


@functools.cache
def _library_rows():
    src = load_model(SMALL_CNN)
    cfg = qh.QuantConfig(input="int8", weight="e4m3", output="fp16")  # the command line's default output
    return qh.compare(src.model, cfg, batches=src.batches, forward=src.forward, output=src.output,
                      per_layer=True, stats=False).per_layer


def test_cli_report_propagated_json_and_csv_are_the_library_rows(capsys):
    want = _library_rows()
    argv = ["report", "--model", SMALL_CNN, "--input", "int8", "--weight", "e4m3", "--propagated"]
    assert cli.main([*argv, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["per_layer"] == json.loads(json.dumps(want.rows)) and data["per_layer_notes"] == want.notes
    assert "per_layer" not in data["summary"] or data["summary"]["per_layer"] == data["per_layer"]
    assert cli.main([*argv, "--csv"]) == 0
    got = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [r["layer"] for r in got] == [r["layer"] for r in want]
    assert [float(r["added_sqnr_db"]) for r in got] == [r["added_sqnr_db"] for r in want]


def test_cli_report_propagated_table_fits_80_columns(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    want = _library_rows()
    assert cli.main(["report", "--model", SMALL_CNN, "--input", "int8", "--weight", "e4m3", "--propagated"]) == 0
    out = capsys.readouterr().out
    assert max(len(ln) for ln in out.splitlines()) <= 80
    table = out[out.index("Where the error starts"):]
    for r in want:
        line = next(ln for ln in table.splitlines() if ln.startswith(r["layer"] + " "))
        assert f"{r['accumulated_sqnr_db']:.2f}" in line and f"{r['added_sqnr_db']:.2f}" in line
    assert cli.main(["report", "--model", SMALL_CNN]) == 0  # without the option: no per-layer table
    assert "Where the error starts" not in capsys.readouterr().out
