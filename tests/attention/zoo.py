"""Tiny attention models built from random configs (no downloads): transformers 5.x and diffusers.

Each entry builds a model in ``eval()`` mode for one attention implementation and the inputs
to call it with; ``outputs`` flattens whatever a model returns into its floating tensors.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Case:
    name: str
    build: Callable[[str], torch.nn.Module]
    inputs: Callable[[], dict]
    #: class names of the attention leaves the plan must find (and nothing else)
    attention: frozenset[str]
    #: class names that match the pattern but must not be instrumented (non-leaves)
    not_leaves: frozenset[str] = frozenset()
    #: implementations this model can be built with
    impls: tuple[str, ...] = ("eager", "sdpa")


def _seeded(fn):
    def wrapper(*a, **kw):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            return fn(*a, **kw)
    return wrapper


# -- transformers ----------------------------------------------------------------------------
@_seeded
def opt(impl: str):
    import transformers as tf
    cfg = tf.OPTConfig(vocab_size=64, hidden_size=16, word_embed_proj_dim=16, num_hidden_layers=2, ffn_dim=32,
                       num_attention_heads=2, max_position_embeddings=32, pad_token_id=1, bos_token_id=2,
                       eos_token_id=2, attn_implementation=impl)
    return tf.OPTForCausalLM(cfg).eval()


def opt_inputs():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 64, (2, 7), generator=g)
    mask = torch.ones(2, 7, dtype=torch.long)
    mask[1, -2:] = 0  # right padding on the second row: a key padding mask beside the causal one
    return {"input_ids": ids, "attention_mask": mask}


@_seeded
def bert(impl: str):
    import transformers as tf
    cfg = tf.BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=32, attn_implementation=impl)
    return tf.BertModel(cfg).eval()


def bert_inputs():
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(0, 64, (2, 6), generator=g)
    mask = torch.ones(2, 6, dtype=torch.long)
    mask[0, -2:] = 0
    return {"input_ids": ids, "attention_mask": mask}


@_seeded
def codegen(impl: str):
    import transformers as tf
    cfg = tf.CodeGenConfig(vocab_size=64, n_positions=32, n_embd=32, n_layer=2, n_head=4, rotary_dim=4,
                           n_inner=64, bos_token_id=0, eos_token_id=0, attn_implementation=impl)
    return tf.CodeGenForCausalLM(cfg).eval()


def codegen_inputs():
    g = torch.Generator().manual_seed(3)
    return {"input_ids": torch.randint(0, 64, (2, 6), generator=g)}


@_seeded
def bloom(impl: str):
    import transformers as tf
    # BLOOM has no SDPA path; its Q·Kᵀ is ``alibi.baddbmm(batch1=q, batch2=k, beta=, alpha=)``, operands by keyword
    cfg = tf.BloomConfig(vocab_size=64, hidden_size=16, n_layer=2, n_head=2, bos_token_id=0, eos_token_id=0,
                         pad_token_id=0, attn_implementation=impl)
    return tf.BloomForCausalLM(cfg).eval()


def bloom_inputs():
    g = torch.Generator().manual_seed(7)
    ids = torch.randint(1, 64, (2, 6), generator=g)
    mask = torch.ones(2, 6, dtype=torch.long)
    mask[0, :2] = 0  # left padding
    return {"input_ids": ids, "attention_mask": mask}


def _resnet():
    import transformers as tf
    return tf.ResNetConfig(num_channels=3, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1],
                           layer_type="basic", out_features=["stage2"])


@_seeded
def detr(impl: str):
    import transformers as tf
    # the ResNet backbone has no SDPA: the implementation is set for DETR's own attention only
    cfg = tf.DetrConfig(backbone_config=_resnet(), use_timm_backbone=False, num_queries=5, d_model=16,
                        encoder_layers=1, decoder_layers=1, encoder_ffn_dim=32, decoder_ffn_dim=32,
                        encoder_attention_heads=2, decoder_attention_heads=2,
                        attn_implementation={"": impl, "backbone_config": "eager"})
    return tf.DetrModel(cfg).eval()


def detr_inputs():
    g = torch.Generator().manual_seed(4)
    pixel_mask = torch.ones(2, 32, 32, dtype=torch.long)
    pixel_mask[1, :, 24:] = 0  # a padded image: a key padding mask in the encoder and cross-attention
    return {"pixel_values": torch.randn(2, 3, 32, 32, generator=g), "pixel_mask": pixel_mask}


@_seeded
def maskformer(impl: str):
    import transformers as tf
    # MaskFormer takes a "swin" backbone config as its own MaskFormerSwin with four stages
    swin = tf.SwinConfig(image_size=64, patch_size=4, embed_dim=8, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2],
                         window_size=2, drop_path_rate=0.0, out_features=["stage1", "stage2", "stage3", "stage4"])
    dec = tf.DetrConfig(use_timm_backbone=False, num_queries=4, d_model=16, encoder_layers=0, decoder_layers=1,
                        decoder_ffn_dim=32, decoder_attention_heads=2, encoder_attention_heads=2)
    # MaskFormer itself and its Swin backbone are eager-only; the DETR decoder takes the implementation
    cfg = tf.MaskFormerConfig(backbone_config=swin, decoder_config=dec, fpn_feature_size=32, mask_feature_size=32,
                              num_labels=3,
                              attn_implementation={"": "eager", "backbone_config": "eager", "decoder_config": impl})
    return tf.MaskFormerForInstanceSegmentation(cfg).eval()


def maskformer_inputs():
    g = torch.Generator().manual_seed(5)
    return {"pixel_values": torch.randn(1, 3, 64, 64, generator=g)}


# -- diffusers -------------------------------------------------------------------------------
@_seeded
def unet(impl: str):
    import diffusers
    from diffusers.models.attention_processor import AttnProcessor
    m = diffusers.UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=8, norm_num_groups=32).eval()
    if impl == "eager":  # "sdpa" is diffusers' default processor (AttnProcessor2_0)
        m.set_attn_processor(AttnProcessor())
    return m


def unet_inputs():
    g = torch.Generator().manual_seed(6)
    return {"sample": torch.randn(1, 4, 8, 8, generator=g), "timestep": torch.tensor(3),
            "encoder_hidden_states": torch.randn(1, 5, 32, generator=g)}


CASES = {c.name: c for c in (
    Case("opt", opt, opt_inputs, frozenset({"OPTAttention"})),
    Case("bert", bert, bert_inputs, frozenset({"BertSelfAttention"}), frozenset({"BertAttention"})),
    Case("codegen", codegen, codegen_inputs, frozenset({"CodeGenAttention"})),
    Case("bloom", bloom, bloom_inputs, frozenset({"BloomAttention"}), impls=("eager",)),
    Case("detr", detr, detr_inputs, frozenset({"DetrSelfAttention", "DetrCrossAttention"})),
    Case("maskformer", maskformer, maskformer_inputs,
         frozenset({"MaskFormerSwinSelfAttention", "MaskFormerDetrSelfAttention", "MaskFormerDetrCrossAttention"}),
         frozenset({"MaskFormerSwinAttention"})),
    Case("unet", unet, unet_inputs, frozenset({"Attention"})),
)}


def outputs(out) -> list[torch.Tensor]:
    """Every floating tensor of a model's output, in a fixed order."""
    if isinstance(out, torch.Tensor):
        return [out] if out.is_floating_point() else []
    if isinstance(out, dict):  # ModelOutput is an OrderedDict of its non-None fields
        return [t for v in out.values() for t in outputs(v)]
    if isinstance(out, (list, tuple)):
        return [t for v in out for t in outputs(v)]
    return []
