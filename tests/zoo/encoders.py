"""Encoders, encoder-decoders and vision transformers of transformers 5: tiny random configs.

Text encoders get a right-padded batch (the second row's last two tokens masked); the
encoder-decoders (BART, T5, Whisper) also decode and generate three greedy tokens with a KV cache.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from tests.attention import zoo as attention_zoo

from .base import VOCAB, Case, seeded, token_inputs

__all__ = ["CASES"]


def _model(config: str, model: str, impl: str, **kw: Any) -> nn.Module:
    import transformers as tf

    return getattr(tf, model)._from_config(getattr(tf, config)(**kw), attn_implementation=impl)


def _images(seed: int, size: int = 16, batch: int = 2) -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"pixel_values": torch.randn(batch, 3, size, size, generator=g)}


# -- encoder-decoders ---------------------------------------------------------------------------
@seeded
def bart(impl: str) -> nn.Module:
    return _model("BartConfig", "BartForConditionalGeneration", impl, vocab_size=VOCAB, d_model=16,
                  encoder_layers=1, decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2,
                  encoder_ffn_dim=32, decoder_ffn_dim=32, max_position_embeddings=64, pad_token_id=1,
                  bos_token_id=0, eos_token_id=2, decoder_start_token_id=2, forced_eos_token_id=None)


@seeded
def t5(impl: str) -> nn.Module:
    return _model("T5Config", "T5ForConditionalGeneration", impl, vocab_size=VOCAB, d_model=16, d_kv=8, d_ff=32,
                  num_layers=1, num_decoder_layers=1, num_heads=2, relative_attention_num_buckets=8,
                  relative_attention_max_distance=16, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)


@seeded
def whisper(impl: str) -> nn.Module:
    return _model("WhisperConfig", "WhisperForConditionalGeneration", impl, vocab_size=VOCAB, num_mel_bins=8,
                  d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                  decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, max_source_positions=8,
                  max_target_positions=16, pad_token_id=1, bos_token_id=0, eos_token_id=2,
                  decoder_start_token_id=3, suppress_tokens=None, begin_suppress_tokens=None)


def _seq2seq_inputs(seed: int) -> dict[str, Tensor]:
    kw = token_inputs(seed, pad="right")
    g = torch.Generator().manual_seed(seed + 100)
    kw["decoder_input_ids"] = torch.randint(3, VOCAB, (2, 4), generator=g)
    return kw


def _whisper_inputs() -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(23)
    return {"input_features": torch.randn(2, 8, 16, generator=g),
            "decoder_input_ids": torch.randint(3, VOCAB, (2, 4), generator=g)}


def _seq2seq_generate(model: nn.Module) -> Tensor:
    kw = token_inputs(17, seq=6, pad="right")
    with torch.no_grad():
        return model.generate(**kw, max_new_tokens=3, min_new_tokens=3, do_sample=False, use_cache=True)


def _whisper_generate(model: nn.Module) -> Tensor:
    g = torch.Generator().manual_seed(29)
    feats = torch.randn(2, 8, 16, generator=g)
    with torch.no_grad():
        # WhisperForConditionalGeneration.generate wants language/task tokens from a real generation
        # config; the plain GenerationMixin loop is what decodes with the cache
        from transformers import GenerationMixin

        return GenerationMixin.generate(model, input_features=feats, max_new_tokens=3, min_new_tokens=3,
                                        do_sample=False, use_cache=True)


# -- text encoders ------------------------------------------------------------------------------
@seeded
def distilbert(impl: str) -> nn.Module:
    return _model("DistilBertConfig", "DistilBertModel", impl, vocab_size=VOCAB, dim=16, n_layers=2, n_heads=2,
                  hidden_dim=32, max_position_embeddings=32)


@seeded
def roberta(impl: str) -> nn.Module:
    return _model("RobertaConfig", "RobertaModel", impl, vocab_size=VOCAB, hidden_size=16, num_hidden_layers=2,
                  num_attention_heads=2, intermediate_size=32, max_position_embeddings=40, pad_token_id=1)


@seeded
def modernbert(impl: str) -> nn.Module:
    # alternating global / local (sliding window 4) attention layers, fused Wqkv, GeGLU Wi
    return _model("ModernBertConfig", "ModernBertModel", impl, vocab_size=VOCAB, hidden_size=16,
                  intermediate_size=32, num_hidden_layers=2, num_attention_heads=2, global_attn_every_n_layers=2,
                  local_attention=4, max_position_embeddings=64, pad_token_id=1, bos_token_id=0, eos_token_id=2,
                  cls_token_id=0, sep_token_id=2)


@seeded
def deberta_v2(impl: str) -> nn.Module:
    # disentangled attention: content->position (c2p) and position->content (p2c) bmm's beside Q·Kᵀ; the
    # (non-legacy) MLM head multiplies by the word-embedding matrix: matmul(h, word_embeddings.weight.t())
    return _model("DebertaV2Config", "DebertaV2ForMaskedLM", impl, legacy=False, vocab_size=VOCAB, hidden_size=16,
                  num_hidden_layers=2, num_attention_heads=2, intermediate_size=32, max_position_embeddings=64,
                  relative_attention=True, position_buckets=8, max_relative_positions=16,
                  pos_att_type=["p2c", "c2p"], share_att_key=True, norm_rel_ebd="layer_norm", pad_token_id=0)


@seeded
def clip(impl: str) -> nn.Module:
    import transformers as tf

    text = tf.CLIPTextConfig(vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                             num_attention_heads=2, max_position_embeddings=16, pad_token_id=1, bos_token_id=0,
                             eos_token_id=2)
    vision = tf.CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                                 image_size=16, patch_size=8)
    cfg = tf.CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=16)
    return tf.CLIPModel._from_config(cfg, attn_implementation=impl)


def _clip_inputs() -> dict[str, Tensor]:
    return {**token_inputs(31, pad="right"), **_images(32)}


# -- vision transformers ------------------------------------------------------------------------
@seeded
def vit(impl: str) -> nn.Module:
    return _model("ViTConfig", "ViTModel", impl, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                  intermediate_size=32, image_size=16, patch_size=4)


@seeded
def deit(impl: str) -> nn.Module:
    return _model("DeiTConfig", "DeiTForImageClassificationWithTeacher", impl, hidden_size=16,
                  num_hidden_layers=2, num_attention_heads=2, intermediate_size=32, image_size=16, patch_size=4,
                  num_labels=3)


@seeded
def swin(impl: str) -> nn.Module:
    # two blocks in the first stage: the second is a shifted window (an attention mask per window)
    return _model("SwinConfig", "SwinModel", impl, image_size=32, patch_size=4, embed_dim=8, depths=[2, 1],
                  num_heads=[1, 2], window_size=2, drop_path_rate=0.0)


def _tf(name: str, build, inputs, attention: set[str], impls=("eager", "sdpa"), generate=None,
        notes: str = "") -> Case:
    return Case(name, "transformers", build, inputs, frozenset(attention), impls=impls, generate=generate,
                notes=notes)


CASES = [
    _tf("bart", bart, lambda: _seq2seq_inputs(19), {"BartAttention"}, generate=_seq2seq_generate,
        notes="self-, cross- and causal attention"),
    _tf("t5", t5, lambda: _seq2seq_inputs(21), {"T5Attention"}, generate=_seq2seq_generate,
        notes="relative position bias added to unscaled scores"),
    _tf("whisper", whisper, _whisper_inputs, {"WhisperAttention"}, generate=_whisper_generate,
        notes="Conv1d front-end; encoder-decoder"),
    _tf("clip", clip, _clip_inputs, {"CLIPAttention"},
        notes="text (causal + padding) and vision towers; logits = text_embeds @ image_embeds.T"),
    _tf("distilbert", distilbert, lambda: token_inputs(33, pad="right"), {"DistilBertSelfAttention"}),
    _tf("roberta", roberta, lambda: token_inputs(35, pad="right"), {"RobertaSelfAttention"}),
    _tf("modernbert", modernbert, lambda: token_inputs(37, pad="right"), {"ModernBertAttention"},
        notes="global/local layers, fused Wqkv"),
    _tf("deberta_v2", deberta_v2, lambda: token_inputs(39, pad="right"), {"DisentangledSelfAttention"},
        impls=("eager",), notes="disentangled attention (c2p, p2c); no SDPA; MLM head on the embedding matrix"),
    _tf("vit", vit, lambda: _images(41), {"ViTAttention"}),
    _tf("deit", deit, lambda: _images(43), {"DeiTAttention"}, notes="distillation token, teacher head"),
    _tf("swin", swin, lambda: _images(45, size=32), {"SwinAttention"},
        notes="window attention, relative position bias, shifted windows"),
    _tf("bert", attention_zoo.bert, attention_zoo.bert_inputs, {"BertSelfAttention"}),
    _tf("detr", attention_zoo.detr, attention_zoo.detr_inputs, {"DetrSelfAttention", "DetrCrossAttention"},
        notes="ResNet backbone, encoder-decoder"),
    _tf("maskformer", attention_zoo.maskformer, attention_zoo.maskformer_inputs,
        {"MaskFormerSwinSelfAttention", "MaskFormerDetrSelfAttention", "MaskFormerDetrCrossAttention"},
        notes="Swin backbone (eager) and DETR decoder (impl)"),
]
