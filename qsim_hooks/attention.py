"""Attention internals: Q, K, scores, probs, V and context, reached by scoped interception.

An attention layer computes two matmuls no Linear hook sees: ``scores = Q·Kᵀ``
and ``context = P·V``. While (and only while) an attention module runs, a
:class:`AttentionScope` (a ``TorchFunctionMode`` entered by the module's
forward pre-hook and left by its forward hook, ``always_call=True`` so an
exception cannot leave it on the stack) intercepts the calls the module makes:

* ``torch.matmul``, the ``@`` operator, ``torch.bmm``, ``torch.baddbmm`` and
  two-operand ``torch.einsum`` (and their Tensor methods): calls are taken in
  pairs, the first of a pair is ``Q·Kᵀ`` (its operands are the ``q`` and ``k``
  points, its result ``scores``), the second ``P·V`` (operands ``probs`` and
  ``v``, result ``context``). This is how eager attention is written in
  transformers, diffusers and torchvision; a module whose matmuls do not come
  in such pairs needs its own rule.
* ``F.scaled_dot_product_attention`` and ``F.multi_head_attention_forward``
  (``nn.MultiheadAttention``) are handed to :mod:`.decompose`, which computes
  them as explicit math so their scores and probabilities can be quantized.

A module that applies a child Linear itself (``nn.MultiheadAttention`` passes
``out_proj.weight`` to a functional call) never runs that child's hooks.
:data:`FUNCTIONAL_CHILDREN` names such children; the scope applies their
input/output points where the decomposition calls ``F.linear``, and a module
with such a child gets a scope even when its six points are off.

``scores`` is the result of the first call of a pair: the raw product ``Q·Kᵀ``
for matmul/bmm/einsum and in the decompositions (before the softmax scale and
masks, as ``torch.matmul(q, k.T) * scaling`` is in eager code), and for
``baddbmm`` whatever the model folded into that call (``beta·bias + alpha·Q·Kᵀ``:
diffusers' eager processor folds the scale, BLOOM its ALiBi bias); splitting it
would make those models' identity runs differ from the originals. ``probs`` is
the softmax output after dropout. Block formats run along each operand's reduction axis:
the last axis of ``q``, ``k`` (as ``(…, S, E)``), ``probs`` and ``context``, the
sequence axis of ``v``; a ``kᵀ`` operand is quantized along its axis -2.

Nested attention modules: only the outermost scope on a thread intercepts
(modules found by the class-name pattern are leaves, so this happens only
with user rules). The mode stack is thread-local: a thread running the model
outside the context is unaffected.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from .config import ATTENTION_POINTS
from .decompose import AttentionPoints, Borrowed, is_float, mha_decomposed, sdpa_decomposed
from .points import QuantPoint
from .undo import UndoStack

__all__ = ["ATTENTION_POINTS", "AttentionScope", "attach_attention", "sdpa_decomposed", "mha_decomposed",
           "FUNCTIONAL_CHILDREN", "Borrowed", "borrowed_points", "borrowing_modules"]

Key = tuple[str, str, str]

#: module type -> its child layers that the module applies itself through ``F.linear`` (their weight passed
#: to a functional call), so the children's own hooks never fire. The hook point for recognising any
#: functional use of a registered layer's weight (issue 11): fill this from what a scope observes.
FUNCTIONAL_CHILDREN: dict[type, tuple[str, ...]] = {nn.MultiheadAttention: ("out_proj",)}

_MATMULS = {torch.matmul, Tensor.matmul, Tensor.__matmul__, torch.bmm, Tensor.bmm}
_RMATMULS = {Tensor.__rmatmul__}
_BADDBMM = {torch.baddbmm, Tensor.baddbmm}
_EINSUM = {torch.einsum}
_SDPA = {F.scaled_dot_product_attention}
_MHA = {F.multi_head_attention_forward}

_local = threading.local()


def _stack() -> list:
    s = getattr(_local, "stack", None)
    if s is None:
        s = _local.stack = []
    return s


def _child(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def borrowed_points(module: nn.Module, name: str, points: Mapping[Key, QuantPoint]) -> dict[str, Borrowed]:
    """``module``'s functionally applied children (:data:`FUNCTIONAL_CHILDREN`) that have an input/output point."""
    out = {}
    for base in type(module).__mro__:
        for child in FUNCTIONAL_CHILDREN.get(base, ()):
            full = _child(name, child)
            b = Borrowed(points.get((full, "input", "input")), points.get((full, "output", "output")))
            if b.input is not None or b.output is not None:
                out[child] = b
    return out


def borrowing_modules(modules: Mapping[str, nn.Module], points: Mapping[Key, QuantPoint]) -> list[str]:
    """The names of ``modules`` that need a scope for their borrowed children's points alone."""
    return [n for n, m in modules.items() if borrowed_points(m, n, points)]


class AttentionScope(TorchFunctionMode):
    """Intercepts an attention module's matmul / SDPA / MHA calls while it runs."""

    def __init__(self, name: str, pts: AttentionPoints) -> None:
        super().__init__()
        self.name = name
        self.pts = pts
        self.matmuls = 0
        self.intercepted = 0

    def _pair(self, a: Tensor, b: Tensor, call) -> Tensor:
        first = self.matmuls % 2 == 0
        self.matmuls += 1
        self.intercepted += 1
        if first:
            a = self.pts.apply("q", a, -1)
            b = self.pts.apply("k", b, -2)
            return self.pts.apply("scores", call(a, b), -1)
        a = self.pts.apply("probs", a, -1)
        b = self.pts.apply("v", b, -2)
        return self.pts.apply("context", call(a, b), -1)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _MATMULS and len(args) == 2 and not kwargs and is_float(args[0]) and is_float(args[1]):
            return self._pair(args[0], args[1], lambda x, y: func(x, y))
        if func in _RMATMULS and len(args) == 2 and is_float(args[0]) and is_float(args[1]):
            return self._pair(args[1], args[0], lambda x, y: func(y, x))
        if func in _BADDBMM:
            # operands positional or by keyword (BLOOM: ``alibi.baddbmm(batch1=q, batch2=k, beta=..., alpha=...)``)
            ops = list(args[:3])
            kw = dict(kwargs)
            for n in ("input", "batch1", "batch2")[len(ops):]:
                if n in kw:
                    ops.append(kw.pop(n))
            if len(ops) == 3 and is_float(ops[1]) and is_float(ops[2]):
                rest = args[3:]
                return self._pair(ops[1], ops[2], lambda x, y: func(ops[0], x, y, *rest, **kw))
        if func in _EINSUM and args and isinstance(args[0], str):
            ops = args[1] if len(args) == 2 and isinstance(args[1], (list, tuple)) else args[1:]
            if len(ops) == 2 and is_float(ops[0]) and is_float(ops[1]):
                eq = args[0]
                # einsum operands: the reduction axis is not known in general; blocks run along -1
                first = self.matmuls % 2 == 0
                self.matmuls += 1
                self.intercepted += 1
                na, nb, out = ("q", "k", "scores") if first else ("probs", "v", "context")
                x = self.pts.apply(na, ops[0], -1)
                y = self.pts.apply(nb, ops[1], -1)
                return self.pts.apply(out, func(eq, x, y, **kwargs), -1)
        if func in _SDPA:
            self.intercepted += 1
            return sdpa_decomposed(self.pts, *args, **kwargs)
        if func in _MHA:
            self.intercepted += 1
            return mha_decomposed(self.pts, *args, **kwargs)
        return func(*args, **kwargs)


def attach_attention(module: nn.Module, name: str, points: Mapping[str, QuantPoint | None],
                     borrowed: Mapping[str, Borrowed] | None = None) -> UndoStack:
    """Enter a scope for ``module``'s forward; warn once if nothing was intercepted."""
    pts = AttentionPoints(points, borrowed)
    warned = [False]

    def pre_hook(mod: nn.Module, args: tuple) -> None:
        stack = _stack()
        if stack:  # an outer attention scope on this thread already intercepts
            stack.append(None)
            return
        scope = AttentionScope(name, pts)
        scope.__enter__()
        stack.append(scope)

    def hook(mod: nn.Module, args: tuple, out: Any) -> None:
        stack = _stack()
        if not stack:
            return
        scope = stack.pop()
        if scope is None:
            return
        scope.__exit__(None, None, None)
        if scope.intercepted == 0 and not warned[0]:
            warned[0] = True
            warnings.warn(
                f"qsim_hooks: attention module {name!r} ({type(mod).__name__}) ran without a matmul, "
                "SDPA or multi_head_attention_forward call to intercept, so its q/k/scores/probs/v/context "
                "points quantized nothing (a fused kernel called another way?)", RuntimeWarning, stacklevel=2)
        elif scope.matmuls % 2 == 1:
            warnings.warn(f"qsim_hooks: attention module {name!r} made an odd number ({scope.matmuls}) of "
                          "matmul calls; the q/k/scores vs probs/v/context pairing may be off",
                          RuntimeWarning, stacklevel=2)

    handles = UndoStack()
    handles.push(module.register_forward_pre_hook(pre_hook))
    handles.push(module.register_forward_hook(hook, always_call=True))
    return handles
