"""Calling a compiled kernel so that one graph serves every call; kernels' names, in-place variants, and the
inductor settings they are compiled with.

torch.compile guards a graph on more than the shapes a kernel is compiled for (``dynamic=True``): on the
view structure of its arguments (a reshaped tensor's ``_base``: its rank and strides) and on the
torch-function modes on the stack (a session's interception, an attention scope) and on whether torch
functions are disabled (quantization points call formats so). Any of these differing
from the call that compiled the graph compiles another graph of the same kernel, and every later call
walks the list of graphs, checking each one's guards, until one matches. The kernels are element-wise
functions of their arguments' values, so none of it matters to them: they are called here with plain
(detached, non-view) tensors, with no torch-function mode on the stack and torch functions disabled, and
one graph per kernel is compiled and found first.
"""

from __future__ import annotations

import types
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

__all__ = ["call", "named_copy", "into_variant", "EXACT_OPTIONS"]

#: inductor settings the kernels' exactness rests on, pinned for the kernels compiled here whatever the user
#: set: no reassociation and no FMA contraction in C++ (``(x + c) - c`` is the magic kernel's rounding).
#: Triton's own contraction is left on: turning it off (``emulate_precision_casts``) made the CPU's two-thread
#: bit kernel 1.7x slower; the magic kernel has a clamp between any multiply and its addition (and kernels._kind
#: keeps scaled kernels traced into a user's compile on the step kernel all the same).
EXACT_OPTIONS = {"cpp.enable_unsafe_math_opt_flag": False, "cpp.enable_floating_point_contract_flag": "off"}

_len, _pop, _push = torch._C._len_torch_function_stack, torch._C._pop_torch_function_stack, \
    torch._C._push_on_torch_function_stack
_disabled = torch._C.DisableTorchFunction


def _plain(a: Any) -> Any:
    return a.detach() if isinstance(a, Tensor) and a._base is not None else a


def call(cfn: Callable[..., Tensor], args: tuple) -> Tensor:
    """``cfn(*args)`` with view-free arguments, torch functions disabled and an empty torch-function mode
    stack (restored after, also when ``cfn`` raises)."""
    n = _len()
    modes = [_pop() for _ in range(n)]
    try:
        with _disabled():
            return cfn(*(_plain(a) for a in args))
    finally:
        for m in reversed(modes):
            _push(m)


def named_copy(fn: Callable, name: str) -> Callable:
    """``fn`` with its own code object named ``name``.

    Dynamo caches compiled graphs per code object: closures made by one factory
    share one, and their guards would pile onto one cache entry list.
    """
    code = fn.__code__.replace(co_name=name, co_qualname=name) if hasattr(fn.__code__, "co_qualname") \
        else fn.__code__.replace(co_name=name)
    return types.FunctionType(code, fn.__globals__, name, fn.__defaults__, fn.__closure__)


def into_variant(fn: Callable[..., Tensor]) -> Callable[..., None]:
    """``fn`` writing its result into its first argument (an element-wise kernel, same shape and dtype out):
    compiled, one loop reads and overwrites each element, with no new buffer (so no page faults for one,
    and half the memory traffic of a fresh output); it returns nothing (``x`` is the result)."""
    def kernel(x: Tensor, *args: Tensor) -> None:
        x.copy_(fn(x, *args))
    return named_copy(kernel, f"{fn.__name__}_into")
