"""Layer inputs and outputs: forward pre-hooks and forward hooks (``with_kwargs=True``).

The input point quantizes the layer's first positional argument, as
INT-FP-QSim did (later arguments that are the very same tensor, as in
``mha(x, x, x)``, get the quantized one too), or, when the input is passed by
keyword, the argument named like ``forward``'s first parameter (or the first
tensor keyword). The output point quantizes a tensor output, or the first
tensor of a tuple/list output (the rest are side outputs: attention weights,
caches).

While a layer with an input point runs with grad on, saved quantized tensors are kept as recipes
(re-made in the backward from their unquantized source: :mod:`.formats.saved`), so training does
not keep a quantized copy of every layer input beside the original.

The input of one of PyTorch's own GEMM layers (:data:`READ_ONLY`, not a subclass: its ``forward`` is
known) is only read, so a result known for the same tensor may be given again (:mod:`.reuse`). Their
output is a tensor they just made: when nothing else holds it or its storage (no earlier hook kept it,
a view of it, its ``.data`` or a numpy view; counted by :func:`_holders` against what a fresh output has,
measured once) and autograd does not record it, the output point writes its cast into it
(``QuantPoint(own=True)``): the same bits, no new buffer.
"""

from __future__ import annotations

import inspect
import sys
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.modules import module as torch_module
from torch.nn.utils import parametrize

from .formats import saved
from .points import QuantPoint
from .undo import UndoStack

__all__ = ["attach_input", "attach_output", "READ_ONLY"]

#: layers whose forward only reads its input (exact classes: a subclass may write into it)
READ_ONLY: frozenset[type] = frozenset({nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d,
                                        nn.ConvTranspose2d, nn.ConvTranspose3d})


def _first_param_name(module: nn.Module) -> str | None:
    try:
        params = list(inspect.signature(module.forward).parameters.values())
    except (TypeError, ValueError):
        return None
    for p in params:
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            return p.name
    return None


def attach_input(module: nn.Module, point: QuantPoint) -> UndoStack:
    first = _first_param_name(module)
    scopes: list[bool] = []  # one per running forward of this module (recursion nests them)
    read_only = parametrize.type_before_parametrizations(module) in READ_ONLY

    def pre_hook(mod: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        scopes.append(saved.enter_scope())
        if args:
            x = args[0]
            if isinstance(x, Tensor):
                q = point(x, reuse_ok=read_only)
                # self-attention passes one tensor as query, key and value: keep them one object
                rest = tuple(q if a is x else a for a in args[1:])
                kwargs = {k: (q if v is x else v) for k, v in kwargs.items()}
                return (q,) + rest, kwargs
            return None
        key = first if first in kwargs else next(
            (k for k, v in kwargs.items() if isinstance(v, Tensor) and v.is_floating_point()), None)
        if key is not None and isinstance(kwargs.get(key), Tensor):
            kwargs = dict(kwargs)
            kwargs[key] = point(kwargs[key], reuse_ok=read_only)
            return args, kwargs
        return None

    def end_scope(mod: nn.Module, args: tuple, out: Any) -> None:
        if scopes and scopes.pop():
            saved.exit_scope()

    stack = UndoStack()
    with stack.all_or_nothing():
        stack.push(module.register_forward_pre_hook(pre_hook, with_kwargs=True))
        stack.push(module.register_forward_hook(end_scope, always_call=True))
    return stack


def _map_output(out: Any, point: QuantPoint) -> Any:
    """Quantize the output tensor, or the first tensor of a tuple/list output.

    Only the first: the others are side outputs (attention weights, a KV cache)
    that are not the layer's result.
    """
    if isinstance(out, Tensor):
        return point(out)
    if isinstance(out, (tuple, list)) and not hasattr(out, "_fields"):
        items = list(out)
        for i, o in enumerate(items):
            if isinstance(o, Tensor):
                items[i] = point(o)
                break
        return tuple(items) if isinstance(out, tuple) else items
    return out


def _holders(out: Tensor) -> tuple[int, int, int]:
    """(Python references to ``out``, tensors sharing its storage, Python references to its base), as an output
    hook sees them: anything that kept the output, its base (``F.linear`` of a 3-D input returns a view of a 2-D
    product), a view, its ``.data``, a numpy view or a DLPack capsule adds to one of them."""
    base = out._base
    return (sys.getrefcount(out), torch._C._storage_Use_Count(out.untyped_storage()._cdata),
            0 if base is None else sys.getrefcount(base) - 1)  # - 1: this frame's ``base``


_fresh: dict[bool, tuple[int, int, int]] | None = None
#: PyTorch's hooks on every module that making and running the probe would call
_GLOBAL_HOOKS = ("_global_forward_hooks", "_global_forward_pre_hooks", "_global_module_registration_hooks",
                 "_global_parameter_registration_hooks", "_global_buffer_registration_hooks")


def _fresh_holders(view: bool) -> tuple[int, int, int] | None:
    """:func:`_holders` of an output nobody else holds (a probe Linear's, a plain tensor or, ``view``, the view
    a 3-D input gives, through a hook like the real one): measured, not assumed, so that another Python or
    PyTorch version cannot make a held output look free. ``None`` (nothing is written into) while
    hooks on every module exist (a user's would see the probe) or where the probe's output is not of that kind."""
    global _fresh
    if _fresh is None:
        if any(getattr(torch_module, n) for n in _GLOBAL_HOOKS):
            return None
        seen: dict[bool, tuple[int, int, int]] = {}

        def probe_hook(mod: nn.Module, args: tuple, kwargs: dict, out: Tensor) -> None:
            seen[out._base is not None] = _holders(out)

        probe = nn.Linear(1, 1)
        probe.register_forward_hook(probe_hook, with_kwargs=True)
        with torch.no_grad(), torch._C.DisableTorchFunction():  # no session or user mode sees the probe
            probe(torch.zeros(1, 1))
            probe(torch.zeros(1, 1, 1))
        _fresh = seen
    return _fresh.get(view)


def attach_output(module: nn.Module, point: QuantPoint):
    made_here = parametrize.type_before_parametrizations(module) in READ_ONLY  # they return a tensor just made

    def hook(mod: nn.Module, args: tuple, kwargs: dict, out: Any) -> Any:
        if made_here and type(out) is Tensor and not out.requires_grad and not torch.compiler.is_compiling():
            # (traced: no reference counts, a graph break); a view only of a plain base
            view = out._base is not None
            own = (not view or out._base._base is None) and _holders(out) == _fresh_holders(view)
            return point(out, own=own)  # own decided before out is pushed as point's argument
        return _map_output(out, point)

    return module.register_forward_hook(hook, with_kwargs=True)
