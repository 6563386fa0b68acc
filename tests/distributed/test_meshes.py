"""2-D meshes on 4 ranks: HSDP (replicate x shard) and FSDP + tensor parallel give one process's numbers.

* HSDP (``fully_shard(mesh=2x2 ("replicate", "shard"))``): every rank its own batch, gradients averaged
  over all 4; against one process on the 4 batches: quantized weights and outputs bit-exact, 3 QAT steps
  within the QAT tolerance.
* FSDP + TP (``parallelize_module`` colwise/rowwise on the "tp" dim, then ``fully_shard`` on "dp"): the
  two ranks of a TP group share a batch; FSDP gathers the TP shard in forward and the weight quantizer
  gathers the logical tensor from it, so the quantized weights are bit-exact, outputs within 1e-5
  (row-parallel partial sums) and 3 QAT steps within the QAT tolerance of one process on the 2 batches.
  The activations a TP layer splits (colwise output, rowwise input) are named at attach, as without FSDP.
* After either block: the same Parameters, placements and FSDP classes.
"""

from __future__ import annotations

import torch
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

import qsim_hooks as qh

from . import common as c
from .harness import result, scenario


def _run(model: torch.nn.Module, cfg: qh.QuantConfig, x: torch.Tensor) -> dict:
    out: dict = {}
    opt = torch.optim.SGD(model.parameters(), lr=c.LR)
    before, classes = c.identity(model), [type(m).__name__ for m in model]
    with qh.quantized(model, cfg):
        with torch.no_grad():
            out["infer"] = c.full(model(x))
        out["qweights"] = c.weights(model)
        out["losses"] = c.qat(model, opt, c.mse_loss(x))
    out["restored"] = (c.identity(model) == before and [type(m).__name__ for m in model] == classes
                       and c.no_parametrizations(model))
    out["params"] = c.params(model)
    out["after"] = c.full(model(x))
    return out


@scenario(4)
def hsdp(rank: int, world: int) -> dict:
    mesh = init_device_mesh("cpu", (2, 2), mesh_dim_names=("replicate", "shard"))
    model = c.shard(c.mlp(), mesh=mesh)
    out = _run(model, c.CFG, c.batch(rank))
    out["placements"] = [tuple(p.placements) for p in model.parameters()]
    return out


@scenario(4)
def fsdp_tp(rank: int, world: int) -> dict:
    mesh = init_device_mesh("cpu", (2, 2), mesh_dim_names=("dp", "tp"))
    model = c.mlp()
    parallelize_module(model, mesh["tp"], {"0": ColwiseParallel(), "2": RowwiseParallel()})
    c.shard(model, mesh=mesh["dp"])
    out = _run(model, c.TP_CFG, c.batch(rank // 2))
    out["warned"] = c.tp_warnings(model)
    return out


def test_hsdp_matches_one_process():
    ref = c.reference_qat(4)
    for r, got in enumerate(result(4, hsdp)):
        assert got["restored"], f"rank {r}: parameters, placements or classes not restored"
        assert {len(p) for p in got["placements"]} == {2}  # a 2-D mesh indeed: (Replicate(), Shard(0))
        torch.testing.assert_close(got["infer"], ref["infer"][r], rtol=0, atol=0)
        for n in ("0", "2"):
            torch.testing.assert_close(got["qweights"][n], ref["qweights"][n], rtol=0, atol=0)
        c.assert_qat_matches(got, ref, r)


def test_fsdp_with_tensor_parallel_matches_one_process():
    ref = c.reference_qat(2, c.TP_CFG)
    for r, got in enumerate(result(4, fsdp_tp)):
        assert got["restored"], f"rank {r}: parameters, placements or classes not restored"
        for n in ("0", "2"):
            torch.testing.assert_close(got["qweights"][n], ref["qweights"][n], rtol=0, atol=0)
        torch.testing.assert_close(got["infer"], ref["infer"][r // 2], rtol=0, atol=1e-5)
        c.assert_qat_matches(got, ref, r // 2)


def test_fsdp_with_tensor_parallel_names_the_activation_shards():
    for got in result(4, fsdp_tp):
        c.assert_tp_warnings(got["warned"])
