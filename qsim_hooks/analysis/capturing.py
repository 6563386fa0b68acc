"""``capture``: the values some quantization points see before quantizing (for histograms).

Each chosen point gets a function in its ``observer`` slot for the run; the slots are emptied in
``finally`` before the session detaches, so the points and the model are as they were.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..batches import default_forward
from ..config import QuantConfig
from ..formats import Format
from ..rows import Key, select_points
from ..session import Session
from .feeding import Forward, batch_list, check_model_cfg, eval_no_grad

__all__ = ["Captured", "capture"]


@dataclass
class Captured:
    """The values one quantization point saw.

    Attributes:
        module, point, tensor: the point (as in ``Session.stats()`` rows).
        format: its format.
        amax: the static (calibrated) amax, flattened, or ``None`` (dynamic).
        data: 1-D float32 CPU tensor of the values seen, before quantization:
            every element of every call, or a uniform random sample of
            ``max_samples`` of them when there were more. A weight is taken once.
        numel: how many elements were seen in all.
        calls: how many tensors were seen.
    """

    module: str
    point: str
    tensor: str
    format: Format | None
    amax: list[float] | None
    data: Tensor
    numel: int
    calls: int

    @property
    def key(self) -> Key:
        return (self.module, self.point, self.tensor)

    @property
    def label(self) -> str:
        where = self.module or "<model>"
        return f"{where}.{self.tensor}" if self.point == "weight" else f"{where} [{self.point}]"


def capture(model: nn.Module, cfg: QuantConfig, batch: Any = None, *, batches: Iterable[Any] | None = None,
            points: Any = None, forward: Forward | None = None, calibration: Any = None,
            max_samples: int = 1 << 20, seed: int = 0) -> dict[Key, Captured]:
    """Run the simulated model and keep what the chosen points see (their input, before quantizing).

    Args:
        points: ``None`` (every point) or some of: ``"module"`` (all its
            points), ``"module:input"``, ``"module:output"``, ``"module:weight"``
            (or the weight tensor's name), or ``(module, point[, tensor])``
            (:func:`qsim_hooks.rows.select_points`).
        max_samples: at most this many values kept per point (a uniform random
            sample, seeded by ``seed``, beyond it).
        The rest as in :func:`~qsim_hooks.analysis.compare`.

    Returns:
        ``{(module, point, tensor): Captured}`` in model order.
    """
    check_model_cfg(model, cfg)
    if isinstance(max_samples, bool) or not isinstance(max_samples, int) or max_samples < 1:
        raise ValueError(f"max_samples={max_samples!r} must be a positive int")
    bl = batch_list(batch, batches)
    fwd = forward or default_forward
    gen = torch.Generator().manual_seed(seed)
    seen: dict[Key, list[Any]] = {}  # key -> [chunks, numel, calls]

    def sample(x: Tensor) -> Tensor:
        flat = x.detach().flatten().float().cpu()
        if flat.numel() > max_samples:
            flat = flat[torch.randint(flat.numel(), (max_samples,), generator=gen)]
        return flat

    with eval_no_grad(model), Session(model, cfg, calibration=calibration) as qs:
        keys = select_points(list(qs.points), points)
        seen.update({k: [[], 0, 0] for k in keys})

        def observe(x: Any, k: Key) -> None:
            if not isinstance(x, Tensor) or not x.is_floating_point():
                return
            s = seen[k]
            if k[1] == "weight" and s[2]:
                return  # a weight is the same tensor on every call
            s[0].append(sample(x))
            s[1] += x.numel()
            s[2] += 1

        with qs.observe({k: functools.partial(observe, k=k) for k in keys}):
            for b in bl:
                fwd(model, b)
        pts = {k: qs.points[k] for k in keys}
    out = {}
    for k in keys:
        chunks, numel, calls = seen[k]
        data = torch.cat(chunks) if chunks else torch.empty(0)
        if data.numel() > max_samples:
            data = data[torch.randint(data.numel(), (max_samples,), generator=gen)]
        qp = pts[k]
        out[k] = Captured(k[0], k[1], k[2], qp.format,
                          None if qp.amax is None else qp.amax.flatten().tolist(), data, numel, calls)
    return out
