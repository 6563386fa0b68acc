"""Mixture-of-experts decoders of transformers 5: experts stored as 3-D parameters in one module.

transformers 5 runs such an experts module (``@use_experts_implementation``,
``transformers/integrations/moe.py``) one of three ways, chosen by ``experts_implementation``:
``"eager"`` (the class's own ``forward``: a Python loop over the hit experts of ``F.linear`` on
``gate_up_proj[e]`` / ``down_proj[e]``, GPT-OSS ``current_state @ gate_up_proj[e]``), ``"grouped_mm"``
(the default: ``torch.nn.functional.grouped_mm`` / ``torch._grouped_mm`` on the whole 3-D weight) and
``"batched_mm"`` (``torch.bmm`` on ``weight[expert_ids]``, one gathered matrix per token). The impls
here: ``"eager"`` = eager attention + eager experts, ``"sdpa"`` = SDPA + the default grouped_mm,
``"sdpa+batched_mm"`` = SDPA + batched_mm (GPT-OSS has no SDPA: ``"eager+grouped_mm"`` and
``"eager+batched_mm"``).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from .base import VOCAB, Case, greedy_generate, seeded, token_inputs

__all__ = ["CASES"]

_MOE = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=64, pad_token_id=1, bos_token_id=0, eos_token_id=2)
_EXPERTS = {"eager": "eager", "sdpa": "grouped_mm"}


def _moe(config: str, model: str, impl: str, **kw: Any) -> nn.Module:
    import transformers as tf

    attn, _, experts = impl.partition("+")
    experts = experts or _EXPERTS[attn]
    cfg = getattr(tf, config)(**kw)
    return getattr(tf, model)._from_config(cfg, attn_implementation=attn, experts_implementation=experts)


@seeded
def mixtral(impl: str) -> nn.Module:
    return _moe("MixtralConfig", "MixtralForCausalLM", impl, **_MOE, num_local_experts=4, num_experts_per_tok=2)


@seeded
def qwen2_moe(impl: str) -> nn.Module:
    # routed experts plus a shared expert (an ordinary MLP of Linears) gated by a sigmoid
    return _moe("Qwen2MoeConfig", "Qwen2MoeForCausalLM", impl, **_MOE, num_experts=4, num_experts_per_tok=2,
                moe_intermediate_size=16, shared_expert_intermediate_size=32, decoder_sparse_step=1)


@seeded
def qwen3_moe(impl: str) -> nn.Module:
    return _moe("Qwen3MoeConfig", "Qwen3MoeForCausalLM", impl, **_MOE, head_dim=8, num_experts=4,
                num_experts_per_tok=2, moe_intermediate_size=16, decoder_sparse_step=1)


@seeded
def olmoe(impl: str) -> nn.Module:
    return _moe("OlmoeConfig", "OlmoeForCausalLM", impl, **_MOE, num_experts=4, num_experts_per_tok=2)


@seeded
def deepseek_v3(impl: str) -> nn.Module:
    # multi-head latent attention (low-rank q and kv projections, split rope/nope head dims) and, from
    # layer 1 on, routed experts (grouped top-k router) plus shared experts
    kw = dict(_MOE, num_key_value_heads=4)
    return _moe("DeepseekV3Config", "DeepseekV3ForCausalLM", impl, **kw, moe_intermediate_size=16,
                n_routed_experts=4, num_experts_per_tok=2, n_shared_experts=1, n_group=2, topk_group=1,
                first_k_dense_replace=1, q_lora_rank=16, kv_lora_rank=16, qk_rope_head_dim=4, qk_nope_head_dim=4,
                v_head_dim=8, rope_scaling=None)


@seeded
def gpt_oss(impl: str) -> nn.Module:
    # attention sinks (a learned logit per head concatenated to the scores before the softmax); experts
    # with biases, weights stored transposed ((E, in, out)), interleaved gate/up
    kw = dict(_MOE, intermediate_size=32)
    return _moe("GptOssConfig", "GptOssForCausalLM", impl, **kw, head_dim=8, num_local_experts=4,
                num_experts_per_tok=2, sliding_window=4, layer_types=["sliding_attention", "full_attention"],
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0})


_IMPLS = ("eager", "sdpa", "sdpa+batched_mm")


def _case(name: str, build, attention: str, experts: str, impls=_IMPLS, notes: str = "") -> Case:
    return Case(name, "transformers", build, lambda: token_inputs(13), frozenset({attention}), impls=impls,
                generate=greedy_generate, notes=f"experts: {experts}; {notes}".rstrip("; "),
                tags=frozenset({"moe"}))


CASES = [
    _case("mixtral", mixtral, "MixtralAttention", "MixtralExperts"),
    _case("qwen2_moe", qwen2_moe, "Qwen2MoeAttention", "Qwen2MoeExperts", notes="shared expert MLP"),
    _case("qwen3_moe", qwen3_moe, "Qwen3MoeAttention", "Qwen3MoeExperts"),
    _case("olmoe", olmoe, "OlmoeAttention", "OlmoeExperts"),
    _case("deepseek_v3", deepseek_v3, "DeepseekV3Attention", "DeepseekV3Experts",
          notes="MLA attention; layer 0 dense"),
    _case("gpt_oss", gpt_oss, "GptOssAttention", "GptOssExperts (transposed, biases)",
          impls=("eager", "eager+grouped_mm", "eager+batched_mm"), notes="attention sinks; no SDPA"),
]
