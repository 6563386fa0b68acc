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
