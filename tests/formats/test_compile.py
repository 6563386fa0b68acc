"""Formats under torch.compile: a user's compile of code that calls formats, and our fused kernels.

Inductor drops an ``x.to(float16).to(float32)`` round trip (its
``emulate_precision_casts`` is off by default), so a native-cast shortcut would
silently stop quantizing once compiled; and a format used for the first time
inside a traced region must not write state its guards read ("Guard failed on
the same frame it was created"). Compiled results are compared with eager ones
bit for bit.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from qsim_hooks import formats
from qsim_hooks.formats import BF16, E4M3, E5M2, FP16, FloatFormat, IntFormat, kernels
from qsim_hooks.formats.block import mx

from ._reference import assert_same_bits, random_f32

NATIVE = {"fp16": (FP16, torch.float16), "bf16": (BF16, torch.bfloat16), "e4m3": (E4M3, torch.float8_e4m3fn),
          "e5m2": (E5M2, torch.float8_e5m2)}


@pytest.mark.parametrize("name", list(NATIVE))
def test_native_cast_formats_survive_a_users_compile(name: str) -> None:
    fmt, dtype = NATIVE[name]
    x = torch.randn(257, 33) * 7
    fn = torch.compile(lambda t: fmt(t * 1.5) - t, fullgraph=True)  # the cast sits inside fused arithmetic
    got = fn(x)
    want = (x * 1.5).clamp(-fmt.max, fmt.max).to(dtype).float() - x  # PyTorch's own cast, eager
    assert_same_bits(got, want, inputs=x, what=f"{name} compiled")
    assert not torch.equal(got, x * 1.5 - x), "quantization happened"


class _MLP(torch.nn.Module):
    """A 2-layer MLP whose forward applies fp16 / bf16 / e4m3 / e5m2 formats to inputs, weights and outputs."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = torch.nn.Linear(32, 64)
        self.fc2 = torch.nn.Linear(64, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.linear(E4M3(x), BF16(self.fc1.weight), self.fc1.bias)
        h = FP16(torch.relu(h))
        y = F.linear(E5M2(h), FP16(self.fc2.weight), self.fc2.bias)
        return BF16(y)


def test_compiled_mlp_equals_eager() -> None:
    torch.manual_seed(0)
    model = _MLP().eval()
    x = torch.randn(8, 32) * 3
    with torch.no_grad():
        eager = model(x)
        compiled = torch.compile(model)(x)
        plain = torch.nn.Sequential(model.fc1, torch.nn.ReLU(), model.fc2)(x)
    # bit-identical: on CPU inductor runs the two GEMMs through the same ATen kernels as eager,
    # and every format in between is exact arithmetic (no reduction-order freedom is used)
    assert_same_bits(compiled, eager, what="compiled MLP vs eager")
    assert (compiled - plain).abs().max() > 1e-3, "the formats changed the result (not compiled away)"


def test_first_use_of_a_format_inside_a_traced_region() -> None:
    # fresh format objects: their kernel constants are first needed while dynamo traces
    fmts = [FloatFormat(3, 4), FloatFormat(8, 10), FloatFormat(2, 1, specials="none"), IntFormat(8), mx("e2m1")]

    def apply(t: torch.Tensor) -> torch.Tensor:
        for f in fmts:
            t = f(t) * 1.25
        return t

    x = torch.randn(4, 64) * 5
    got = torch.compile(apply, fullgraph=False)(x)
    assert_same_bits(got, apply(x), inputs=x, what="compiled e3m4/tf32/e2m1/int8/mxfp4")
    assert_same_bits(torch.compile(apply, fullgraph=False)(x * 2), apply(x * 2), what="second call")


@pytest.mark.usefixtures("eager_kernels")
def test_fused_kernels_equal_eager_for_every_named_format() -> None:
    x = torch.cat([random_f32(4_000, seed=40, finite=True), torch.randn(4_000) * 30,
                   torch.tensor([0.0, -0.0, 65504.0, -65504.0, 3.4028234663852886e38, 1e-40, 448.0, 464.0])])
    wide = torch.cat([x, torch.zeros(8192 - x.numel())]).reshape(64, 128)  # every exponent, fp32's edges
    normal = torch.randn(64, 128) * torch.logspace(-2, 2, 128)  # what a layer sees
    eager = {(n, i): formats.get(n)(t) for n in formats.names() for i, t in enumerate((wide, normal))}
    kernels.set_backend("compiled")
    for (n, i), want in eager.items():
        t = (wide, normal)[i]
        assert_same_bits(formats.get(n)(t), want, inputs=t, what=f"{n} fused vs eager (input {i})")
    assert not kernels._compile_failed, "torch.compile fell back to eager: nothing was compared"


def test_half_precision_inputs_under_a_users_compile() -> None:
    # the cast back to the input dtype is exact under compile too (inductor may keep the fp32 value)
    x = torch.cat([torch.tensor([65504.0, -65504.0, 6e-8, 1e-5]), torch.randn(60) * 300]).to(torch.float16)
    fmts = (BF16, formats.get("tf32"), E4M3, formats.get("int8"), formats.get("mxfp4"))

    def apply(t: torch.Tensor) -> list[torch.Tensor]:
        return [f(t) * 2 for f in fmts]

    for fmt, got, want in zip(fmts, torch.compile(apply, fullgraph=True)(x), apply(x), strict=True):
        assert want.dtype == torch.float16 and torch.isfinite(fmt(x)).all()
        assert_same_bits(got, want, inputs=x, what=f"{fmt.name} on fp16, compiled")
