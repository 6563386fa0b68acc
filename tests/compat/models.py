"""The models of the golden data, rebuilt from their seeds (shared by the tests and tools/compat_golden).

Plain torch / torchvision / transformers, no qsim_hooks: ``tools/compat_golden/make_golden.py`` imports
this module in the old tool's venv to build the very models the tests rebuild; ``fingerprint`` proves
that a rebuilt model is the one the golden data was made with.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["resnet18", "encoder", "bert", "CalibNet", "calib_net", "fingerprint"]


def fingerprint(model: nn.Module) -> torch.Tensor:
    """Sum, sum of squares and first value of every float tensor of the state dict (float64)."""
    out = []
    for v in model.state_dict().values():
        if v.is_floating_point() and v.numel():
            d = v.double()
            out += [d.sum().item(), (d * d).sum().item(), d.flatten()[0].item()]
    return torch.tensor(out, dtype=torch.float64)


def resnet18() -> nn.Module:
    """torchvision's resnet18 with random weights (seed 0), eval mode."""
    import torchvision  # deferred: torchvision is only needed by these tests

    torch.manual_seed(0)
    return torchvision.models.resnet18().eval()


def encoder() -> nn.Module:
    """A 2-layer nn.TransformerEncoder (seed 0), sequence first: no fast path, the MHA forward runs."""
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(d_model=16, nhead=2, dim_feedforward=32, dropout=0.0)
    return nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False).eval()


def bert() -> nn.Module:
    """A tiny BertModel (seed 0) with eager attention."""
    from transformers import BertConfig, BertModel  # deferred: transformers is a test-only dependency

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=37, max_position_embeddings=64, attn_implementation="eager")
    return BertModel(cfg).eval()


class CalibNet(nn.Module):
    """Conv2d, ConvTranspose2d, Conv1d and Linear: the four layer types the old calibration knows."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3)
        self.convt = nn.ConvTranspose2d(6, 4, 3)
        self.conv1d = nn.Conv1d(4, 5, 3)
        self.fc = nn.Linear(5 * 62, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv(x))
        h = self.convt(h)
        h = self.conv1d(h.flatten(2))
        return self.fc(h.flatten(1))


def calib_net() -> nn.Module:
    torch.manual_seed(0)
    return CalibNet().eval()


def attention_modules() -> dict[str, tuple[nn.Module, dict[str, torch.Tensor]]]:
    """One tiny random module (eval, eager) per attention class of the old default mapping that transformers 5
    and diffusers still have and INT-FP-QSim's replacement can run on, with its inputs (seed 0 each). Not
    here: OPTAttention and CodeGenAttention (their old ``from_float`` needs transformers 4's constructor
    and attributes), DetrAttention and GraphormerMultiheadAttention (gone from transformers 5).

    Head sizes of 16 (scale 1/4) make the old ``q * scale`` then ``Q·Kᵀ`` and today's ``Q·Kᵀ * scale``
    the same arithmetic (the README's compatibility section says what a head size that is not a power of 4
    does).
    """
    from diffusers.models.attention_processor import Attention  # deferred: test-only dependencies
    from transformers import MaskFormerSwinConfig
    from transformers.models.maskformer.modeling_maskformer_swin import MaskFormerSwinSelfAttention

    out = {}
    g = torch.Generator().manual_seed(6)
    torch.manual_seed(0)
    scfg = MaskFormerSwinConfig(attn_implementation="eager")
    out["MaskFormerSwinSelfAttention"] = (MaskFormerSwinSelfAttention(scfg, dim=32, num_heads=2, window_size=2).eval(),
                                          {"hidden_states": torch.randn(3, 4, 32, generator=g)})
    torch.manual_seed(0)
    out["Attention"] = (Attention(32, heads=2, dim_head=16).eval(),
                        {"hidden_states": torch.randn(2, 6, 32, generator=g)})
    torch.manual_seed(0)  # head size 8: the old scaled scores and today's scaled product differ in rounding
    out["Attention-head8"] = (Attention(32, heads=4, dim_head=8).eval(),
                              {"hidden_states": torch.randn(2, 6, 32, generator=g)})
    return out
