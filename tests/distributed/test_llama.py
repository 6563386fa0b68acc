"""A tiny Llama (``LlamaForCausalLM`` from a tiny config, random weights) under FSDP2 gives one process's numbers.

Every decoder layer is ``fully_shard``-ed, then the root (embeddings, final norm, ``lm_head``), as
accelerate and torchtitan do. On 2 ranks, against the same runs in this process un-sharded:

* inference logits of each rank's batch: bit-exact (the GEMMs see the same gathered, quantized weights);
* 3 QAT steps (SGD): losses and every updated weight within the QAT tolerance (FSDP's reduce-scatter
  averages the gradients in another order than autograd summing the ranks' losses);
* after the block, exactly the model it was: the same Parameter objects and placements, FSDP's classes,
  no parametrization, and a forward that FSDP still runs (logits within the QAT tolerance).
"""

from __future__ import annotations

import pytest
import torch
from torch.distributed.fsdp import fully_shard

import qsim_hooks as qh

from .common import LR, STEPS, assert_qat_matches, full, identity, no_parametrizations
from .harness import result, scenario

transformers = pytest.importorskip("transformers")  # imported before the ranks are forked

CFG = qh.QuantConfig(input="int8", weight="int8", rules=[qh.Rule(match="*.q_proj", weight="int4"),
                                                         qh.Rule(match="*.down_proj", weight_scaling="channel")])


def _llama() -> torch.nn.Module:
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32,
                                      attn_implementation="eager")
    return transformers.LlamaForCausalLM(config)


def _ids(rank: int) -> torch.Tensor:
    return torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(rank))


def _loss(model: torch.nn.Module, rank: int) -> torch.Tensor:
    return model(input_ids=_ids(rank), labels=_ids(rank)).loss


def _classes(model: torch.nn.Module) -> list[str]:
    return [type(m).__name__ for m in model.modules()]


@scenario(2)
def llama_fsdp(rank: int, world: int) -> dict:
    out: dict = {}
    model = _llama()
    for layer in model.model.layers:
        fully_shard(layer)
    fully_shard(model)
    before, classes = identity(model), _classes(model)
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    with qh.quantized(model, CFG):
        with torch.no_grad():
            out["logits"] = model(input_ids=_ids(rank)).logits
        losses = []
        for _ in range(STEPS):
            loss = _loss(model, rank)
            loss.backward()
            opt.step()
            opt.zero_grad()
            losses.append(loss.item())
    out["losses"] = losses
    out["restored"] = identity(model) == before and _classes(model) == classes and no_parametrizations(model)
    out["params"] = {n: full(p) for n, p in model.named_parameters()}
    with torch.no_grad():
        out["after"] = model(input_ids=_ids(rank)).logits
    return out


def reference(world: int) -> dict:
    """One process: each rank's batch on the whole model; the step uses the mean of the ranks' losses."""
    model = _llama()
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    ref: dict = {"losses": [[] for _ in range(world)]}
    with qh.quantized(model, CFG):
        with torch.no_grad():
            ref["logits"] = [model(input_ids=_ids(r)).logits for r in range(world)]
        for _ in range(STEPS):
            step = [_loss(model, r) for r in range(world)]
            (sum(step) / world).backward()
            opt.step()
            opt.zero_grad()
            for r, loss in enumerate(step):
                ref["losses"][r].append(loss.item())
    ref["params"] = {n: p.detach() for n, p in model.named_parameters()}
    with torch.no_grad():
        ref["after"] = [model(input_ids=_ids(r)).logits for r in range(world)]
    return ref


def test_tiny_llama_under_fsdp2_matches_one_process():
    ref = reference(2)
    for r, got in enumerate(result(2, llama_fsdp)):
        assert got["restored"], f"rank {r}: parameters, placements or classes not restored"
        torch.testing.assert_close(got["logits"], ref["logits"][r], rtol=0, atol=0)
        assert_qat_matches(got, ref, r)  # losses, updated weights and the logits after the block
