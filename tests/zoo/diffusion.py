"""diffusers denoisers with tiny random configs: UNet2DConditionModel, DiT, SD3 and Flux transformers.

``"eager"`` swaps in diffusers' ``AttnProcessor`` (``baddbmm`` scores, softmax, ``bmm``) where the
model's attention class can take it (``Attention``); ``"sdpa"`` is the model's default processor
(``AttnProcessor2_0``, SD3's ``JointAttnProcessor2_0``, Flux's ``FluxAttnProcessor`` through
``dispatch_attention_fn``), all of which call ``F.scaled_dot_product_attention``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from tests.attention import zoo as attention_zoo

from .base import Case, seeded

__all__ = ["CASES"]


def _eager(m: nn.Module, impl: str) -> nn.Module:
    if impl == "eager":
        from diffusers.models.attention_processor import Attention, AttnProcessor

        for a in m.modules():  # DiT has no set_attn_processor: each Attention takes the processor
            if isinstance(a, Attention):
                a.set_processor(AttnProcessor())
    return m


@seeded
def dit(impl: str) -> nn.Module:
    from diffusers import DiTTransformer2DModel

    m = DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=4,
                              num_layers=1, sample_size=8, patch_size=2, num_embeds_ada_norm=10)
    return _eager(m, impl)


def _dit_inputs() -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(61)
    return {"hidden_states": torch.randn(1, 4, 8, 8, generator=g), "timestep": torch.tensor([3]),
            "class_labels": torch.tensor([1])}


@seeded
def sd3(impl: str) -> nn.Module:
    from diffusers import SD3Transformer2DModel

    return SD3Transformer2DModel(sample_size=8, patch_size=2, in_channels=4, num_layers=1, attention_head_dim=8,
                                 num_attention_heads=2, joint_attention_dim=16, caption_projection_dim=16,
                                 pooled_projection_dim=8, out_channels=4, pos_embed_max_size=8)


def _sd3_inputs() -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(63)
    return {"hidden_states": torch.randn(1, 4, 8, 8, generator=g),
            "encoder_hidden_states": torch.randn(1, 5, 16, generator=g),
            "pooled_projections": torch.randn(1, 8, generator=g), "timestep": torch.tensor([3])}


@seeded
def flux(impl: str) -> nn.Module:
    from diffusers import FluxTransformer2DModel

    return FluxTransformer2DModel(patch_size=1, in_channels=8, num_layers=1, num_single_layers=1,
                                  attention_head_dim=8, num_attention_heads=2, joint_attention_dim=16,
                                  pooled_projection_dim=8, guidance_embeds=False, axes_dims_rope=(2, 2, 4))


def _flux_inputs() -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(65)
    img_ids = torch.stack(torch.meshgrid(torch.zeros(1), torch.arange(4.0), torch.arange(4.0), indexing="ij"),
                          -1).reshape(16, 3)
    return {"hidden_states": torch.randn(1, 16, 8, generator=g),
            "encoder_hidden_states": torch.randn(1, 5, 16, generator=g),
            "pooled_projections": torch.randn(1, 8, generator=g), "timestep": torch.tensor([0.5]),
            "img_ids": img_ids, "txt_ids": torch.zeros(5, 3)}


def _df(name: str, build, inputs, attention: set[str], impls=("eager", "sdpa"), notes: str = "") -> Case:
    return Case(name, "diffusers", build, inputs, frozenset(attention), impls=impls, notes=notes)


CASES = [
    _df("unet", attention_zoo.unet, attention_zoo.unet_inputs, {"Attention"}, notes="self- and cross-attention"),
    _df("dit", dit, _dit_inputs, {"Attention"}, notes="adaLN-zero blocks, class labels"),
    _df("sd3", sd3, _sd3_inputs, {"Attention"}, impls=("sdpa",),
        notes="joint attention (JointAttnProcessor2_0: image and text streams concatenated)"),
    _df("flux", flux, _flux_inputs, {"FluxAttention"}, impls=("sdpa",),
        notes="FluxAttention via dispatch_attention_fn; double- and single-stream blocks, RoPE"),
]
