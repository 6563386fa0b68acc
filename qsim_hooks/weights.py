"""Weights: a parametrization that fake-quantizes a weight tensor.

Registered with ``torch.nn.utils.parametrize`` and no ``right_inverse``, so
``parametrizations.<name>.original`` is the user's own Parameter object,
never quantized. Removal restores exactly that object (same ``id``), which
keeps optimizers and checkpoints valid; a user's own parametrizations on the
same tensor are left in place.

Without autograd the quantized weight is cached and recomputed only when the
parameter changes (its version counter, storage, dtype or device) or the
point's static amax changes; with autograd it is recomputed on every forward
and gradients reach the original through the format's estimator.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from . import distributed
from .points import QuantPoint
from .undo import Undo

__all__ = ["WeightQuantizer", "attach_weight"]


class WeightQuantizer(nn.Module):
    """The parametrization module: ``forward(original) -> fake-quantized weight``."""

    def __init__(self, point: QuantPoint) -> None:
        super().__init__()
        self.point = point
        # (key, quantized weight): a tuple, so that caching the Parameter itself (format off while an
        # observer is lent) never registers it as a parameter of this module
        self._cache: tuple[tuple, Tensor] | None = None
        self.hits = 0

    def forward(self, w: Tensor) -> Tensor:
        p = self.point
        if p.format is None and p.observer is None:
            return w
        quant = partial(distributed.quantize_dtensor, p) if distributed.is_dtensor(w) else p
        if (torch.is_grad_enabled() and w.requires_grad) or torch.compiler.is_compiling():
            return quant(w)
        lw = distributed.local_tensor(w)  # a DTensor's cache keys on its rank's data
        try:
            key = (lw._version, lw.data_ptr(), w.dtype, w.device, tuple(w.shape), p.version, id(p.format))
        except RuntimeError:  # inference tensors have no version counter
            return quant(w)
        cache = self._cache
        if cache is not None and cache[0] == key and p.observer is None:
            self.hits += 1
            return cache[1]
        out = quant(w)
        self._cache = (key, out)
        return out

    def extra_repr(self) -> str:
        return f"{self.point.describe()}: {self.point.format.name if self.point.format else 'fp'}"


def _remove(module: nn.Module, name: str, pmod: WeightQuantizer, order: tuple[list[str], list[str]]) -> None:
    """Take ``pmod`` off ``module.<name>``; the last one off restores the Parameter and the state_dict order."""
    plist = getattr(getattr(module, "parametrizations", None), name, None) if \
        parametrize.is_parametrized(module, name) else None
    if plist is not None:
        idx = next((i for i, p in enumerate(plist) if p is pmod), None)
        if idx is not None:
            if len(plist) == 1:
                distributed.remove_parametrization(module, name)  # also under FSDP's wrapper class
                _reorder(module._parameters, order[0])  # state_dict key order as it was
                _reorder(module._buffers, order[1])
            else:
                del plist[idx]
    pmod._cache = None


def _reorder(d: dict, order: list[str]) -> None:
    if list(d) == order:
        return
    items = dict(d)
    d.clear()
    for k in order:
        if k in items:
            d[k] = items.pop(k)
    d.update(items)


_real_maybe_set = parametrize._maybe_set


def _maybe_set_unless_same(dest: Tensor, src: Tensor) -> None:
    if dest is src:
        return  # ``original.set_(original)`` changes nothing but the grad accumulator
    _real_maybe_set(dest, src)


def attach_weight(module: nn.Module, name: str, point: QuantPoint) -> Undo:
    """Register the quantizer on ``module.<name>``.

    ``register_parametrization`` calls ``original.set_(original)`` when there is no
    ``right_inverse``: a no-op for the values, but it gives the Parameter a new
    AccumulateGrad node, and DistributedDataParallel's gradient hooks sit on the
    old one (its all-reduce would never fire). That self-assignment is skipped
    here, by a patch scoped to this call and restored in ``finally``.
    """
    order = (list(module._parameters), list(module._buffers))
    pmod = WeightQuantizer(point)
    parametrize._maybe_set = _maybe_set_unless_same
    try:
        parametrize.register_parametrization(module, name, pmod, unsafe=True)
    finally:
        parametrize._maybe_set = _real_maybe_set
    return Undo(partial(_remove, module, name, pmod, order))
