"""The inference fast paths (reused quantized results, the cheaper decomposed attention) on real model code:
every zoo model and implementation gives the same bits with them as without them."""

from __future__ import annotations

import pytest
import torch

import qsim_hooks as qh
from qsim_hooks import reuse

from .zoo import CASES, outputs

pytest.importorskip("transformers")
pytest.importorskip("diffusers")

CFG = qh.QuantConfig(input="e4m3", weight="e4m3", output="e4m3")  # every layer and the six attention points


def _run(case, model, on: bool) -> list[torch.Tensor]:
    reuse.set_enabled(on)
    try:
        with torch.no_grad(), qh.quantized(model, CFG):
            return outputs(model(**case.inputs()))
    finally:
        reuse.set_enabled(True)


@pytest.mark.parametrize("name,impl", [(n, i) for n, c in CASES.items() for i in c.impls])
def test_zoo_outputs_bit_identical_with_and_without_reuse(name, impl):
    case = CASES[name]
    model = case.build(impl)
    slow, fast = _run(case, model, False), _run(case, model, True)
    assert len(slow) == len(fast) > 0
    for a, b in zip(slow, fast):
        assert torch.equal(a.view(torch.int32) if a.dtype == torch.float32 else a,
                           b.view(torch.int32) if b.dtype == torch.float32 else b)
