"""Calling a compiled kernel so that one graph serves every call.

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

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

__all__ = ["call"]

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
