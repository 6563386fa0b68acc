"""Sessions on real models: numerics against hand-written references, exact reversibility,
rollback, nesting, weight caching, keyword inputs and statistics."""

import copy
import gc
import io
import warnings
import weakref

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import qsim_hooks as qh
from qsim_hooks import activations
from qsim_hooks.formats import get
from qsim_hooks.report_coverage import coverage_line

from .model_check import snapshot, verify_unchanged


def mlp():
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8))


class AutoEncoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.enc = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(),
                                 nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU())
        self.dec = nn.Sequential(nn.ConvTranspose2d(16, 8, 2, stride=2), nn.ReLU(),
                                 nn.ConvTranspose2d(8, 3, 2, stride=2))

    def forward(self, x):
        return self.dec(self.enc(x))


_FACTORIES = {
    "mlp": lambda: (mlp(), torch.randn(4, 16)),
    "autoencoder": lambda: (AutoEncoder(), torch.randn(2, 3, 16, 16)),
    "resnet18": lambda: (torchvision.models.resnet18(num_classes=10), torch.randn(2, 3, 32, 32)),
    "mobilenet_v3_small": lambda: (torchvision.models.mobilenet_v3_small(num_classes=10), torch.randn(2, 3, 32, 32)),
    "resnet50": lambda: (torchvision.models.resnet50(num_classes=10), torch.randn(1, 3, 32, 32)),
}


class _Models(dict):
    """name -> (model in eval mode, input), built on first use (train-mode BatchNorm would
    legitimately update buffers)."""

    def __missing__(self, name):
        torch.manual_seed(0)
        m, x = _FACTORIES[name]()
        self[name] = (m.eval(), x)
        return self[name]


def _models():
    return _Models()


CFG = qh.QuantConfig(input="int8", weight="int4", output="fp16")


def test_mlp_matches_hand_reference():
    m = mlp().eval()
    x = torch.randn(4, 16)
    i8, i4, f16 = get("int8"), get("int4"), get("fp16")
    h = f16(F.linear(i8(x), i4(m[0].weight), m[0].bias)).relu()
    ref = f16(F.linear(i8(h), i4(m[2].weight), m[2].bias))
    with qh.quantized(m, CFG):
        y = m(x)
    assert torch.equal(y, ref)
    assert not torch.equal(y, m(x))


def test_conv_transpose_per_channel_weight_axis_matches_reference():
    m = nn.ConvTranspose2d(4, 6, 3).eval()
    x = torch.randn(2, 4, 5, 5)
    cfg = qh.QuantConfig(weight="int4", rules=[qh.Rule(weight_scaling="channel")])
    w = m.weight  # [in=4, out=6, k, k]: output channels on axis 1
    amax = w.detach().abs().amax(dim=(0, 2, 3))
    scale = amax / 7
    wq = torch.fake_quantize_per_channel_affine(w.detach(), scale, torch.zeros(6, dtype=torch.int32), 1, -7, 7)
    ref = F.conv_transpose2d(x, wq, m.bias)
    with qh.quantized(m, cfg):
        y = m(x)
    assert torch.equal(y, ref)


@pytest.mark.parametrize("name", ["mlp", "autoencoder", "resnet18", "mobilenet_v3_small", "resnet50"])
def test_reversible_after_normal_exit(name):
    model, x = _models()[name]
    model.eval()
    snap = snapshot(model)
    with torch.no_grad():
        ref = model(x)
        with qh.quantized(model, CFG) as qs:
            y = model(x)
            assert len(qs.points) > 0
            assert any(hasattr(m, "parametrizations") for m in model.modules())
        assert not torch.equal(y, ref)
        assert torch.equal(model(x), ref)
    verify_unchanged(model, snap)
    torch.save(model, io.BytesIO())
    copy.deepcopy(model)


def test_reversible_after_exception_inside_block():
    model, x = _models()["resnet18"]
    snap = snapshot(model)
    with pytest.raises(KeyError):
        with qh.quantized(model, CFG):
            model(x)
            raise KeyError("boom")
    verify_unchanged(model, snap)


def test_rollback_when_attach_fails_half_way(monkeypatch):
    model, x = _models()["resnet18"]
    snap = snapshot(model)
    real = activations.attach_output
    calls = {"n": 0}

    def failing(module, point):
        calls["n"] += 1
        if calls["n"] == 5:
            raise RuntimeError("attach failure injected")
        return real(module, point)

    monkeypatch.setattr(activations, "attach_output", failing)
    with pytest.raises(RuntimeError, match="injected"):
        qh.attach(model, CFG)
    verify_unchanged(model, snap)
    monkeypatch.setattr(activations, "attach_output", real)
    with qh.quantized(model, CFG):  # the model is free again
        model(x)
    verify_unchanged(model, snap)


def test_nested_attach_is_refused_and_released_on_exit():
    model, x = _models()["mlp"]
    with qh.quantized(model, CFG):
        with pytest.raises(RuntimeError, match="already instrumented"):
            qh.attach(model, qh.QuantConfig(weight="e4m3"))
        with pytest.raises(RuntimeError, match="already instrumented"):
            qh.attach(model[0], qh.QuantConfig(weight="e4m3"))
        model(x)
    h = qh.attach(model, qh.QuantConfig(weight="e4m3"))
    h.detach()
    h.detach()  # safe twice
    # a session on a disjoint sub-module is allowed alongside
    with qh.quantized(model[0], CFG), qh.quantized(model[2], CFG):
        model(x)


def test_attach_detach_without_with_block():
    model, x = _models()["mlp"]
    snap = snapshot(model)
    h = qh.attach(model, CFG)
    assert h.attached and "attached" in repr(h)
    assert "_qsim_hooks_session" in vars(model[0])  # the record the nesting check reads (cleared by detach)
    y = model(x)
    h.detach()
    verify_unchanged(model, snap)
    with qh.quantized(model, CFG):
        assert torch.equal(model(x), y)


def test_a_dropped_session_still_refuses_nesting_after_gc_until_detach_model():
    """Issue 12 item 8: the record lives on the modules, so it survives the session object's garbage collection."""
    model = mlp().eval()
    x = torch.randn(4, 16)
    snap = snapshot(model)
    ref = model(x)
    dropped = qh.attach(model, CFG)
    wr = weakref.ref(dropped)
    del dropped  # the handle is not kept
    gc.collect()
    assert wr() is not None and wr().attached  # kept alive (and attached) by the model's record
    with pytest.raises(RuntimeError, match=r"already instrumented.*qsim_hooks\.detach\(model\)"):
        qh.attach(model, qh.QuantConfig(input="e4m3"))
    assert len(model[0]._forward_pre_hooks) == 1  # no second input quantizer stacked on the first
    assert not torch.equal(model(x), ref)  # the dropped session still quantizes
    assert qh.detach(model) == 1
    verify_unchanged(model, snap)
    assert torch.equal(model(x), ref)
    gc.collect()
    assert wr() is None  # nothing holds the session once detached
    assert qh.detach(model) == 0
    with qh.quantized(model, CFG):  # free again
        model(x)
    verify_unchanged(model, snap)


def test_detach_model_finds_sessions_on_sub_modules_and_refuses_copies():
    model = mlp().eval()
    snap = snapshot(model)
    qh.attach(model[0], CFG)
    qh.attach(model[2], CFG)
    assert qh.detach(model) == 2
    verify_unchanged(model, snap)
    with pytest.raises(TypeError, match="torch.nn.Module"):
        qh.detach("model")
    with qh.quantized(model, CFG):  # a copy made inside the block would share the session's hooks: refused
        with pytest.raises(RuntimeError, match="deepcopy: module '0' is instrumented"):
            copy.deepcopy(model)
    verify_unchanged(model, snap)


def test_observe_lends_observers_and_gives_the_points_back():
    model = mlp().eval()
    x = torch.randn(4, 16)
    k_in, k_w = ("0", "input", "input"), ("2", "weight", "weight")
    seen = {}
    with torch.no_grad(), qh.quantized(model, CFG) as qs:
        y_q = model(x)
        observers = {k: (lambda t, k=k: seen.setdefault(k, []).append(t.clone())) for k in (k_in, k_w)}
        n_params = len(list(model.parameters()))
        with qs.observe(observers, full_precision=True) as lent:
            y_obs = model(x)
            assert len(list(model.parameters())) == n_params  # the weight cache registered no Parameter
        lent.remove()  # safe twice
        assert torch.equal(seen[k_in][0], x) and torch.equal(seen[k_w][0], model[2].parametrizations.weight.original)
        # the observed points did not quantize meanwhile; every other point did
        i8, i4, f16 = get("int8"), get("int4"), get("fp16")
        h = f16(F.linear(x, i4(model[0].weight), model[0].bias)).relu()
        assert torch.equal(y_obs, f16(F.linear(i8(h), model[2].parametrizations.weight.original, model[2].bias)))
        assert qs.points[k_in].observer is None and qs.points[k_in].format.name == "int8"
        assert torch.equal(model(x), y_q)  # given back: quantizing again (the weight cache too)
        with pytest.raises(ValueError, match="not points of this session"):
            qs.observe({("nope", "input", "input"): print})
        qs.observe({k_in: lambda t: None})  # still lent when the session detaches
    assert qs.points[k_in].observer is None
    with pytest.raises(RuntimeError, match="attached session"):
        qs.observe({k_in: print})


def test_every_kind_attaches_through_the_table(monkeypatch):
    from qsim_hooks import session as session_mod
    from qsim_hooks.planning import POINT_KINDS

    assert tuple(session_mod.ATTACHERS) == POINT_KINDS
    model, x = _models()["mlp"]
    sites = []
    real = session_mod.ATTACHERS["input"]

    def spy(site):
        sites.append((site.name, sorted(site.points)))
        return real.attach(site)

    monkeypatch.setitem(session_mod.ATTACHERS, "input", session_mod.PointKind(spy))
    with qh.quantized(model, CFG):
        model(x)
    assert sites == [("0", ["input"]), ("2", ["input"])]


def test_existing_user_parametrization_is_kept():
    from torch.nn.utils import parametrize

    class Double(nn.Module):
        def forward(self, w):
            return 2 * w

    m = nn.Linear(4, 4)
    parametrize.register_parametrization(m, "weight", Double())
    x = torch.randn(3, 4)
    ref = m(x)
    with qh.quantized(m, qh.QuantConfig(weight="int4")):
        wq = get("int4")(2 * m.parametrizations.weight.original)
        assert torch.equal(m(x), F.linear(x, wq, m.bias))
    assert len(m.parametrizations.weight) == 1 and isinstance(m.parametrizations.weight[0], Double)
    assert torch.equal(m(x), ref)


def test_weights_quantized_at_every_forward_so_in_place_changes_are_seen():
    """No weight cache (issue 12, item 3: a cache keyed on the version counter went stale): every forward
    quantizes the weight as it is now, with or without autograd, in inference mode too."""
    model = mlp().eval()
    x = torch.randn(4, 16)
    w0 = model[0].weight
    before = w0.detach().clone()
    with qh.quantized(model, qh.QuantConfig(weight="int4"), stats=True) as qs:
        with torch.no_grad():
            y1 = model(x)
            model(x)
            model(x)
        w_point = qs.points[("0", "weight", "weight")]
        assert w_point.stats.calls == 3
        with torch.no_grad():
            model[0].parametrizations.weight.original.mul_(2)  # an in-place change (optimizer-like)
            y2 = model(x)
        assert w_point.stats.calls == 4
        assert not torch.equal(y1, y2)
        with torch.inference_mode():
            y3 = model(x)
        assert w_point.stats.calls == 5 and torch.equal(y3, y2)
    # restored: the user's own Parameter, holding the in-place change and not the quantized values
    assert model[0].weight is w0 and torch.equal(w0, 2 * before)


def test_keyword_input_is_quantized():
    m = nn.Linear(8, 8)
    x = torch.randn(2, 8)
    with qh.quantized(m, qh.QuantConfig(input="int4")):
        y_kw = m(input=x)
        y_pos = m(x)
    assert torch.equal(y_kw, y_pos)
    assert torch.equal(y_pos, F.linear(get("int4")(x), m.weight, m.bias))


def test_tuple_outputs_and_non_tensor_inputs():
    class Two(nn.Linear):
        def forward(self, x, flag=True):
            y = super().forward(x)
            return y, y * 2, "tag"

    m = Two(4, 4)
    x = torch.randn(2, 4)
    with qh.quantized(m, qh.QuantConfig(output="e2m1")):
        a, b, tag = m(x, flag=False)
    y = F.linear(x, m.weight, m.bias)
    # the first tensor is the layer's result; the rest are side outputs, left alone
    assert torch.equal(a, get("e2m1")(y)) and torch.equal(b, y * 2) and tag == "tag"


def test_stats_off_by_default_and_on_when_asked():
    model, x = _models()["mlp"]
    with qh.quantized(model, CFG) as qs:
        model(x)
    assert all(p.stats is None for p in qs.points.values())
    assert all(r["sqnr_db"] is None for r in qs.stats())
    with qh.quantized(model, CFG, stats=True) as qs:
        model(x)
        model(x)
    rows = {(r["module"], r["point"]): r for r in qs.stats()}
    r = rows[("0", "input")]
    assert r["calls"] == 2 and r["numel"] == 2 * x.numel() and r["format"] == "int8"
    q = get("int8")(x)
    sqnr = 10 * torch.log10((x.double() ** 2).sum() / ((x - q).double() ** 2).sum())
    assert r["sqnr_db"] == pytest.approx(float(sqnr), rel=1e-9)
    assert r["saturated"] == 0.0
    assert r["flushed"] == pytest.approx(float(((x != 0) & (q == 0)).sum()) / x.numel())


def test_stats_saturation_of_a_known_tensor():
    m = nn.Identity()
    x = torch.tensor([0.001, 1.0, 500.0, -1000.0, 2.0**-12, 0.0])
    cfg = qh.QuantConfig(rules=[qh.Rule(types=nn.Identity, input="e4m3")])
    with qh.quantized(m, cfg, stats=True) as qs:
        y = m(x)
    assert torch.equal(y, torch.tensor([2.0**-9, 1.0, 448.0, -448.0, 0.0, 0.0]))  # 2^-9: smallest subnormal
    (row,) = qs.stats()
    assert row["saturated"] == pytest.approx(2 / 6)
    assert row["flushed"] == pytest.approx(1 / 6)  # 2^-12 is below half the smallest subnormal
    assert row["amax"] == 1000.0


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_half_precision_models(dtype):
    m = mlp().to(dtype).eval()
    x = torch.randn(4, 16, dtype=dtype)
    snap = snapshot(m)
    with qh.quantized(m, qh.QuantConfig(input="e4m3", weight="int8", output="bf16")):
        y = m(x)
    assert y.dtype == dtype and torch.isfinite(y).all()
    verify_unchanged(m, snap)


def test_no_active_points_attaches_nothing():
    model, x = _models()["mlp"]
    plain = model(x)
    with qh.quantized(model, qh.QuantConfig()) as qs:
        assert qs.points == {}
        # nothing to quantize: no hook anywhere (the interception's mode is entered by a pre-hook on the model)
        assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
        y = model(x)
    assert torch.equal(y, plain)
    summary = qs.coverage().summary
    # the accounting is part of the interception, so it saw nothing: 0 GEMMs, none against the config
    assert (summary.gemms, summary.simulated, summary.against_config) == (0, 0, 0)
    assert "nothing was configured" in coverage_line(summary)  # not "the model ran no GEMM": it ran two


def test_a_weight_used_only_functionally_is_quantized_although_no_point_exists_at_attach():
    # a bare 2-D parameter that only F.linear uses: its point is made when the interception sees the GEMM, so
    # "no points yet" must not mean "nothing to attach" (it once did: the weight then ran at full precision)
    class Bare(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.randn(8, 8))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.linear(x, self.w)

    model, x = Bare(), torch.randn(3, 8)
    int4 = qh.formats.get("int4")
    with torch.no_grad():
        want = F.linear(x, int4(model.w))
        with qh.quantized(model, weight=int4) as qs:
            assert qs.points == {}  # none at attach
            y = model(x)
    assert torch.equal(y, want) and not torch.equal(y, F.linear(x, model.w))
    (row,) = qs.coverage().rows  # the weight covered by its point; the input, as configured, not
    assert [(o["role"], o["point"] is not None) for o in row["operands"]] == [("activation", False), ("weight", True)]
    assert not row["against_config"]


def test_quantized_accepts_keyword_config_and_rejects_both():
    model, x = _models()["mlp"]
    with qh.quantized(model, weight="int8") as qs:
        model(x)
    assert {k[1] for k in qs.points} == {"weight"}
    with pytest.raises(TypeError, match="either a QuantConfig"):
        qh.quantized(model, CFG, weight="int8")


def test_torch_compile_of_attached_model_matches_eager():
    """Inductor may order the GEMM's sums differently, so agreement is to a few fp32 ulps,
    far below the quantization effect itself (checked against the full-precision model)."""
    torch._dynamo.reset()
    model = mlp().eval()
    x = torch.randn(4, 16)
    with torch.no_grad():
        full = model(x)
        with qh.quantized(model, qh.QuantConfig(input="e4m3", weight="e4m3", output="fp16")):
            eager = model(x)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                compiled = torch.compile(model)(x)
    diff = (eager - compiled).abs().max().item()
    assert diff <= 1e-3
    assert (eager - full).abs().max().item() > 20 * max(diff, 1e-4)
    torch._dynamo.reset()
