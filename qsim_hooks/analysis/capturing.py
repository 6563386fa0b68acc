"""``capture``: the values some quantization points see before quantizing (for histograms).

Each chosen point gets a function in its ``observer`` slot for the run; the slots are emptied in
``finally`` before the session detaches, so the points and the model are as they were. The result is a
:class:`Captures` mapping: keyed by ``(module, point, tensor)`` and also reachable by the strings
``capture(points=...)`` takes (``cap["layer1.0.conv1:input"]``).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..batches import ForwardLoop
from ..config import QuantConfig
from ..formats import Format
from ..rows import Key, select_points
from ..session import Session
from .feeding import Forward, check_model_cfg, eval_no_grad, make_feed

__all__ = ["Captured", "Captures", "capture"]


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
    def name(self) -> str:
        """The point as ``capture(points=...)`` names it: ``"fc:weight"``, ``"layer1.0.conv1:input"``."""
        return f"{self.module or '<model>'}:{self.tensor if self.point == 'weight' else self.point}"

    @property
    def label(self) -> str:
        where = self.module or "<model>"
        return f"{where}.{self.tensor}" if self.point == "weight" else f"{where} [{self.point}]"


class Captures(dict):
    """``{(module, point, tensor): Captured}`` that also takes the names ``capture(points=...)`` takes:
    ``cap["fc:weight"]``, ``cap["layer1.0.conv1:input"]``, ``cap["fc"]`` (when fc has one captured point),
    ``cap[("fc", "input")]``. Iteration, ``keys()`` and equality are those of the tuple-keyed dict."""

    def _key(self, name: Any) -> Key:
        if dict.__contains__(self, name):
            return name
        if not isinstance(name, (str, tuple)):
            raise KeyError(name)
        try:
            hits = select_points(list(self), name)
        except ValueError as exc:
            raise KeyError(f"{name!r}: {exc}") from None
        if len(hits) > 1:
            raise KeyError(f"{name!r} names {len(hits)} captured points "
                           f"({', '.join(repr(c.name) for c in (self[h] for h in hits))}); say which one")
        return hits[0]

    def __getitem__(self, name: Any) -> Captured:
        return dict.__getitem__(self, self._key(name))

    def __contains__(self, name: object) -> bool:
        try:
            self._key(name)
        except KeyError:
            return False
        return True

    def get(self, name: Any, default: Any = None) -> Any:
        return self[name] if name in self else default

    def __repr__(self) -> str:
        shown = ", ".join(f"{c.name} ({c.numel} values)" for c in list(self.values())[:4])
        return f"<qsim_hooks.Captures: {len(self)} points: {shown}{', ...' if len(self) > 4 else ''}>"


def capture(model: nn.Module, cfg: QuantConfig, batch: Any = None, *, batches: Iterable[Any] | None = None,
            points: Any = None, forward: Forward | None = None, forward_loop: ForwardLoop | None = None,
            calibration: Any = None, max_samples: int = 1 << 20, seed: int = 0,
            progress: bool | None = None) -> Captures:
    """Run the simulated model and keep what the chosen points see (their input, before quantizing).

    Args:
        points: ``None`` (every point) or some of: ``"module"`` (all its
            points), ``"module:input"``, ``"module:output"``, ``"module:weight"``
            (or the weight tensor's name), or ``(module, point[, tensor])``
            (:func:`qsim_hooks.rows.select_points`).
        max_samples: at most this many values kept per point (a uniform random
            sample, seeded by ``seed``, beyond it).
        progress: a bar over the batches (stderr; ``None``: in a terminal, for more than one batch).
        The rest as in :func:`~qsim_hooks.analysis.compare`.

    Returns:
        a :class:`Captures` mapping ``{(module, point, tensor): Captured}`` in model order, which also
        takes the strings of ``points`` as keys.
    """
    check_model_cfg(model, cfg)
    if isinstance(max_samples, bool) or not isinstance(max_samples, int) or max_samples < 1:
        raise ValueError(f"max_samples={max_samples!r} must be a positive int")
    data = make_feed(batch, batches, forward, forward_loop)
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
            data.run(model, progress=progress, label="capturing")
        pts = {k: qs.points[k] for k in keys}
    out = Captures()
    for k in keys:
        chunks, numel, calls = seen[k]
        data = torch.cat(chunks) if chunks else torch.empty(0)
        if data.numel() > max_samples:
            data = data[torch.randint(data.numel(), (max_samples,), generator=gen)]
        qp = pts[k]
        out[k] = Captured(k[0], k[1], k[2], qp.format,
                          None if qp.amax is None else qp.amax.flatten().tolist(), data, numel, calls)
    return out
