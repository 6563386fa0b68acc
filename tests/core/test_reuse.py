"""Reused quantized results (qsim_hooks.reuse): the same bits as quantizing again, never a stale result."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import qsim_hooks as qh
from qsim_hooks import reuse
from qsim_hooks.formats import FloatFormat, kernels, registry
from qsim_hooks.planning import PlanEntry
from qsim_hooks.points import QuantPoint

E4M3 = registry.get("e4m3")


def _point(fmt, name="m") -> QuantPoint:
    return QuantPoint(PlanEntry(name, "Linear", "input", "input", fmt, None, "test"))


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(torch.int32)


@pytest.fixture
def counted(monkeypatch):
    """How many times a format kernel actually ran."""
    calls = []
    real = QuantPoint._quantize

    def spy(self, fmt, x, amax):
        calls.append(x.numel())
        return real(self, fmt, x, amax)

    monkeypatch.setattr(QuantPoint, "_quantize", spy)
    return calls


def _run(model, x, cfg, on: bool):
    reuse.set_enabled(on)
    try:
        with torch.no_grad(), qh.quantized(model, cfg):
            return model(*x) if isinstance(x, tuple) else model(x)
    finally:
        reuse.set_enabled(True)


class _Block(nn.Module):
    """A ResNet bottleneck's shape: one input to the main conv and to the downsample conv, then a residual."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(4, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 1)
        self.down = nn.Conv2d(4, 8, 1)
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        y = self.conv2(torch.relu(self.conv1(x))) + self.down(x)
        return self.fc(y.mean((2, 3)))


class SelfAttention(nn.Module):  # the name makes it an attention module
    """q/k/v Linears on one input, SDPA (decomposed by the attention scope), an output Linear."""

    def __init__(self, d=16, h=2) -> None:
        super().__init__()
        self.h = h
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))

    def forward(self, x):
        b, s, d = x.shape
        split = lambda t: t.view(b, s, self.h, d // self.h).transpose(1, 2)  # noqa: E731
        ctx = F.scaled_dot_product_attention(split(self.q(x)), split(self.k(x)), split(self.v(x)))
        return self.o(ctx.transpose(1, 2).reshape(b, s, d))


def _models():
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(16, 2, batch_first=True).eval()
    return {
        "block": (_Block().eval(), torch.randn(2, 4, 6, 6)),
        "sdpa": (nn.Sequential(SelfAttention(), nn.LayerNorm(16), SelfAttention()).eval(), torch.randn(2, 5, 16)),
        "mha": (mha, (torch.randn(2, 5, 16),) * 3),
    }


CONFIGS = {
    "e4m3": qh.QuantConfig(input="e4m3", weight="e4m3", output="e4m3"),
    "int8": qh.QuantConfig(input="int8", weight="int8", output="int8"),
    "e4m3-e5m2-qkv": qh.QuantConfig(input="e4m3", weight="e4m3", output="e4m3",
                                     rules=[qh.Rule(q="e5m2", k="e5m2", v="e5m2")]),
}


@pytest.mark.parametrize("cfg", list(CONFIGS))
@pytest.mark.parametrize("name", ["block", "sdpa", "mha"])
def test_model_outputs_are_bit_identical_with_and_without_reuse(name, cfg, counted):
    model, x = _models()[name]
    slow = _run(model, x, CONFIGS[cfg], False)
    n_slow = len(counted)
    counted.clear()
    fast = _run(model, x, CONFIGS[cfg], True)
    slow, fast = (t[0] if isinstance(t, tuple) else t for t in (slow, fast))
    assert torch.equal(_bits(fast), _bits(slow))
    if (name, cfg) != ("mha", "int8"):  # MHA's packed projection has one input point: nothing to share
        assert len(counted) < n_slow, "reuse never happened: the comparison would prove nothing"


def test_shared_input_is_quantized_once_and_a_grid_tensor_not_again(counted):
    model, x = _models()["sdpa"]
    with torch.no_grad(), qh.quantized(model, CONFIGS["e4m3"]) as qs:
        model(x)
    # per attention block: q/k/v inputs share one kernel run; q, k, v are their Linears' e4m3 outputs and the
    # output Linear's input is the e4m3 context: those points run no kernel at all
    attn = [k for k in qs.points if k[1] in ("q", "k", "v")]
    assert len(attn) == 6 and all(qs.points[k].fired == 1 for k in attn)
    # per block: 4 weights, 4 outputs, one run for the shared q/k/v input, scores, probs, context (q, k, v
    # are their Linears' e4m3 outputs, the output Linear's input is the e4m3 context reshaped: no run);
    # without reuse 4 + 4 + 4 inputs + 6 attention points
    assert len(counted) == 2 * (4 + 4 + 1 + 3)


@pytest.mark.parametrize("name", sorted(n for n in registry.names() if isinstance(registry.get(n), FloatFormat)
                                        and registry.get(n).scaling is None))
def test_an_unscaled_cast_leaves_its_own_results_unchanged(name):
    """What the grid rule rests on: q(q(x)) == q(x) bit for bit, specials and subnormals included."""
    fmt = registry.get(name)
    if fmt.rounding.value == "stochastic":
        pytest.skip("stochastic rounding is never reused")
    torch.manual_seed(1)
    x = torch.cat([torch.randn(4096) * s for s in (1e-6, 1e-2, 1.0, 1e2, 1e5)])
    x = torch.cat([x, torch.tensor([0.0, -0.0, float("inf"), float("-inf"), float("nan"), 3e38, -3e38, 1e-40])])
    y = fmt(x)
    assert torch.equal(_bits(fmt(y)), _bits(y))


def test_a_write_into_the_source_makes_the_result_miss():
    a, b = _point(E4M3, "a"), _point(E4M3, "b")
    x = torch.randn(64, 64)
    with torch.no_grad():
        y1 = a(x, reuse_ok=True)
        assert b(x, reuse_ok=True) is y1  # the same tensor, the same format: the same result
        x.mul_(3.0)
        y2 = b(x, reuse_ok=True)
        assert y2 is not y1 and torch.equal(y2, E4M3(x))
        x[0, 0] = 1e3  # a write through indexing
        y3 = a(x, reuse_ok=True)
    assert y3 is not y2 and torch.equal(y3, E4M3(x))
    with torch.no_grad():
        y3.add_(1.0)  # a consumer that wrote into the result after all
        y4 = b(x, reuse_ok=True)
    assert y4 is not y3 and torch.equal(y4, E4M3(x))


def test_a_write_into_a_grid_tensor_or_its_view_makes_it_quantized_again():
    a, b = _point(E4M3, "a"), _point(E4M3, "b")
    with torch.no_grad():
        y = a(torch.randn(32, 32))
        assert b(y.t(), reuse_ok=True).data_ptr() != y.data_ptr()  # a transposed view: laid out contiguous
        assert torch.equal(b(y.t(), reuse_ok=True), y.t())
        y[:4].mul_(1.1)  # a view's write bumps the shared version counter
        got = b(y, reuse_ok=True)
    assert got is not y and torch.equal(got, E4M3(y))


def test_nothing_is_reused_where_the_caller_does_not_allow_it_or_autograd_records():
    a, b = _point(E4M3, "a"), _point(E4M3, "b")
    x = torch.randn(16, 16)
    with torch.no_grad():
        y = a(x, reuse_ok=True)
        assert b(x) is not y  # an output or weight point's consumer may write into its result
    w = torch.randn(16, 16, requires_grad=True)
    y1, y2 = a(w, reuse_ok=True), b(w, reuse_ok=True)
    assert y1 is not y2 and y2.grad_fn is not None
    assert torch.equal(y1, y2)


def test_stochastic_rounding_and_static_scales_are_never_reused():
    sr = FloatFormat(4, 3, rounding="stochastic")
    a, b = _point(sr, "a"), _point(sr, "b")
    x = torch.randn(256)
    with torch.no_grad():
        assert b(x, reuse_ok=True) is not a(x, reuse_ok=True)
        s1, s2 = _point(registry.get("int8"), "s1"), _point(registry.get("int8"), "s2")
        s1.set_amax(1.0)
        s2.set_amax(4.0)
        q1, q2 = s1(x, reuse_ok=True), s2(x, reuse_ok=True)
    assert not torch.equal(q1, q2)  # each its own static scale


class _WritesItsInput(nn.Linear):
    def forward(self, x):
        return super().forward(x.mul_(2.0))  # a subclass whose forward writes into what it is given


class _Fork(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = _WritesItsInput(8, 8)
        self.b = nn.Linear(8, 8)
        self.c = _WritesItsInput(8, 8)

    def forward(self, x):
        return self.a(x) + self.b(x) + self.c(x)


def test_a_layer_subclass_that_writes_into_its_input_gets_its_own_copy():
    torch.manual_seed(0)
    model, x = _Fork().eval(), torch.randn(4, 8)
    cfg = qh.QuantConfig(input="e4m3", weight="e4m3", output=None)
    assert torch.equal(_run(model, x, cfg, True), _run(model, x, cfg, False))


def test_nothing_known_outlives_a_forward_even_a_write_no_version_counter_sees():
    torch.manual_seed(0)
    model, x = _Block().eval(), torch.randn(2, 4, 6, 6)
    cfg = CONFIGS["e4m3"]
    with torch.no_grad(), qh.quantized(model, cfg):
        model(x)
        x.data.mul_(-2.0)  # ``.data`` writes bump no version counter
        got = model(x)
    assert torch.equal(got, _run(model, x, cfg, False))
    assert not reuse._sources and not reuse._fixed  # the session's detach dropped everything


def test_threads_running_the_model_at_once_get_the_bits_of_one_thread():
    import threading

    torch.manual_seed(0)
    model = nn.Sequential(SelfAttention(), nn.LayerNorm(16), SelfAttention()).eval()
    xs = [torch.randn(2, 5, 16) for _ in range(4)]
    want = [_run(model, x, CONFIGS["e4m3"], False) for x in xs]
    got: dict[int, torch.Tensor] = {}
    with torch.no_grad(), qh.quantized(model, CONFIGS["e4m3"]):
        def work(i):
            for _ in range(3):
                got[i] = model(xs[i])
        threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert all(torch.equal(got[i], want[i]) for i in range(4))


def test_inference_mode_tensors_have_no_version_counter_so_nothing_is_reused(counted):
    model, x = _models()["sdpa"]
    want = _run(model, x, CONFIGS["e4m3"], False)
    n = len(counted)
    counted.clear()
    with torch.inference_mode(), qh.quantized(model, CONFIGS["e4m3"]):
        got = model(x)
    assert torch.equal(got, want) and len(counted) == n


@pytest.mark.parametrize("backend", ["eager", "compiled"])
@pytest.mark.parametrize("name", ["e4m3", "fp16", "bf16", "fp32", "e5m2"])
def test_a_grid_tensor_is_given_back_in_the_layout_the_cast_gives(name, backend):
    """A GEMM's rounding depends on its operands' strides: a reused result must be laid out exactly as
    the format's own result (float32's grid keeps a transposed tensor transposed, the kernels do not)."""
    fmt = registry.get(name)
    a, b = _point(fmt, "a"), _point(fmt, "b")
    old = kernels.get_backend()
    kernels.set_backend(backend)
    try:
        with torch.no_grad():
            y = a(torch.randn(2, 4, 8, 8))
            views = [y.transpose(-1, -2), y.permute(0, 2, 1, 3), y[:, :1].expand(2, 4, 8, 8), y[..., ::2],
                     y.contiguous(memory_format=torch.channels_last)]
            for v in views:
                got, want = b(v, reuse_ok=True), fmt(v)
                assert got.stride() == want.stride() and torch.equal(got, want), (v.stride(), got.stride())
    finally:
        kernels.set_backend(old)
