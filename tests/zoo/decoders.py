"""Decoder-only language models of transformers 5 (dense): tiny random configs, causal LM heads.

Every case takes ``attn_implementation`` ``"eager"`` and (where the model has one) ``"sdpa"``, is
called on a left-padded batch (the second row's first two tokens masked, as batched generation pads)
and generates three greedy tokens with a KV cache.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from tests.attention import zoo as attention_zoo

from .base import VOCAB, Case, greedy_generate, seeded, token_inputs

__all__ = ["CASES"]

_SMALL = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
              num_attention_heads=4, max_position_embeddings=64, pad_token_id=1, bos_token_id=0, eos_token_id=2)


def _lm(config: str, model: str, impl: str, **kw: Any) -> nn.Module:
    import transformers as tf

    cfg = getattr(tf, config)(**kw)
    return getattr(tf, model)._from_config(cfg, attn_implementation=impl)


@seeded
def llama(impl: str) -> nn.Module:
    return _lm("LlamaConfig", "LlamaForCausalLM", impl, **_SMALL, num_key_value_heads=2)  # GQA: 4 q, 2 kv heads


@seeded
def mistral(impl: str) -> nn.Module:
    return _lm("MistralConfig", "MistralForCausalLM", impl, **_SMALL, num_key_value_heads=2, sliding_window=4)


@seeded
def qwen2(impl: str) -> nn.Module:
    return _lm("Qwen2Config", "Qwen2ForCausalLM", impl, **_SMALL, num_key_value_heads=2)


@seeded
def qwen3(impl: str) -> nn.Module:
    # Qwen3: per-head RMSNorm on q and k (q_norm, k_norm) before RoPE
    return _lm("Qwen3Config", "Qwen3ForCausalLM", impl, **_SMALL, num_key_value_heads=2, head_dim=8)


@seeded
def gemma2(impl: str) -> nn.Module:
    # tanh soft-capping of the scores between Q·Kᵀ and the softmax; alternating sliding/global layers
    return _lm("Gemma2Config", "Gemma2ForCausalLM", impl, **_SMALL, num_key_value_heads=2, head_dim=8,
               query_pre_attn_scalar=8, attn_logit_softcapping=50.0, final_logit_softcapping=30.0, sliding_window=4)


@seeded
def gemma3(impl: str) -> nn.Module:
    return _lm("Gemma3TextConfig", "Gemma3ForCausalLM", impl, **_SMALL, num_key_value_heads=2, head_dim=8,
               query_pre_attn_scalar=8, sliding_window=4)


@seeded
def phi3(impl: str) -> nn.Module:
    # fused qkv_proj and gate_up_proj Linears
    return _lm("Phi3Config", "Phi3ForCausalLM", impl, **_SMALL, num_key_value_heads=2)


@seeded
def gpt_neox(impl: str) -> nn.Module:
    return _lm("GPTNeoXConfig", "GPTNeoXForCausalLM", impl, vocab_size=VOCAB, hidden_size=32, intermediate_size=64,
               num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=64, rotary_pct=0.5,
               pad_token_id=1, bos_token_id=0, eos_token_id=2)


@seeded
def gptj(impl: str) -> nn.Module:
    return _lm("GPTJConfig", "GPTJForCausalLM", impl, vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4,
               n_positions=64, rotary_dim=4, n_inner=64, pad_token_id=1, bos_token_id=0, eos_token_id=2)


def _falcon(impl: str, alibi: bool) -> nn.Module:
    # FalconLinear (an nn.Linear subclass) computes ``input @ self.weight.T`` as a matmul of its own
    return _lm("FalconConfig", "FalconForCausalLM", impl, vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2,
               num_attention_heads=4, alibi=alibi, multi_query=not alibi, new_decoder_architecture=False,
               parallel_attn=not alibi, bias=alibi, pad_token_id=1, bos_token_id=0, eos_token_id=2)


@seeded
def falcon(impl: str) -> nn.Module:
    return _falcon(impl, alibi=False)


@seeded
def falcon_alibi(impl: str) -> nn.Module:
    return _falcon(impl, alibi=True)


@seeded
def gpt2(impl: str) -> nn.Module:
    # transformers.pytorch_utils.Conv1D (weight stored (in, out), ``torch.addmm``) for c_attn, c_proj, c_fc
    return _lm("GPT2Config", "GPT2LMHeadModel", impl, vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4,
               n_positions=64, pad_token_id=1, bos_token_id=0, eos_token_id=2)


def _case(name: str, build, attention: str, impls=("eager", "sdpa"), notes: str = "", seed: int = 11,
          **kw: Any) -> Case:
    return Case(name, "transformers", build, lambda: token_inputs(seed), frozenset({attention}), impls=impls,
                generate=greedy_generate, notes=notes, **kw)


CASES = [
    _case("llama", llama, "LlamaAttention", notes="GQA (4 query heads, 2 kv heads)"),
    _case("mistral", mistral, "MistralAttention", notes="GQA, sliding window 4"),
    _case("qwen2", qwen2, "Qwen2Attention", notes="GQA, q/k/v biases"),
    _case("qwen3", qwen3, "Qwen3Attention", notes="GQA, q_norm/k_norm"),
    _case("gemma2", gemma2, "Gemma2Attention", impls=("eager",),
          notes="score soft-capping (tanh) between Q·Kᵀ and softmax; no SDPA (_supports_sdpa=False)"),
    _case("gemma3", gemma3, "Gemma3Attention", notes="q_norm/k_norm, sliding/global layers"),
    _case("phi3", phi3, "Phi3Attention", notes="fused qkv_proj"),
    _case("gpt_neox", gpt_neox, "GPTNeoXAttention", notes="fused query_key_value, partial rotary"),
    _case("gptj", gptj, "GPTJAttention", notes="rotary_dim 4 of head 8"),
    _case("falcon", falcon, "FalconAttention", notes="rotary, multi-query; FalconLinear matmuls"),
    _case("falcon_alibi", falcon_alibi, "FalconAttention", notes="ALiBi, biases; FalconLinear matmuls"),
    _case("gpt2", gpt2, "GPT2Attention", notes="Conv1D layers (addmm on a (in, out) weight)"),
    _case("bloom", attention_zoo.bloom, "BloomAttention", impls=("eager",),
          notes="ALiBi folded into alibi.baddbmm(batch1=q, batch2=k); no SDPA"),
    _case("opt", attention_zoo.opt, "OPTAttention"),
    _case("codegen", attention_zoo.codegen, "CodeGenAttention", notes="fused qkv_proj, rotary"),
]
