"""What the distributed tests share: the MLP, its batches, the configs, and readers of sharded tensors."""

from __future__ import annotations

import warnings

import torch
from torch import nn
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor

import qsim_hooks as qh

STEPS, LR = 3, 0.05
#: QAT through reduce-scatter / row-parallel partial sums: float32 reassociation (~1e-7 relative) on values
#: of order 1, three steps
QAT_ATOL = 1e-5
# a per-tensor INT4 scale on layer 0 and a per-channel INT8 one on layer 2: a scale taken on a shard
# (FSDP shards dim 0, row-parallel dim 1) would differ from the logical tensor's
CFG = qh.QuantConfig(input="int8", weight="int8",
                     rules=[qh.Rule(match="0", weight="int4"), qh.Rule(match="2", weight_scaling="channel")])
TP_CFG = qh.QuantConfig(weight="int8", rules=[qh.Rule(match="0", weight="int4"),
                                              qh.Rule(match="2", weight_scaling="channel")])


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 16))


def batch(rank: int) -> torch.Tensor:
    return torch.randn(8, 16, generator=torch.Generator().manual_seed(10 + rank))


def full(t: torch.Tensor) -> torch.Tensor:
    """The logical tensor of a DTensor (waited for: ``full_tensor`` may return an async collective)."""
    if isinstance(t, DTensor):
        t = t.full_tensor()
        t = t.wait() if hasattr(t, "wait") else t
    return t.detach().clone()


def weights(model: nn.Module, names=("0", "2")) -> dict[str, torch.Tensor]:
    """Logical (quantized inside a session) weights, gathered where sharded."""
    return {n: full(model.get_submodule(n).weight) for n in names}


def params(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: full(p) for n, p in model.named_parameters()}


def qat(model: nn.Module, opt: torch.optim.Optimizer, loss_of, steps: int = STEPS) -> list[float]:
    losses = []
    for _ in range(steps):
        loss = loss_of(model)
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    return losses


def mse_loss(x: torch.Tensor):
    return lambda model: model(x).pow(2).mean()


def identity(model: nn.Module) -> list[tuple]:
    return [(n, id(p), type(p).__name__, tuple(getattr(p, "placements", ()))) for n, p in model.named_parameters()]


def shard(model: nn.Module, **kw) -> nn.Module:
    fully_shard(model[0], **kw)
    fully_shard(model[2], **kw)
    return fully_shard(model, **kw)


def no_parametrizations(model: nn.Module) -> bool:
    return not any(hasattr(m, "parametrizations") for m in model.modules())


def reference_qat(world: int, cfg: qh.QuantConfig = CFG, calibration=None) -> dict:
    """One process: each rank's batch on the whole model; the step uses the mean of the ranks' losses."""
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    ref: dict = {"losses": [[] for _ in range(world)]}
    with qh.quantized(model, cfg, calibration=calibration):
        with torch.no_grad():
            ref["infer"] = [model(batch(r)) for r in range(world)]
        ref["qweights"] = weights(model)
        for _ in range(STEPS):
            losses = [model(batch(r)).pow(2).mean() for r in range(world)]
            (sum(losses) / world).backward()
            opt.step()
            opt.zero_grad()
            for r, loss in enumerate(losses):
                ref["losses"][r].append(loss.item())
    ref["params"] = params(model)
    ref["after"] = [model(batch(r)).detach() for r in range(world)]
    return ref


def assert_qat_matches(got: dict, ref: dict, r: int, atol: float = QAT_ATOL) -> None:
    torch.testing.assert_close(torch.tensor(got["losses"]), torch.tensor(ref["losses"][r]), rtol=0, atol=atol)
    for n, p in ref["params"].items():
        torch.testing.assert_close(got["params"][n], p, rtol=0, atol=atol, msg=n)
    torch.testing.assert_close(got["after"], ref["after"][r], rtol=0, atol=atol)


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max())


def tp_warnings(model: nn.Module) -> list[str]:
    """The tensor-parallel warnings of attaching int8 inputs and outputs to ``model``."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with qh.quantized(model, input="int8", output="int8"):
            pass
    return [str(w.message) for w in caught if "tensor-parallel" in str(w.message)]


def assert_tp_warnings(warned: list[str]) -> None:
    """Colwise layer 0: its output is split; rowwise layer 2: its input. The other two are whole."""
    assert len(warned) == 2, warned
    assert "module '0'" in warned[0] and "its output is this rank's shard" in warned[0]
    assert "module '2'" in warned[1] and "its input is this rank's shard" in warned[1]
