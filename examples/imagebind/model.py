"""A CLIP-style image/text model whose trunks are ``nn.MultiheadAttention`` blocks (OpenCLIP's layout).

ImageBind's encoders (``models/transformer.py`` of facebookresearch/ImageBind) are pre-LayerNorm
transformer blocks around ``nn.MultiheadAttention``, with a class token for images and the end-of-text
token for text, projected into a joint space: the same structure as OpenCLIP's ``VisionTransformer``
and ``TextTransformer``. ImageBind's own package is not on PyPI, so the example uses this module, whose
parameter names are OpenCLIP's (``visual.conv1.weight``, ``visual.transformer.resblocks.0.attn.in_proj_weight``,
``token_embedding.weight``, ``text_projection``, ...): an OpenCLIP (or OpenAI CLIP) ViT checkpoint's
state dict loads into it with :func:`from_state_dict`, which reads the sizes from the tensors' shapes.

For the simulator the point is ``nn.MultiheadAttention``: its in-projection weights are parameters of
the attention module itself (no ``nn.Linear``), and its q, k, scores, probs, v, context and out-projection
points are reached by decomposing ``F.multi_head_attention_forward`` (see ``qsim_hooks.attention``).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["TowerConfig", "MhaCLIP", "from_state_dict"]


class QuickGELU(nn.Module):
    """OpenAI CLIP's activation: x * sigmoid(1.702 x)."""

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(1.702 * x)


class ResidualAttentionBlock(nn.Module):
    """Pre-LN block: x + attn(ln_1(x)), then x + mlp(ln_2(x)) (OpenCLIP / ImageBind)."""

    def __init__(self, width: int, heads: int, mlp_ratio: float = 4.0, quick_gelu: bool = False) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ln_2 = nn.LayerNorm(width)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(OrderedDict([("c_fc", nn.Linear(width, hidden)),
                                              ("gelu", QuickGELU() if quick_gelu else nn.GELU()),
                                              ("c_proj", nn.Linear(hidden, width))]))

    def forward(self, x: Tensor, attn_mask: Tensor | None = None) -> Tensor:
        y = self.ln_1(x)
        x = x + self.attn(y, y, y, need_weights=False, attn_mask=attn_mask)[0]
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    def __init__(self, width: int, layers: int, heads: int, quick_gelu: bool = False) -> None:
        super().__init__()
        self.resblocks = nn.ModuleList(ResidualAttentionBlock(width, heads, quick_gelu=quick_gelu)
                                       for _ in range(layers))

    def forward(self, x: Tensor, attn_mask: Tensor | None = None) -> Tensor:
        for block in self.resblocks:
            x = block(x, attn_mask)
        return x


@dataclass(frozen=True)
class TowerConfig:
    """Sizes of both towers (OpenCLIP's ``CLIPVisionCfg`` / ``CLIPTextCfg`` in short)."""

    embed_dim: int = 512
    image_size: int = 224
    patch_size: int = 32
    vision_width: int = 768
    vision_layers: int = 12
    vision_heads: int = 12
    context_length: int = 77
    vocab_size: int = 49408
    text_width: int = 512
    text_layers: int = 12
    text_heads: int = 8
    quick_gelu: bool = False


class VisionTower(nn.Module):
    def __init__(self, c: TowerConfig) -> None:
        super().__init__()
        grid = c.image_size // c.patch_size
        w = c.vision_width
        self.conv1 = nn.Conv2d(3, w, kernel_size=c.patch_size, stride=c.patch_size, bias=False)
        self.class_embedding = nn.Parameter(torch.randn(w) * w ** -0.5)
        self.positional_embedding = nn.Parameter(torch.randn(grid * grid + 1, w) * w ** -0.5)
        self.ln_pre = nn.LayerNorm(w)
        self.transformer = Transformer(w, c.vision_layers, c.vision_heads, c.quick_gelu)
        self.ln_post = nn.LayerNorm(w)
        self.proj = nn.Parameter(torch.randn(w, c.embed_dim) * w ** -0.5)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv1(x).flatten(2).transpose(1, 2)  # (B, grid*grid, width)
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)
        x = self.transformer(self.ln_pre(x))
        return self.ln_post(x[:, 0]) @ self.proj


class MhaCLIP(nn.Module):
    """Image and text towers on ``nn.MultiheadAttention``; OpenCLIP's parameter names."""

    def __init__(self, c: TowerConfig) -> None:
        super().__init__()
        self.config = c
        self.visual = VisionTower(c)
        self.token_embedding = nn.Embedding(c.vocab_size, c.text_width)
        self.positional_embedding = nn.Parameter(torch.randn(c.context_length, c.text_width) * 0.01)
        self.transformer = Transformer(c.text_width, c.text_layers, c.text_heads, c.quick_gelu)
        self.ln_final = nn.LayerNorm(c.text_width)
        self.text_projection = nn.Parameter(torch.randn(c.text_width, c.embed_dim) * c.text_width ** -0.5)
        self.logit_scale = nn.Parameter(torch.tensor(4.6052))  # log(100)
        mask = torch.full((c.context_length, c.context_length), float("-inf")).triu(1)
        self.register_buffer("attn_mask", mask, persistent=False)

    def encode_image(self, pixels: Tensor, normalize: bool = True) -> Tensor:
        x = self.visual(pixels)
        return F.normalize(x, dim=-1) if normalize else x

    def encode_text(self, ids: Tensor, lengths: Tensor, normalize: bool = True) -> Tensor:
        """``ids`` (B, L <= context_length), ``lengths``: tokens per row; the last one (EOT) is pooled."""
        n = ids.shape[1]
        x = self.token_embedding(ids) + self.positional_embedding[:n]
        x = self.ln_final(self.transformer(x, self.attn_mask[:n, :n]))
        x = x[torch.arange(x.shape[0], device=x.device), lengths - 1] @ self.text_projection
        return F.normalize(x, dim=-1) if normalize else x

    def forward(self, pixels: Tensor, ids: Tensor, lengths: Tensor) -> Tensor:
        """Image-to-text logits, ``logit_scale.exp() * image @ text.T`` (CLIP's zero-shot classifier)."""
        return self.logit_scale.exp() * self.encode_image(pixels) @ self.encode_text(ids, lengths).T


def _layers(sd: dict[str, Tensor], prefix: str) -> int:
    idx = {int(k[len(prefix):].split(".")[0]) for k in sd if k.startswith(prefix)}
    return max(idx) + 1 if idx else 0


def from_state_dict(sd: dict[str, Tensor], quick_gelu: bool = False) -> MhaCLIP:
    """An :class:`MhaCLIP` sized from an OpenCLIP / OpenAI CLIP ViT state dict, with its weights loaded."""
    sd = {k.removeprefix("module."): v for k, v in sd.items()}
    if "visual.conv1.weight" not in sd or "token_embedding.weight" not in sd:
        raise ValueError("not an OpenCLIP/OpenAI CLIP ViT state dict: visual.conv1.weight or "
                         "token_embedding.weight is missing")
    vw, patch = sd["visual.conv1.weight"].shape[0], sd["visual.conv1.weight"].shape[-1]
    grid = round((sd["visual.positional_embedding"].shape[0] - 1) ** 0.5)
    tw = sd["token_embedding.weight"].shape[1]
    c = TowerConfig(embed_dim=sd["text_projection"].shape[1], image_size=grid * patch, patch_size=patch,
                    vision_width=vw, vision_layers=_layers(sd, "visual.transformer.resblocks."),
                    vision_heads=max(1, vw // 64), context_length=sd["positional_embedding"].shape[0],
                    vocab_size=sd["token_embedding.weight"].shape[0], text_width=tw,
                    text_layers=_layers(sd, "transformer.resblocks."), text_heads=max(1, tw // 64),
                    quick_gelu=quick_gelu)
    model = MhaCLIP(c)
    known = set(model.state_dict())
    missing, unexpected = model.load_state_dict({k: v for k, v in sd.items() if k in known}, strict=False)
    if missing:
        raise ValueError(f"the state dict lacks {len(missing)} tensors, e.g. {missing[:3]}")
    return model
