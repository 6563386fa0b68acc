"""A model file for the command line: a small CNN classifier on synthetic 3 x 32 x 32 images.

    qsim-hooks report --model examples/small_cnn.py
    qsim-hooks sensitivity --model examples/small_cnn.py --input int8 --weight int4
    qsim-hooks report --model examples/small_cnn.py --histogram blocks.0.conv1:input

``--model FILE.py`` reads ``model`` (or ``build_model()``) and ``batches`` (or ``get_batches()``) from the
file, and optionally ``metric(model, batches) -> float``, ``forward(model, batch)`` and
``output(model_output) -> tensor``. Here: random weights (seed 0; modules ``stem.0``, ``blocks.0.conv1``,
``blocks.0.conv2``, ``blocks.1.conv1``, ``blocks.1.conv2``, ``head.fc``) and two seeded batches of 8 images of
N(0, 1) noise: enough to see how each format treats each layer, nothing about accuracy.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["SmallCNN", "model", "batches"]


class _Block(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv2(torch.relu(self.conv1(x))))


class SmallCNN(nn.Module):
    """stem (conv), two blocks of two convs (the first strided), head (pool, flatten, fc); 10 classes."""

    def __init__(self, classes: int = 10, width: int = 16) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU())
        self.blocks = nn.Sequential(_Block(width, 2 * width), _Block(2 * width, 4 * width))
        self.head = nn.Sequential()
        self.head.add_module("pool", nn.AdaptiveAvgPool2d(1))
        self.head.add_module("flatten", nn.Flatten())
        self.head.add_module("fc", nn.Linear(4 * width, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)))


torch.manual_seed(0)
model = SmallCNN().eval()
_gen = torch.Generator().manual_seed(0)
batches = [torch.randn(8, 3, 32, 32, generator=_gen) for _ in range(2)]
