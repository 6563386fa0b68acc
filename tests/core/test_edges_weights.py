"""Issue 12: weights a session cannot, or can only carefully, instrument, and what a user does to them inside.

* a plain checkpoint (``fc.weight``, not ``fc.parametrizations.weight.original``) loads inside a session;
* ``copy.deepcopy`` of an instrumented model is refused with the module's name, and the original is
  untouched (a copy would share torch's parametrized class and break when the session exits);
* the hook-based ``torch.nn.utils.weight_norm`` and ``torch.nn.utils.prune`` are refused at attach with
  the module's path and the cause (their weight is a plain attribute recomputed before every call);
  the parametrization-based ``weight_norm`` is quantized as the normalized weight;
* complex weights and complex inputs raise ``TypeError`` naming the point (they used to stay in full
  precision, silently);
* a meta-device model plans, attaches and runs (shapes only: formats pass meta tensors through), with
  statistics that record calls and no data.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrizations, prune

import qsim_hooks as qh
from qsim_hooks.formats import get

from .model_check import snapshot, verify_unchanged

FMT = "int4"


def _mlp(seed: int = 1) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8)).eval()


def _reference(model: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """The mlp with int4 weights, by hand."""
    q = get(FMT)
    h = F.relu(F.linear(x, q(model[0].weight), model[0].bias))
    return F.linear(h, q(model[2].weight), model[2].bias)


# ---------------------------------------------------------------------------
# load_state_dict inside a session
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("strict", [True, False])
def test_a_plain_checkpoint_loads_inside_a_session(strict):
    model, other = _mlp(1), _mlp(2)
    ckpt = other.state_dict()
    keys_before = list(ckpt)
    ids = [id(p) for p in model.parameters()]
    x = torch.randn(4, 16)
    with torch.no_grad(), qh.quantized(model, weight=FMT):
        result = model.load_state_dict(ckpt, strict=strict)
        assert list(result.missing_keys) == [] and list(result.unexpected_keys) == []
        assert torch.equal(model(x), _reference(other, x))
    assert list(ckpt) == keys_before  # the user's dict is not touched
    assert [id(p) for p in model.parameters()] == ids
    for a, b in zip(model.state_dict().values(), ckpt.values()):
        assert torch.equal(a, b)
    assert all(not m._load_state_dict_pre_hooks for m in model.modules())  # the key mapping is gone too


def test_a_checkpoint_saved_inside_a_session_loads_there_and_a_wrong_one_still_fails():
    model, other = _mlp(1), _mlp(2)
    x = torch.randn(4, 16)
    with torch.no_grad():
        with qh.quantized(other, weight=FMT):
            inside = other.state_dict()  # parametrized keys
        with qh.quantized(model, weight=FMT):
            model.load_state_dict(inside)
            assert torch.equal(model(x), _reference(other, x))
            bad = dict(other.state_dict())
            bad["0.weight"] = torch.zeros(3, 3)
            with pytest.raises(RuntimeError, match="size mismatch"):
                model.load_state_dict(bad)


def test_a_module_parametrized_by_the_user_keeps_its_own_keys():
    """Only the modules the session parametrized map the plain key: a user's parametrization already had
    ``parametrizations.weight.original`` in its checkpoints."""
    model = _mlp(1)
    parametrizations.orthogonal(model[2])
    ckpt = copy.deepcopy(model.state_dict())
    with torch.no_grad(), qh.quantized(model, weight=FMT):
        model.load_state_dict(ckpt)
    assert set(model.state_dict()) == set(ckpt)


# ---------------------------------------------------------------------------
# deepcopy
# ---------------------------------------------------------------------------
def test_deepcopy_inside_a_session_is_refused_and_the_model_keeps_working():
    model = _mlp(1)
    snap = snapshot(model)
    x = torch.randn(4, 16)
    with torch.no_grad(), qh.quantized(model, input="e4m3", weight=FMT):
        y = model(x)
        with pytest.raises(RuntimeError, match=r"deepcopy: module '0' is instrumented.*before attaching"):
            copy.deepcopy(model)
        with pytest.raises(RuntimeError, match=r"deepcopy: module '2'"):
            copy.deepcopy(model[2])
        assert torch.equal(model(x), y)  # the refused copy changed nothing
    verify_unchanged(model, snap)
    twin = copy.deepcopy(model)  # after the block: an ordinary copy
    assert torch.equal(twin(x), model(x))
    with torch.no_grad(), qh.quantized(twin, input="e4m3", weight=FMT):
        assert torch.equal(twin(x), y)
    with torch.no_grad():
        assert torch.equal(twin(x), model(x))


# ---------------------------------------------------------------------------
# weight_norm, prune
# ---------------------------------------------------------------------------
def test_hook_based_weight_norm_is_refused_by_path_and_cause():
    model = _mlp(1)
    with pytest.warns(FutureWarning):
        torch.nn.utils.weight_norm(model[2])
    snap = snapshot(model)
    with pytest.raises(ValueError, match=r"^2\.weight: .*hook-based torch\.nn\.utils\.weight_norm.*"
                                         r"parametrizations\.weight_norm"):
        qh.attach(model, weight=FMT)
    verify_unchanged(model, snap)  # the first layer's parametrization was rolled back


def test_prune_is_refused_by_path_and_cause_and_works_once_made_permanent():
    model = _mlp(1)
    prune.l1_unstructured(model[0], "weight", amount=0.5)
    snap = snapshot(model)
    with pytest.raises(ValueError, match=r"^0\.weight: .*torch\.nn\.utils\.prune.*prune\.remove"):
        qh.attach(model, weight=FMT)
    verify_unchanged(model, snap)
    prune.remove(model[0], "weight")
    x = torch.randn(4, 16)
    with torch.no_grad(), qh.quantized(model, weight=FMT):
        assert torch.equal(model(x), _reference(model, x))


def test_parametrization_based_weight_norm_is_quantized_as_the_normalized_weight():
    model = _mlp(1)
    parametrizations.weight_norm(model[0])
    x = torch.randn(4, 16)
    with torch.no_grad():
        w = model[0].weight.clone()  # g * v / |v|
        want = F.linear(F.relu(F.linear(x, get(FMT)(w), model[0].bias)), get(FMT)(model[2].weight), model[2].bias)
        with qh.quantized(model, weight=FMT):
            assert torch.equal(model(x), want)
        assert torch.equal(model[0].weight, w)  # the user's parametrization is still there


# ---------------------------------------------------------------------------
# complex
# ---------------------------------------------------------------------------
@pytest.mark.filterwarnings("ignore:Complex modules are a new feature")
def test_a_complex_weight_is_refused_at_attach():
    model = _mlp(1)
    model[2].to(torch.complex64)
    snap = snapshot(model)
    with pytest.raises(TypeError, match=r"^2\.weight: the weight is complex \(torch\.complex64\)"):
        qh.attach(model, weight=FMT)
    verify_unchanged(model, snap)


@pytest.mark.filterwarnings("ignore:Complex modules are a new feature")
def test_a_complex_input_raises_naming_the_first_point():
    class Spectral(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.pre = nn.Linear(8, 8)
            self.mix = nn.Linear(8, 8).to(torch.complex64)

        def forward(self, x):
            h = torch.fft.fft(self.pre(x))
            return self.mix(h).abs()

    m = Spectral()
    x = torch.randn(2, 8)
    with qh.quantized(m, input="int8", rules=[qh.Rule(match="mix", weight=None)]):
        with pytest.raises(TypeError, match=r"mix\[input\] was given a complex tensor \(torch\.complex64"):
            m(x)
    m(x)  # detached: runs in full precision again
    with qh.quantized(m, input="int8", rules=[qh.Rule(match="mix", enabled=False)]):
        m(x)  # the advice in the message works


# ---------------------------------------------------------------------------
# meta
# ---------------------------------------------------------------------------
def test_a_meta_model_plans_attaches_and_runs_shapes_with_empty_stats():
    with torch.device("meta"):
        model = _mlp(1)
    cfg = qh.QuantConfig(input="int8", weight="e2m1", output="fp16")
    assert len(qh.plan(model, cfg).active()) == 6
    x = torch.empty(3, 16, device="meta")
    for grad in (False, True):
        with torch.set_grad_enabled(grad), qh.quantized(model, cfg, stats=True) as qs:
            y = model(x)
        assert y.is_meta and y.shape == (3, 8)
        rows = qs.stats()
        assert {r["calls"] for r in rows} == {1} and {r["numel"] for r in rows} == {0}
