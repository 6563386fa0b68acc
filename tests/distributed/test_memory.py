"""Under FSDP2 a layer's quantized weight exists only while FSDP has that layer unsharded.

The probe: every tensor a weight point returns is registered (weakly) by :mod:`qsim_hooks.marks`; the
live ones are the quantized weights that exist at that moment. Probed after each layer's forward (once
FSDP has resharded it: its hook runs before ours) and after the forward and backward of a QAT step:

* with qsim-hooks as it is, no quantized weight outlives its layer's forward: the GEMMs save how to
  recompute them, and backward recomputes each from the weight FSDP gathers again;
* with the quantized weights kept for backward (a caller's saved-tensor hooks: qsim-hooks then leaves the
  tensors alone) the probe counts them, one per layer whose input needs a gradient: the probe can fail;
* the recomputed run's losses and updated weights are bit-identical to the kept run's.

The per-rank peak memory ratio is measured by ``tools/bench_distributed.py`` (README, Distributed).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.distributed.fsdp import fully_shard

import qsim_hooks as qh
from qsim_hooks import marks
from qsim_hooks.distributed import _recomputable
from qsim_hooks.formats import CallableFormat, FloatFormat, IntFormat, as_format

from .common import LR, full
from .harness import result, scenario

LAYERS = ("0", "2", "4", "6")


def _model() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(*[m for _ in LAYERS for m in (nn.Linear(16, 16), nn.ReLU())])
    for name in LAYERS:
        fully_shard(model.get_submodule(name))
    return fully_shard(model)


def _live_quantized_weights() -> dict[str, int]:
    """Quantized weights alive now: point -> bytes (distinct storages holding data)."""
    out: dict[str, int] = {}
    seen: set[int] = set()
    for ref, point in list(marks._marks.values()):
        t = ref()
        if t is None or point.entry.point != "weight":
            continue
        st = t.untyped_storage()
        if st.nbytes() and st.data_ptr() not in seen:
            seen.add(st.data_ptr())
            out[point.describe()] = out.get(point.describe(), 0) + st.nbytes()
    return out


def _unsharded(model: nn.Module) -> set[str]:
    """The layers whose weight FSDP holds gathered now (its unsharded storage allocated)."""
    return {n for n in LAYERS
            if model.get_submodule(n)._get_fsdp_state()._fsdp_param_group.fsdp_params[0]
            .sharded_state.name == "UNSHARDED"}


def _step(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, probes: list) -> float:
    loss = model(x).pow(2).mean()
    probes.append(("after forward", _live_quantized_weights(), _unsharded(model)))
    loss.backward()
    probes.append(("after backward", _live_quantized_weights(), _unsharded(model)))
    opt.step()
    opt.zero_grad()
    return loss.item()


@scenario(2)
def live_quantized_weights(rank: int, world: int) -> dict:
    out: dict = {}
    x = torch.randn(4, 16, generator=torch.Generator().manual_seed(rank)).requires_grad_()
    for keep in (False, True):
        model = _model()
        opt = torch.optim.SGD(model.parameters(), lr=LR)
        probes: list = []
        losses = []
        with qh.quantized(model, weight="int8", input="int8"):
            for name in LAYERS:
                model.get_submodule(name).register_forward_hook(
                    lambda m, a, o, n=name, probes=probes, model=model: probes.append(
                        (f"after {n}", _live_quantized_weights(), _unsharded(model))))
            for _ in range(2):
                if keep:
                    with torch.autograd.graph.saved_tensors_hooks(lambda t: t, lambda t: t):
                        losses.append(_step(model, opt, x, probes))
                else:
                    losses.append(_step(model, opt, x, probes))
        out["kept" if keep else "recomputed"] = {
            "probes": probes, "losses": losses, "params": {n: full(p) for n, p in model.named_parameters()}}
    return out


def test_no_quantized_weight_outlives_its_layers_forward():
    for got in result(2, live_quantized_weights):
        probes = got["recomputed"]["probes"]
        assert len(probes) == 2 * (len(LAYERS) + 2)
        for where, live, unsharded in probes:
            assert live == {}, f"{where}: quantized weights alive: {live} (layers FSDP holds gathered: {unsharded})"


def test_kept_quantized_weights_are_seen_by_the_probe():
    for got in result(2, live_quantized_weights):
        where, live, unsharded = got["kept"]["probes"][len(LAYERS)]
        assert where == "after forward"
        # layer 0's input needs a gradient (x requires grad): every layer's GEMM saves its weight
        assert sorted(live) == [f"{n}.weight" for n in LAYERS] and set(live.values()) == {16 * 16 * 4}
        assert unsharded == set(), "FSDP reshards after forward: the kept copies are extra memory"


def test_recomputed_weights_give_the_kept_weights_bits():
    for got in result(2, live_quantized_weights):
        rec, kept = got["recomputed"], got["kept"]
        assert rec["losses"] == kept["losses"]
        for n, p in kept["params"].items():
            torch.testing.assert_close(rec["params"][n], p, rtol=0, atol=0)


def test_only_formats_that_give_the_same_bits_again_are_recomputed():
    for name in ("int8", "int4", "e4m3", "mxfp4", "nvfp4"):
        assert _recomputable(as_format(name)), name
    assert not _recomputable(FloatFormat(4, 3, rounding="stochastic"))
    assert not _recomputable(IntFormat(8, rounding="stochastic"))
    assert not _recomputable(CallableFormat(lambda t: t.round()))
    # and a stochastic format draws anew, so recomputing it would not give the bits the forward used
    x = torch.randn(1000)
    fmt = IntFormat(4, rounding="stochastic")
    assert not torch.equal(fmt(x), fmt(x))
