"""A point writing a plain cast into a tensor its caller gave up (``own=True``): the bits of the copy, only
where nothing can see the difference (no autograd, no statistics or observer, after the first call's checks)."""

from __future__ import annotations

import pytest
import torch

from qsim_hooks.formats import FloatFormat, Scaling, kernels, registry
from qsim_hooks.planning import PlanEntry
from qsim_hooks.points import QuantPoint

pytestmark = pytest.mark.usefixtures("eager_kernels")  # restores the backend each test switches
E4M3 = registry.get("e4m3")


def _point(fmt, **kw) -> QuantPoint:
    return QuantPoint(PlanEntry("m", "Linear", "output", "output", fmt, None, "test"), **kw)


def _x(seed: int = 0) -> torch.Tensor:
    return torch.randn(64, 96, generator=torch.Generator().manual_seed(seed)) * 50


def _into(point: QuantPoint, x: torch.Tensor, **kw) -> tuple[torch.Tensor, bool]:
    """(the point's result for ``x`` given up, whether it was written into ``x``), and the bits checked."""
    want = point.format(x)
    given = x.clone().requires_grad_(x.requires_grad)
    with torch.no_grad() if not x.requires_grad else torch.enable_grad():
        got = point(given, own=True, **kw)
    assert torch.equal(got.detach().view(torch.int32), want.detach().view(torch.int32))
    return got, got.data_ptr() == given.data_ptr()


def test_a_plain_cast_is_written_into_what_the_caller_gave_up_after_the_first_call():
    kernels.set_backend("compiled")
    p = _point(E4M3)
    assert _into(p, _x(1))[1] is False  # the first call's flush check compares input and result
    assert _into(p, _x(2))[1] is True
    with torch.no_grad():
        x = _x(3)
        assert p(x.clone()).data_ptr() != x.data_ptr()  # own=False: never
    assert not kernels._compile_failed


def test_nothing_is_written_into_where_the_input_could_still_be_seen_or_is_not_a_plain_cast():
    kernels.set_backend("compiled")
    plain = _point(E4M3)
    _into(plain, _x())
    assert _into(plain, _x().requires_grad_())[1] is False  # autograd records it
    stats = _point(E4M3, stats=True)
    _into(stats, _x())
    assert _into(stats, _x())[1] is False  # statistics compare input and result
    seen = []
    observed = _point(E4M3)
    _into(observed, _x())
    observed.observer = seen.append
    assert _into(observed, _x())[1] is False and len(seen) == 1
    scaled = _point(FloatFormat(4, 3, specials="fn", scaling=Scaling("tensor")))
    _into(scaled, _x())
    assert _into(scaled, _x())[1] is False
    half = _point(E4M3)
    _into(half, _x())
    assert _into(half, _x().half())[1] is False  # a cast back to fp16 after the kernel


def test_eager_kernels_give_a_new_tensor():
    kernels.set_backend("eager")
    p = _point(E4M3)
    _into(p, _x())
    assert _into(p, _x())[1] is False


# -- the output of PyTorch's own Conv/Linear layers, written into where nothing else holds it ----------------
def _net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                               torch.nn.Linear(8 * 14 * 14, 10)).eval()


def _run(net: torch.nn.Module, x: torch.Tensor, calls: list | None = None, monkeypatch=None) -> torch.Tensor:
    import qsim_hooks as qh
    from qsim_hooks import points

    if calls is not None:
        real = points.QuantPoint._into
        monkeypatch.setattr(points.QuantPoint, "_into",
                            lambda self, fmt, t: calls.append(self.key) or real(self, fmt, t))
    try:
        with torch.no_grad(), qh.quantized(net, qh.QuantConfig(input="e4m3", weight="e4m3", output="e4m3")):
            net(x)  # the first call's checks: copies
            return net(x)
    finally:
        if calls is not None:
            monkeypatch.undo()


def test_layer_outputs_are_written_into_when_nothing_else_holds_them(monkeypatch):
    from qsim_hooks import activations

    kernels.set_backend("compiled")
    net, x = _net(), torch.randn(2, 3, 16, 16)
    calls: list = []
    got = _run(net, x, calls, monkeypatch)
    assert {k[0] for k in calls if k[1] == "output"} == {"0", "3"}, calls  # the conv's and the linear's outputs
    monkeypatch.setattr(activations, "_fresh_holders", lambda view: None)  # never in place: the copies
    want = _run(net, x)
    assert torch.equal(got.view(torch.int32), want.view(torch.int32))
    assert not kernels._compile_failed


@pytest.mark.parametrize("keep", ["tensor", "view", "data", "numpy", "global"])
def test_a_layer_output_someone_kept_is_never_written_into(keep, monkeypatch):
    """An earlier hook (the module's or a global one) that kept the output, a view of it, its .data or a numpy
    view: the point gives a new tensor, and what was kept still holds the layer's unquantized values."""
    kernels.set_backend("compiled")
    net, x = _net(), torch.randn(2, 3, 16, 16)
    kept: list = []
    take = {"tensor": lambda o: o, "view": lambda o: o[0], "data": lambda o: o.data, "numpy": lambda o: o.numpy(),
            "global": lambda o: o}[keep]
    copies: list = []

    def hook(mod, args, out):
        if isinstance(mod, torch.nn.Conv2d):
            kept.append(take(out))
            copies.append(out.clone())

    if keep == "global":
        handle = torch.nn.modules.module.register_module_forward_hook(hook)
    else:
        handle = net[0].register_forward_hook(hook)
    calls: list = []
    try:
        _run(net, x, calls, monkeypatch)
    finally:
        handle.remove()
    assert ("0", "output", "output") not in calls
    assert ("3", "output", "output") in calls or keep == "global"  # the linear's output: nobody kept it
    got = torch.as_tensor(kept[-1])
    want = copies[-1][0] if keep == "view" else copies[-1]
    assert torch.equal(got, want), f"the kept {keep} was changed"
    assert not torch.equal(want, E4M3(want)), "the conv's output was on the e4m3 grid already: nothing was tested"


@pytest.mark.parametrize("keep", [None, "base", "output", "view of the base"])
def test_a_linear_of_a_3d_input_returns_a_view_written_into_only_when_nobody_holds_it_or_its_base(keep,
                                                                                                 monkeypatch):
    """F.linear of a 3-D input returns a view of a 2-D product: written into when the view and its base are
    held by nothing else (the probe measured that case too), never when a hook kept either."""
    import qsim_hooks as qh
    from qsim_hooks import points

    kernels.set_backend("compiled")
    torch.manual_seed(1)
    net = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.GELU(), torch.nn.Linear(32, 8)).eval()
    x = torch.randn(2, 5, 16)
    kept, copies, calls = [], [], []
    take = {"base": lambda o: o._base, "output": lambda o: o, "view of the base": lambda o: o._base[0]}

    def hook(mod, args, out):
        assert out._base is not None  # the case this test is about
        kept.append(take[keep](out))
        copies.append(out.clone())

    handle = net[0].register_forward_hook(hook) if keep else None
    real = points.QuantPoint._into
    monkeypatch.setattr(points.QuantPoint, "_into", lambda self, fmt, t: calls.append(self.key) or real(self, fmt, t))
    try:
        with torch.no_grad(), qh.quantized(net, qh.QuantConfig(input="e4m3", weight="e4m3", output="e4m3")):
            net(x)
            got = net(x)
    finally:
        if handle is not None:
            handle.remove()
    monkeypatch.undo()
    written = {k[0] for k in calls if k[1] == "output"}
    assert ("0" in written) is (keep is None) and "2" in written, calls
    if keep:
        want = copies[-1].reshape(-1, 32)[0] if keep == "view of the base" else copies[-1]
        assert torch.equal(kept[-1].reshape(want.shape) if keep == "base" else kept[-1], want)
    with torch.no_grad(), qh.quantized(net, qh.QuantConfig(input="e4m3", weight="e4m3", output="e4m3")):
        monkeypatch.setattr(points, "_castable_into", lambda fmt, t: False)  # the copies
        net(x)
        assert torch.equal(net(x).view(torch.int32), got.view(torch.int32))


def test_an_attached_model_compiles_in_one_graph_with_its_output_points():
    """The output hook counts references only outside a trace (dynamo cannot trace ``sys.getrefcount``: under
    ``fullgraph=True`` that was an error)."""
    import warnings

    import qsim_hooks as qh

    torch._dynamo.reset()
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 8)).eval()
    x = torch.randn(4, 16)
    with torch.no_grad(), qh.quantized(net, qh.QuantConfig(input="e4m3", weight="e4m3", output="e4m3")):
        net(x)
        eager = net(x)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            compiled = torch.compile(net, fullgraph=True)(x)
    assert torch.equal(compiled, eager)
    torch._dynamo.reset()
