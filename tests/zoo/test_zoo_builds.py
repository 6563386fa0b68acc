"""Every builder of the zoo builds and runs plainly (this keeps the zoo from rotting).

No qsim-hooks here: the coverage matrix over these cases is written with the fix of issue 11
(``tools/coverage_survey.py`` shows what it will check). Per case and implementation: the model
builds in eval mode, its declared attention classes are in it, a forward gives finite outputs and
the same ones twice (fixed seeds, no dropout), two builds have the same weights, and ``generate``
(where the case has one) adds three tokens with a KV cache.
"""

from __future__ import annotations

import pytest
import torch

from tests.zoo import CASES, impl_cases, outputs

pytest.importorskip("transformers")
pytest.importorskip("diffusers")


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny models: one thread (two spend most of their time waking the other on this shared machine)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_every_case_declares_consistent_implementations():
    assert len(CASES) >= 40
    for c in CASES.values():
        assert c.impls and len(set(c.impls)) == len(c.impls), c.name
        assert set(c.exact) <= set(c.impls), c.name
        assert c.attention, c.name
        assert c.library in ("transformers", "torchvision", "diffusers"), c.name


@pytest.mark.parametrize("name,impl", impl_cases(), ids=[f"{n}-{i}" for n, i in impl_cases()])
def test_builds_and_runs(name, impl):
    case = CASES[name]
    m = case.build(impl)
    assert not m.training and not any(x.training for x in m.modules())
    classes = {type(x).__name__ for x in m.modules()}
    assert case.attention <= classes, f"attention classes {sorted(case.attention - classes)} not in the model"
    first = outputs(case.run(m))
    assert first and all(torch.isfinite(t).all() for t in first)
    again = outputs(case.run(m))
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    if case.generate is not None:
        ids = case.generate(m)
        prompt = case.inputs().get("decoder_input_ids") is None
        # decoder-only: 6 prompt tokens + 3; encoder-decoder: decoder start token + 3
        assert ids.shape == ((2, 9) if prompt else (2, 4)), ids.shape


@pytest.mark.parametrize("name", ["llama", "mixtral", "tv_swin_t", "dit"])
def test_builds_are_seeded(name):
    case = CASES[name]
    impl = case.impls[0]
    a, b = case.build(impl).state_dict(), case.build(impl).state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
