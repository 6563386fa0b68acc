"""accelerate's FSDP2 preparation of a tiny Llama, then a session: one process's numbers, restored exactly.

accelerate 1.16 configures FSDP only on accelerator devices: on CPU (``DistributedType.MULTI_CPU``) an
``fsdp_plugin`` is ignored and ``prepare`` wraps the model in DDP (``accelerate/state.py``: the FSDP
branch sits under ``distributed_type in [MULTI_GPU, MULTI_NPU, MULTI_XPU, ...]``). So here the state is
told it is FSDP after it is made (the one line a GPU run does not need), and ``Accelerator.prepare`` then
runs accelerate's own FSDP2 path (``fsdp2_prepare_model``: the transformer auto-wrap policy, ``fully_shard``
per decoder layer and on the root, the full state dict loaded back into the shards). On 2 ranks: 3 QAT
steps (``accelerator.backward``) within the QAT tolerance of one process, and after the block the same
Parameters, placements and classes.
"""

from __future__ import annotations

import os

import pytest
import torch

import qsim_hooks as qh

from .common import LR, STEPS, assert_qat_matches, full, identity, no_parametrizations
from .harness import result, scenario
from .test_llama import CFG, _ids, _llama, _loss, reference

accelerate = pytest.importorskip("accelerate")  # imported before the ranks are forked
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin  # noqa: E402


@scenario(2)
def accelerate_fsdp2(rank: int, world: int) -> dict:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world))
    acc = accelerate.Accelerator(cpu=True)
    acc.state.fsdp_plugin = FullyShardedDataParallelPlugin(
        fsdp_version=2, auto_wrap_policy="transformer_based_wrap",
        transformer_cls_names_to_wrap=["LlamaDecoderLayer"], cpu_ram_efficient_loading=False)
    acc.state.distributed_type = DistributedType.FSDP  # accelerate would pick MULTI_CPU (see the docstring)
    model = _llama()
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    model, opt = acc.prepare(model, opt)
    out: dict = {"classes": [type(m).__name__ for m in (model, *model.model.layers)]}
    before = identity(model)
    losses = []
    with qh.quantized(model, CFG):
        for _ in range(STEPS):
            loss = _loss(model, rank)
            acc.backward(loss)
            opt.step()
            opt.zero_grad()
            losses.append(loss.item())
    out["losses"] = losses
    out["restored"] = identity(model) == before and no_parametrizations(model)
    out["params"] = {n: full(p) for n, p in model.named_parameters()}
    with torch.no_grad():
        out["after"] = model(input_ids=_ids(rank)).logits
    return out


def test_accelerate_fsdp2_prepared_llama_matches_one_process():
    ref = reference(2)
    for r, got in enumerate(result(2, accelerate_fsdp2)):
        assert got["classes"] == ["FSDPLlamaForCausalLM", "FSDPLlamaDecoderLayer", "FSDPLlamaDecoderLayer"]
        assert got["restored"], f"rank {r}: parameters, placements or classes not restored"
        assert_qat_matches(got, ref, r)
