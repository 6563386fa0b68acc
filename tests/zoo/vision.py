"""torchvision transformers with random weights: the architectures of vit_b_16, swin_t, swin_v2_t, maxvit_t.

Each is built from the very classes the named constructor uses (``VisionTransformer``,
``SwinTransformer`` with ``SwinTransformerBlock`` / ``SwinTransformerBlockV2``, ``MaxVit``), with small
dimensions and a 32×32 input, so the model code is torchvision's own and a forward takes milliseconds.
torchvision has one implementation per model (called ``"native"`` here): ViT's ``nn.MultiheadAttention``
takes PyTorch's fused path (``need_weights=False``), Swin and MaxViT do their own matmuls.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .base import Case, seeded

__all__ = ["CASES"]


def _images(seed: int, size: int = 32) -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"x": torch.randn(2, 3, size, size, generator=g)}


def _default_init(model: nn.Module) -> nn.Module:
    """PyTorch's default initialisation for every Linear and Conv2d of ``model``.

    torchvision zero-initialises ViT's head (the logits would be its bias alone, the same for every
    input), and the N(0, 0.02) weights of Swin and MaxViT shrink activations of these narrow layers
    (MaxViT's to ~1e-6, below E4M3's smallest subnormal 2^-9): a simulation would flush them to zero.
    """
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            m.reset_parameters()
    return model


@seeded
def vit_b_16(impl: str) -> nn.Module:
    from torchvision.models.vision_transformer import VisionTransformer

    # vit_b_16 is VisionTransformer(patch_size=16, num_layers=12, num_heads=12, hidden_dim=768, mlp_dim=3072)
    m = VisionTransformer(image_size=32, patch_size=16, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32,
                          num_classes=10)
    _default_init(m.heads)
    return m


def _swin(v2: bool) -> nn.Module:
    from torchvision.models import swin_transformer as sw

    # swin_t: SwinTransformer(patch_size=[4, 4], embed_dim=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24],
    # window_size=[7, 7]); swin_v2_t adds block=SwinTransformerBlockV2, downsample_layer=PatchMergingV2
    extra = dict(block=sw.SwinTransformerBlockV2, downsample_layer=sw.PatchMergingV2) if v2 else {}
    return _default_init(sw.SwinTransformer(patch_size=[4, 4], embed_dim=8, depths=[2, 2], num_heads=[1, 2],
                                            window_size=[2, 2], stochastic_depth_prob=0.0, num_classes=10, **extra))


@seeded
def swin_t(impl: str) -> nn.Module:
    return _swin(v2=False)


@seeded
def swin_v2_t(impl: str) -> nn.Module:
    return _swin(v2=True)


@seeded
def maxvit_t(impl: str) -> nn.Module:
    from torchvision.models.maxvit import MaxVit

    # maxvit_t: MaxVit(stem_channels=64, partition_size=7, block_channels=[64, 128, 256, 512],
    # block_layers=[2, 2, 5, 2], head_dim=32, input_size=(224, 224))
    m = MaxVit(input_size=(32, 32), stem_channels=8, partition_size=2, block_channels=[8, 16], block_layers=[1, 1],
               head_dim=4, stochastic_depth_prob=0.0, num_classes=10)
    return _default_init(m)


def _tv(name: str, build, seed: int, attention: set[str], exact=("native",), notes: str = "") -> Case:
    return Case(name, "torchvision", build, lambda: _images(seed), frozenset(attention), impls=("native",),
                exact=exact, notes=notes)


CASES = [
    _tv("tv_vit_b_16", vit_b_16, 51, {"MultiheadAttention"}, exact=(),
        notes="nn.MultiheadAttention (fused: need_weights=False)"),
    _tv("tv_swin_t", swin_t, 53, {"ShiftedWindowAttention"},
        notes="shifted_window_attention(): F.linear(x, self.qkv.weight), matmul, softmax, matmul"),
    _tv("tv_swin_v2_t", swin_v2_t, 55, {"ShiftedWindowAttentionV2"},
        notes="cosine attention (normalised q, k; logit scale); continuous position bias MLP"),
    _tv("tv_maxvit_t", maxvit_t, 57, {"RelativePositionalMultiHeadAttention"},
        notes="block and grid attention; MBConv stem"),
]
