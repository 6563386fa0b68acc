"""Weights: a parametrization that fake-quantizes a weight tensor.

Registered with ``torch.nn.utils.parametrize`` and no ``right_inverse``, so
``parametrizations.<name>.original`` is the user's own Parameter object,
never quantized. Removal restores exactly that object (same ``id``), which
keeps optimizers and checkpoints valid; a user's own parametrizations on the
same tensor are left in place, and a plain checkpoint (``<name>`` where the
session has ``parametrizations.<name>.original``) loads inside a session.

The weight is quantized at every access, with or without autograd: there is
no cache. A cache keyed on the version counter served a stale weight after
writes that bump none (``p.data.mul_``, an EMA through ``.data``, numpy
views, writes into the returned weight). A cache that compares the weight with
a copy would see every write but keeps two extra copies of each weight; the
cost of having none is measured by ``tools/bench_weight_cache.py`` (README,
Benchmarks).

Weights qsim-hooks cannot instrument are refused at attach with the module's
name and the cause: complex weights, and weights that are a plain attribute
recomputed by a forward pre-hook (the old ``torch.nn.utils.weight_norm``,
``torch.nn.utils.prune``).
"""

from __future__ import annotations

from functools import partial

from torch import Tensor, nn
from torch.nn.utils import parametrize, prune
from torch.nn.utils.weight_norm import WeightNorm

from . import distributed
from .points import QuantPoint
from .undo import UndoStack

__all__ = ["WeightQuantizer", "attach_weight", "check_weight"]


class WeightQuantizer(nn.Module):
    """The parametrization module: ``forward(original) -> fake-quantized weight``."""

    def __init__(self, point: QuantPoint) -> None:
        super().__init__()
        self.point = point

    def forward(self, w: Tensor) -> Tensor:
        p = self.point
        if p.format is None and p.observer is None:
            return w
        quant = partial(distributed.quantize_dtensor, p) if distributed.is_dtensor(w) else p
        return quant(w)

    def extra_repr(self) -> str:
        return f"{self.point.describe()}: {self.point.format.name if self.point.format else 'fp'}"


def check_weight(module: nn.Module, name: str, label: str) -> None:
    """Raise (naming ``label``, the module's path) if ``module.<name>`` is a weight qsim-hooks cannot instrument."""
    for hook in module._forward_pre_hooks.values():
        if isinstance(hook, WeightNorm) and hook.name == name:
            raise ValueError(
                f"{label}: the module uses the hook-based torch.nn.utils.weight_norm (a forward pre-hook "
                f"recomputes {name!r} from {name}_g and {name}_v before every call), so {name!r} is no Parameter "
                "to instrument; use torch.nn.utils.parametrizations.weight_norm instead (the quantizer then "
                "applies to the normalized weight) or torch.nn.utils.remove_weight_norm first")
        if isinstance(hook, prune.BasePruningMethod) and hook._tensor_name == name:
            raise ValueError(
                f"{label}: the module is pruned with torch.nn.utils.prune (a forward pre-hook recomputes "
                f"{name!r} as {name}_orig * {name}_mask before every call), so {name!r} is no Parameter to "
                f"instrument; make the pruning permanent with torch.nn.utils.prune.remove(module, {name!r}) "
                "first (the pruned zeros stay zero in every format)")
    if not parametrize.is_parametrized(module, name) and name not in module._parameters and \
            name not in module._buffers:
        raise ValueError(f"{label}: {name!r} is a plain attribute of the module, not a Parameter or buffer, so "
                         "it cannot be parametrized; register it with nn.Parameter or register_buffer")
    t = getattr(module, name)
    if isinstance(t, Tensor) and t.is_complex():
        raise TypeError(f"{label}: the weight is complex ({t.dtype}); qsim-hooks formats quantize real floating "
                        "tensors only (a complex value has no single grid); switch the module off with "
                        "Rule(match=..., enabled=False)")


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


def _reorder(d: dict, order: list[str]) -> None:
    if list(d) == order:
        return
    items = dict(d)
    d.clear()
    for k in order:
        if k in items:
            d[k] = items.pop(k)
    d.update(items)


def _load_plain_key(name: str, module: nn.Module, state_dict: dict, prefix: str, *args: object) -> None:
    """A load_state_dict pre-hook: a checkpoint's ``<prefix><name>`` goes to the parametrization's original."""
    plain, original = prefix + name, f"{prefix}parametrizations.{name}.original"
    if plain in state_dict and original not in state_dict:
        state_dict[original] = state_dict.pop(plain)


_real_maybe_set = parametrize._maybe_set


def _maybe_set_unless_same(dest: Tensor, src: Tensor) -> None:
    if dest is src:
        return  # ``original.set_(original)`` changes nothing but the grad accumulator
    _real_maybe_set(dest, src)


def attach_weight(module: nn.Module, name: str, point: QuantPoint) -> UndoStack:
    """Register the quantizer on ``module.<name>`` (refused by :func:`check_weight` first).

    ``register_parametrization`` calls ``original.set_(original)`` when there is no
    ``right_inverse``: a no-op for the values, but it gives the Parameter a new
    AccumulateGrad node, and DistributedDataParallel's gradient hooks sit on the
    old one (its all-reduce would never fire). That self-assignment is skipped
    here, by a patch scoped to this call and restored in ``finally``.
    """
    check_weight(module, name, point.describe())
    order = (list(module._parameters), list(module._buffers))
    first = not parametrize.is_parametrized(module, name)  # the checkpoint then has the plain key
    pmod = WeightQuantizer(point)
    undo = UndoStack()
    with undo.all_or_nothing():
        parametrize._maybe_set = _maybe_set_unless_same
        try:
            parametrize.register_parametrization(module, name, pmod, unsafe=True)
        finally:
            parametrize._maybe_set = _real_maybe_set
        undo.callback(_remove, module, name, pmod, order)
        if first:
            undo.push(module.register_load_state_dict_pre_hook(partial(_load_plain_key, name)))
    return undo
