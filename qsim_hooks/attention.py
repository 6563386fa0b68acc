"""Attention internals: Q, K, scores, probs, V and context, found by what the tensors are.

An attention layer computes two matmuls no Linear hook sees: ``scores = Q·Kᵀ``
and ``context = P·V``. While an attention module's own forward runs, an
:class:`AttentionScope` (a ``TorchFunctionMode`` entered by the module's
forward pre-hook and left by its forward hook, ``always_call=True`` so an
exception cannot leave it on the stack) sees the calls the module makes and
names them by meaning (:mod:`.lineage` keeps the marks):

* a product (``matmul``/``@``/``mm``/``bmm``/``baddbmm``/two-operand ``einsum``)
  one of whose operands derives from a softmax output (through dropout, casts,
  masks, views, slicing, ...) is ``P·V``: points ``probs``, ``v``, ``context``;
* the first other product since the last softmax is taken as ``Q·Kᵀ`` (points
  ``q``, ``k``, ``scores``), and confirmed when the next softmax's input
  derives from its result;
* products with a weight operand (a Parameter, a view of one, a parametrized
  weight) belong to layers; any other product is left alone.

A forward that does not fit ``Q·Kᵀ → softmax → P·V`` (extra products, a
softmax of something else, a softmax without a product before or after it)
gives one warning per module saying what was and was not quantized.
``F.scaled_dot_product_attention`` and ``F.multi_head_attention_forward`` are
handed to :mod:`.decompose`, which knows their structure.

While a child module runs the scope is paused: a child's matmuls are its own
(``FalconLinear``'s ``input @ weight.T``); its output inherits the marks of
its inputs, and an ``nn.Softmax`` child counts as a softmax. A nested
attention module runs its own scope. ``q`` and ``k`` see the query and key
before any scalar scale or transpose applied to them inside the module (those
steps are replayed on the quantized tensors), laid out ``(…, S, E)`` for
products. :data:`FUNCTIONAL_CHILDREN` names children a module applies through
``F.linear`` itself (MHA's ``out_proj``); the decomposition applies their points.

The hooks are on the modules, so whichever thread runs an attention module
while the session is attached enters its scope (on that thread's own mode stack).
"""

from __future__ import annotations

import sys
import threading
import warnings
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize
from torch.overrides import TorchFunctionMode

from .config import ATTENTION_POINTS
from .decompose import (
    FUNCTIONAL_CHILDREN,
    AttentionPoints,
    Borrowed,
    borrowed_points,
    borrowing_modules,
    is_float,
    mha_decomposed,
    sdpa_decomposed,
)
from .lineage import PROBS, Marks, Steps, einsum_reduction_axes, scores_bit
from .marks import marked_by
from .points import QuantPoint
from .undo import UndoStack

__all__ = ["ATTENTION_POINTS", "AttentionScope", "attach_attention", "sdpa_decomposed", "mha_decomposed",
           "FUNCTIONAL_CHILDREN", "Borrowed", "borrowed_points", "borrowing_modules", "SOFTMAX", "issuing"]

#: the softmax functions a scope recognises (an ``nn.Softmax`` child counts too)
SOFTMAX = frozenset(f for f in (F.softmax, torch.softmax, Tensor.softmax, getattr(torch, "_safe_softmax", None),
                                getattr(torch, "_softmax", None), getattr(torch.special, "softmax", None)) if f)
_MATMULS = {torch.matmul, Tensor.matmul, Tensor.__matmul__, torch.bmm, Tensor.bmm, torch.mm, Tensor.mm}
_QK, _PV = ("q", "k", "scores"), ("probs", "v", "context")

_local = threading.local()


def _stack() -> list[AttentionScope]:
    s = getattr(_local, "stack", None)
    if s is None:
        s = _local.stack = []
    return s


def issuing() -> tuple[str, tuple[str, ...]] | None:
    """While a scope issues a product on this thread: ``(module name, the points on it)``, else ``None``.

    The points are ``("q", "k", "scores")`` for Q·Kᵀ, ``("probs", "v", "context")`` for P·V, all six for
    a decomposed SDPA/MHA call (every product inside it) and ``()`` for a product left alone. An
    interception below the scope (coverage accounting) reads it when it sees the product.
    """
    return getattr(_local, "issuing", None)


def _issue(module: str, roles: tuple[str, ...], fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    prev = getattr(_local, "issuing", None)
    _local.issuing = (module, roles)
    try:
        return fn(*args, **kwargs)
    finally:
        _local.issuing = prev


def _label(func: Any) -> str:
    n = getattr(func, "__name__", "?").strip("_")
    q = getattr(func, "__qualname__", "") or ""
    return f"Tensor.{n}" if q.startswith(("Tensor", "TensorBase")) else f"torch.{n}"


class _Module:
    """What lasts across one attention module's forwards: its name, points and whether it was warned about."""

    __slots__ = ("name", "tname", "pts", "warned")

    def __init__(self, name: str, tname: str, pts: AttentionPoints) -> None:
        self.name, self.tname, self.pts, self.warned = name, tname, pts, False


class AttentionScope(TorchFunctionMode):
    """One forward of one attention module: names its products by meaning and applies the six points."""

    def __init__(self, owner: _Module) -> None:
        super().__init__()
        self.owner = owner
        self.pts = owner.pts
        self.pauses: list[nn.Module] = []  # children (and nested attention modules) running now
        self.marks = Marks()
        self.weights = Marks()  # parametrized weights seen (a ParametrizationList's output)
        p = self.pts.p
        self.steps = Steps() if p["q"] is not None or p["k"] is not None else None
        self.cycle = -1  # index of the latest Q·Kᵀ (its scores mark)
        self.open_qk: str | None = None  # the Q·Kᵀ awaiting its softmax
        self.open_probs = False  # a softmax output that reached no P·V yet
        self.intercepted = 0
        # "extra": further products before the softmax; "extra_covered": those whose two operands other
        # points had already quantized (DeBERTa's c2p/p2c on the projections' outputs)
        self.calls: dict[str, Counter] = {k: Counter() for k in ("qk", "pv", "extra", "extra_covered", "fused")}
        self.odd: Counter = Counter()  # what did not fit: reason -> count

    # -- dispatch -----------------------------------------------------------------------------
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.pauses:
            return func(*args, **kwargs)
        handler = _HANDLERS.get(func)
        if handler is not None:
            out = handler(self, func, args, kwargs)
            if out is not NotImplemented:
                return out
        out = func(*args, **kwargs)
        m = self.marks.of_args(args, kwargs)
        if m:
            self.marks.add_out(out, m)
        elif self.steps is not None:
            self.steps.record(func, args, kwargs, out)
        return out

    def _matmul(self, func, args, kwargs):
        if len(args) != 2 or kwargs or not (is_float(args[0]) and is_float(args[1])):
            return NotImplemented
        a, b = args
        return self._product(a, b, -1, -2 if b.dim() >= 2 else -1, lambda x, y: func(x, y), _label(func))

    def _rmatmul(self, func, args, kwargs):  # Tensor.__rmatmul__(self, other) is other @ self
        if len(args) != 2 or kwargs or not (is_float(args[0]) and is_float(args[1])):
            return NotImplemented
        b, a = args
        return self._product(a, b, -1, -2 if b.dim() >= 2 else -1, lambda x, y: func(y, x), "Tensor.matmul")

    def _baddbmm(self, func, args, kwargs):
        # operands positional or by keyword (BLOOM: ``alibi.baddbmm(batch1=q, batch2=k, beta=..., alpha=...)``)
        ops, kw = list(args[:3]), dict(kwargs)
        for n in ("input", "batch1", "batch2")[len(ops):]:
            if n in kw:
                ops.append(kw.pop(n))
        if len(ops) != 3 or not (is_float(ops[1]) and is_float(ops[2])):
            return NotImplemented
        rest = args[3:]
        return self._product(ops[1], ops[2], -1, -2, lambda x, y: func(ops[0], x, y, *rest, **kw), _label(func))

    def _einsum(self, func, args, kwargs):
        if not args or not isinstance(args[0], str):
            return NotImplemented
        ops = args[1] if len(args) == 2 and isinstance(args[1], (list, tuple)) else args[1:]
        if len(ops) != 2 or not (is_float(ops[0]) and is_float(ops[1])):
            return NotImplemented
        eq = args[0]
        axes = einsum_reduction_axes(eq, (ops[0].dim(), ops[1].dim()))
        if axes is None:
            return NotImplemented
        return self._product(ops[0], ops[1], *axes, lambda x, y: func(eq, x, y, **kwargs), f"torch.einsum({eq!r})")

    def _fused(self, func, args, kwargs):
        self.intercepted += 1
        self.calls["fused"][_label(func)] += 1
        how = sdpa_decomposed if func is F.scaled_dot_product_attention else mha_decomposed
        return _issue(self.owner.name, ATTENTION_POINTS, how, self.pts, *args, **kwargs)

    def _softmax_call(self, func, args, kwargs):
        out = func(*args, **kwargs)
        self.softmax(args[0] if args else kwargs.get("input"), out)
        return out

    # -- meaning --------------------------------------------------------------------------------
    def _is_weight(self, t: Tensor) -> bool:
        return (isinstance(t, nn.Parameter) or isinstance(t._base, nn.Parameter) or bool(self.weights.get(t))
                or bool(self.weights.get(t._base)))

    def _product(self, a: Tensor, b: Tensor, ra: int, rb: int, call: Callable[[Tensor, Tensor], Tensor],
                 label: str) -> Tensor:
        if self._is_weight(a) or self._is_weight(b):
            return call(a, b)  # a layer's product: the layer mechanisms' business
        self.intercepted += 1
        pts, module = self.pts, self.owner.name
        ma, mb = self.marks.get(a), self.marks.get(b)
        if (ma | mb) & PROBS:
            if ma & PROBS:
                a, b = pts.apply("probs", a, ra), pts.apply("v", b, rb)
            else:
                a, b = pts.apply("v", a, ra), pts.apply("probs", b, rb)
            self.open_probs = False
            self.calls["pv"][label] += 1
            return pts.apply("context", _issue(module, _PV, call, a, b), -1)
        if self.open_qk is not None:
            covered = marked_by(a) is not None and marked_by(b) is not None
            self.calls["extra_covered" if covered else "extra"][label] += 1
            return _issue(module, (), call, a, b)
        a, b = self._qk_operand("q", a, ra), self._qk_operand("k", b, rb)
        out = pts.apply("scores", _issue(module, _QK, call, a, b), -1)
        self.cycle += 1
        self.open_qk = label
        self.marks.add(out, scores_bit(self.cycle))
        self.calls["qk"][label] += 1
        return out

    def _qk_operand(self, name: str, x: Tensor, axis: int) -> Tensor:
        """``x`` through the ``q``/``k`` point as the query/key itself: before its recorded steps, axis last."""
        p = self.pts.p[name]
        if p is None:
            return x
        base, axis, steps = self.steps.peel(x, axis) if self.steps is not None else (x, axis, [])
        flip = base.dim() >= 2 and axis == -2
        y = p(base.transpose(-2, -1), axis=-1, reuse_ok=True).transpose(-2, -1) if flip else \
            p(base, axis=axis, reuse_ok=True)
        for s in steps:
            y = s.replay(y)
        return y

    def softmax(self, x: Any, out: Any) -> None:
        """A softmax of ``x`` gave ``out``: check it against the open Q·Kᵀ and mark ``out`` as probabilities."""
        if self.open_qk is None:
            self.odd["softmax without a product before it"] += 1
        elif not self.marks.get(x) & scores_bit(self.cycle):
            self.odd[f"softmax of a tensor not derived from the product taken as Q·Kᵀ ({self.open_qk})"] += 1
        if self.open_probs:
            self.odd["softmax output that reached no product"] += 1
        self.open_qk = None
        self.open_probs = True
        self.marks.add_out(out, PROBS)

    def child_done(self, mod: nn.Module, args: tuple, kwargs: dict, out: Any) -> None:
        """A child module finished: an ``nn.Softmax`` is a softmax, other outputs inherit their inputs' marks."""
        if isinstance(mod, nn.Softmax):
            self.softmax(args[0] if args else kwargs.get("input"), out)
        elif isinstance(mod, parametrize.ParametrizationList) and isinstance(out, Tensor):
            self.weights.add(out, 1)
            if out._base is not None:  # its views share this base, not ``out``
                self.weights.add(out._base, 1)
        else:
            m = self.marks.of_args(args, kwargs)
            if m:
                self.marks.add_out(out, m)

    def finish(self) -> None:
        if self.open_qk is not None:
            self.odd[f"product taken as Q·Kᵀ ({self.open_qk}) with no softmax after it"] += 1
        if self.open_probs:
            self.odd["softmax output that reached no product"] += 1


_HANDLERS: dict[Any, Callable] = {
    **{f: AttentionScope._matmul for f in _MATMULS},
    Tensor.__rmatmul__: AttentionScope._rmatmul,
    torch.baddbmm: AttentionScope._baddbmm, Tensor.baddbmm: AttentionScope._baddbmm,
    torch.einsum: AttentionScope._einsum,
    F.scaled_dot_product_attention: AttentionScope._fused, F.multi_head_attention_forward: AttentionScope._fused,
    **{f: AttentionScope._softmax_call for f in SOFTMAX},
}


def _calls(c: Counter) -> str:
    return ", ".join(f"{k} x{n}" if n > 1 else k for k, n in c.items())


def _misfit(owner: _Module, scope: AttentionScope) -> str | None:
    """The warning for a forward that did not fit Q·Kᵀ → softmax → P·V (None if it fit)."""
    extra, covered, odd = scope.calls["extra"], scope.calls["extra_covered"], scope.odd
    if not extra and not covered and not odd:
        return None
    done = []
    if scope.calls["qk"]:
        done.append(f"Q·Kᵀ [{_calls(scope.calls['qk'])}] through q, k, scores")
    if scope.calls["pv"]:
        done.append(f"P·V [{_calls(scope.calls['pv'])}] through probs, v, context")
    if scope.calls["fused"]:
        done.append(f"[{_calls(scope.calls['fused'])}] decomposed")
    issues = []
    if extra:
        issues.append(f"left {sum(extra.values())} other product(s) [{_calls(extra)}] at full precision")
    if covered:
        issues.append(f"{sum(covered.values())} other product(s) [{_calls(covered)}] took no attention point "
                      "(their operands came quantized from other points: qs.coverage() names them)")
    issues += [f"{n} {why}" for why, n in odd.items()]
    return (f"qsim_hooks: attention module {owner.name!r} ({owner.tname}) does not fit Q·Kᵀ -> softmax -> P·V: "
            f"quantized {'; '.join(done) or 'nothing'}; {'; '.join(issues)} (its first such forward; warned once)")


def attach_attention(module: nn.Module, name: str, points: Mapping[str, QuantPoint | None],
                     borrowed: Mapping[str, Borrowed] | None = None) -> UndoStack:
    """Enter a scope for ``module``'s forward, paused while its children run; warn once about a misfit."""
    owner = _Module(name, parametrize.type_before_parametrizations(module).__name__,
                    AttentionPoints(points, borrowed))

    def pre_hook(mod: nn.Module, args: tuple) -> None:
        stack = _stack()
        if stack:
            stack[-1].pauses.append(mod)  # an enclosing scope: this module's calls are not its
        scope = AttentionScope(owner)
        scope.__enter__()
        stack.append(scope)

    def hook(mod: nn.Module, args: tuple, out: Any) -> None:
        stack = _stack()
        if not stack or stack[-1].owner is not owner:
            return  # the pre-hook did not run (an earlier pre-hook raised)
        scope = stack.pop()
        scope.__exit__(None, None, None)
        if stack and stack[-1].pauses and stack[-1].pauses[-1] is mod:
            stack[-1].pauses.pop()
        scope.finish()
        if owner.warned or sys.exc_info()[0] is not None:
            return  # warned already, or the forward raised: its calls are not all there
        if scope.intercepted == 0:
            msg = (f"qsim_hooks: attention module {name!r} ({owner.tname}) ran no product of two activations "
                   "(matmul, bmm, baddbmm, einsum) and no SDPA or multi_head_attention_forward call, so its "
                   "q/k/scores/probs/v/context points quantized nothing (a fused kernel called another way, "
                   "or not an attention module?)")
        else:
            msg = _misfit(owner, scope)
        if msg is not None:
            owner.warned = True
            warnings.warn(msg, RuntimeWarning, stacklevel=2)

    def child_pre(mod: nn.Module, args: tuple) -> None:
        stack = _stack()
        if stack and stack[-1].owner is owner:
            stack[-1].pauses.append(mod)

    def child_post(mod: nn.Module, args: tuple, kwargs: dict, out: Any) -> None:
        stack = _stack()
        if not stack or stack[-1].owner is not owner:
            return
        scope = stack[-1]
        if scope.pauses and scope.pauses[-1] is mod:
            scope.pauses.pop()
            if not scope.pauses:
                scope.child_done(mod, args, kwargs, out)

    handles = UndoStack()
    with handles.all_or_nothing():
        handles.push(module.register_forward_pre_hook(pre_hook))
        # prepended: the module's own output point (a hook registered before) runs outside the scope
        handles.push(module.register_forward_hook(hook, always_call=True, prepend=True))
        for child in module.modules():
            if child is not module:
                # prepended: a child's own input point runs paused too
                handles.push(child.register_forward_pre_hook(child_pre, prepend=True))
                handles.push(child.register_forward_hook(child_post, with_kwargs=True, always_call=True))
    return handles
