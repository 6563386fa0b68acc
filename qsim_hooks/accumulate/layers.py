"""Linear and convolution layers as the GEMM :func:`~.engine.matmul_with_overflow` runs.

A convolution is its im2col GEMM: ``torch.nn.functional.unfold`` lays each receptive field out along the
reduction axis in (input channel, kernel row, kernel column) order, which is the order the sums follow;
groups are separate GEMMs. Conv1d runs as a Conv2d of height 1. What cannot be rebuilt here (Conv3d,
transposed convolutions, non-zero padding modes) is reported by :func:`unsupported`, never summed exactly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .engine import matmul_with_overflow
from .spec import Accumulator

__all__ = ["linear", "conv2d", "module_gemm", "unsupported", "SUPPORTED"]

SUPPORTED = (nn.Linear, nn.Conv1d, nn.Conv2d)


def linear(x: Tensor, weight: Tensor, bias: Tensor | None, acc: Accumulator) -> tuple[Tensor, Tensor]:
    """``F.linear`` with simulated sums (reduction over the input features in index order); the overflow mask."""
    lead = x.shape[:-1]
    y, over = matmul_with_overflow(x.reshape(-1, x.shape[-1]), weight.t(), acc, bias)
    return y.reshape(*lead, weight.shape[0]), over.reshape(*lead, weight.shape[0])


def _pair(v: int | tuple[int, ...]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[-1]))


def conv2d(x: Tensor, weight: Tensor, bias: Tensor | None, acc: Accumulator, stride: tuple[int, int] = (1, 1),
           padding: tuple[int, int] = (0, 0), dilation: tuple[int, int] = (1, 1),
           groups: int = 1) -> tuple[Tensor, Tensor]:
    """``F.conv2d`` (zero padding) as im2col GEMMs with simulated sums; the overflow mask."""
    unbatched = x.dim() == 3
    if unbatched:
        x = x.unsqueeze(0)
    n, c, h, w = x.shape
    o, cg, kh, kw = weight.shape
    oh = (h + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    ow = (w + 2 * padding[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    og = o // groups
    outs, overs = [], []
    for g in range(groups):
        cols = F.unfold(x[:, g * cg:(g + 1) * cg], (kh, kw), dilation=dilation, padding=padding, stride=stride)
        wg = weight[g * og:(g + 1) * og].reshape(og, -1)
        bg = None if bias is None else bias[g * og:(g + 1) * og, None]
        y, ov = matmul_with_overflow(wg, cols, acc, bg)  # (N, og, L)
        outs.append(y)
        overs.append(ov)
    y, over = (torch.cat(t, dim=1).reshape(n, o, oh, ow) for t in (outs, overs))
    return (y[0], over[0]) if unbatched else (y, over)


def unsupported(module: nn.Module) -> str | None:
    """Why ``module``'s GEMM cannot be rebuilt here (``None``: it can)."""
    if isinstance(module, (nn.Conv1d, nn.Conv2d)) and module.padding_mode != "zeros":
        return f"padding_mode={module.padding_mode!r} (only 'zeros' is rebuilt)"
    if isinstance(module, SUPPORTED):
        return None
    return (f"{type(module).__name__}: its own products (attention matmuls, a custom op) are not rebuilt; "
            "only Linear, Conv1d and Conv2d are")


def _conv_padding(module: nn.Conv1d | nn.Conv2d, x: Tensor) -> tuple[Tensor, tuple[int, int]]:
    if isinstance(module.padding, str):  # 'same' / 'valid': the module's own explicit padding
        return F.pad(x, module._reversed_padding_repeated_twice), (0, 0)
    return x, _pair(module.padding)


def module_gemm(module: nn.Module, x: Tensor, acc: Accumulator) -> tuple[Tensor, Tensor]:
    """``module(x)``'s GEMM with simulated sums, from the module's (possibly parametrized) weight and bias."""
    weight, bias = module.weight, module.bias
    if isinstance(module, nn.Linear):
        return linear(x, weight, bias, acc)
    if isinstance(module, nn.Conv1d):
        x, pad = _conv_padding(module, x)
        y, over = conv2d(x.unsqueeze(-2), weight.unsqueeze(-2), bias, acc, (1, module.stride[0]), (0, pad[1]),
                         (1, module.dilation[0]), module.groups)
        return y.squeeze(-2), over.squeeze(-2)
    if isinstance(module, nn.Conv2d):
        x, pad = _conv_padding(module, x)
        return conv2d(x, weight, bias, acc, _pair(module.stride), pad, _pair(module.dilation), module.groups)
    raise TypeError(unsupported(module))
