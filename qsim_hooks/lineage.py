"""What a tensor inside an attention scope derives from: marks, replayable layout/scale steps, einsum axes.

The attention scope (:mod:`.attention`) names an attention module's matmuls
by what their operands are, not by their order: ``P·V`` is the product one of
whose operands came out of a softmax, ``Q·Kᵀ`` the one whose result the
softmax consumes. This module is that bookkeeping, kept apart from the mode:

* :class:`Marks`: bit flags on tensors (``PROBS``: derived from a softmax
  output; one ``scores`` bit per ``Q·Kᵀ`` of the forward), carried from the
  inputs of every op to its outputs;
* :class:`Steps`: the swaps of the last two axes and the scalar
  multiplications a tensor went through on its way to a matmul, so the ``q``/``k`` points can quantize
  the query and key themselves (``kᵀ / scale`` is quantized as ``k``) and the
  steps are replayed on the quantized tensor;
* :func:`einsum_reduction_axes`: each operand's contracted axis, from the equation.

Tensors are keyed by ``id`` with a weak reference confirming identity, so a
mark keeps nothing alive; a recorded step holds its input as long as its result lives.
"""

from __future__ import annotations

import functools
import re
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = ["PROBS", "scores_bit", "Marks", "Step", "Steps", "einsum_reduction_axes"]

#: derived from a softmax output
PROBS = 1


def scores_bit(cycle: int) -> int:
    """The mark of the result of the ``cycle``-th Q·Kᵀ of a forward (and of what derives from it)."""
    return 2 << cycle


class Marks:
    """Integer flags on tensors; ``add`` ORs into what a tensor has."""

    __slots__ = ("_d",)

    def __init__(self) -> None:
        self._d: dict[int, tuple[weakref.ref, int]] = {}

    def __bool__(self) -> bool:
        return bool(self._d)

    def get(self, t: Any) -> int:
        e = self._d.get(id(t))
        return e[1] if e is not None and e[0]() is t else 0

    def add(self, t: Any, m: int) -> None:
        if not isinstance(t, Tensor):
            return
        i = id(t)
        e = self._d.get(i)
        if e is not None and e[0]() is t:
            m |= e[1]
        self._d[i] = (weakref.ref(t), m)

    def add_out(self, out: Any, m: int) -> None:
        """Mark a result: a tensor, or each tensor of a tuple/list (``split``, ``max``'s values)."""
        if isinstance(out, Tensor):
            self.add(out, m)
        elif isinstance(out, (tuple, list)):
            for o in out:
                self.add(o, m)

    def of_args(self, args: Sequence[Any], kwargs: Mapping[str, Any]) -> int:
        """The union of the marks of the tensors among ``args`` and ``kwargs`` (one level of lists)."""
        d = self._d
        if not d:
            return 0
        m = 0
        for a in (*args, *kwargs.values()):
            if isinstance(a, Tensor):
                e = d.get(id(a))
                if e is not None and e[0]() is a:
                    m |= e[1]
            elif isinstance(a, (list, tuple)):
                for x in a:
                    e = d.get(id(x))
                    if e is not None and e[0]() is x:
                        m |= e[1]
        return m


# ---------------------------------------------------------------------------
# steps that only lay out or scale a tensor: peeled off an operand, replayed after quantizing
# ---------------------------------------------------------------------------
class Step:
    """One recorded call ``out = func(*args, **kwargs)`` with its tensor input at ``args[pos]``.

    ``perm[i]`` is the input axis that output axis ``i`` comes from (the identity for a scaling).
    """

    __slots__ = ("func", "args", "kwargs", "pos", "perm")

    def __init__(self, func: Callable, args: tuple, kwargs: dict, pos: int, perm: tuple[int, ...]) -> None:
        self.func, self.args, self.kwargs, self.pos, self.perm = func, args, kwargs, pos, perm

    @property
    def input(self) -> Tensor:
        return self.args[self.pos]

    def replay(self, x: Tensor) -> Tensor:
        return self.func(*self.args[:self.pos], x, *self.args[self.pos + 1:], **self.kwargs)


def _last_two(nd: int) -> tuple[int, ...]:
    """The permutation that swaps the last two axes (of ``nd`` >= 2)."""
    return (*range(nd - 2), nd - 1, nd - 2)


def _is_scalar(s: Any) -> bool:
    if isinstance(s, bool):
        return False
    return isinstance(s, (int, float)) or (isinstance(s, Tensor) and s.dim() == 0)


def _transpose(args: tuple, kwargs: dict) -> tuple[int, tuple[int, ...]] | None:
    nd = args[0].dim()
    if kwargs or len(args) != 3 or nd < 2 or not all(isinstance(d, int) for d in args[1:]):
        return None
    return (0, _last_two(nd)) if {args[1] % nd, args[2] % nd} == {nd - 2, nd - 1} else None


def _matrix_t(args: tuple, kwargs: dict) -> tuple[int, tuple[int, ...]] | None:  # t(), .T of a matrix
    return (0, (1, 0)) if not kwargs and len(args) == 1 and args[0].dim() == 2 else None


def _mt(args: tuple, kwargs: dict) -> tuple[int, tuple[int, ...]] | None:
    nd = args[0].dim()
    return (0, _last_two(nd)) if nd >= 2 and not kwargs and len(args) == 1 else None


def _permute(args: tuple, kwargs: dict) -> tuple[int, tuple[int, ...]] | None:
    dims = args[1] if len(args) == 2 and isinstance(args[1], (list, tuple)) else args[1:]
    nd = args[0].dim()
    if kwargs or nd < 2 or len(dims) != nd or not all(isinstance(d, int) for d in dims):
        return None
    return (0, _last_two(nd)) if tuple(d % nd for d in dims) == _last_two(nd) else None


def _scale(args: tuple, kwargs: dict, divide: bool) -> tuple[int, tuple[int, ...]] | None:
    if kwargs or len(args) != 2:
        return None
    a, b = args
    for pos, (t, s) in enumerate(((a, b), (b, a))):
        if pos == 1 and divide:
            break  # s / t is not a scaling of t
        if isinstance(t, Tensor) and t.dim() > 0 and _is_scalar(s):
            return pos, tuple(range(t.dim()))
    return None


_RULES: dict[Any, Callable[[tuple, dict], tuple[int, tuple[int, ...]] | None]] = {
    **{f: _transpose for f in (torch.transpose, Tensor.transpose, torch.swapaxes, Tensor.swapaxes,
                               torch.swapdims, Tensor.swapdims)},
    **{f: _matrix_t for f in (torch.t, Tensor.t, Tensor.T.__get__)},
    Tensor.mT.__get__: _mt,
    **{f: _permute for f in (torch.permute, Tensor.permute)},
    **{f: functools.partial(_scale, divide=False) for f in (torch.mul, Tensor.mul, Tensor.__mul__,
                                                            Tensor.__rmul__, torch.multiply, Tensor.multiply)},
    **{f: functools.partial(_scale, divide=True) for f in (torch.div, Tensor.div, Tensor.__truediv__,
                                                           torch.true_divide, Tensor.true_divide,
                                                           torch.divide, Tensor.divide)},
}


class Steps:
    """The layout and scaling steps recorded in one scope, by the tensor they produced."""

    __slots__ = ("_d",)

    def __init__(self) -> None:
        self._d: dict[int, tuple[weakref.ref, Step]] = {}

    def record(self, func: Any, args: tuple, kwargs: dict, out: Any) -> None:
        rule = _RULES.get(func)
        if rule is None or not isinstance(out, Tensor) or not args or not isinstance(args[0], Tensor):
            return
        got = rule(args, kwargs)
        if got is None:
            return
        pos, perm = got
        if args[pos] is out:  # in place: nothing to replay on
            return
        i, d = id(out), self._d

        def gone(r: weakref.ref) -> None:  # the step dies with its result (and lets its input go)
            e = d.get(i)
            if e is not None and e[0] is r:
                del d[i]

        d[i] = (weakref.ref(out, gone), Step(func, args, dict(kwargs), pos, perm))

    def peel(self, x: Tensor, axis: int) -> tuple[Tensor, int, list[Step]]:
        """``x`` back to the tensor before its recorded steps: that tensor, ``axis`` there, the steps in order."""
        steps: list[Step] = []
        a = axis % x.dim() if x.dim() else 0
        while len(steps) < 16:
            e = self._d.get(id(x))
            if e is None or e[0]() is not x:
                break
            step = e[1]
            a = step.perm[a]
            steps.append(step)
            x = step.input
        steps.reverse()
        return x, a - x.dim(), steps


# ---------------------------------------------------------------------------
# einsum
# ---------------------------------------------------------------------------
_SUB = re.compile(r"[A-Za-z]*(?:\.\.\.)?[A-Za-z]*")


@functools.lru_cache(maxsize=256)
def _einsum_parts(eq: str) -> tuple[tuple[str, str], tuple[str, str], frozenset[str]] | None:
    """Two operands' subscripts as (before ``...``, after ``...``) and the contracted indices; None if not two."""
    eq = re.sub(r"\s+", "", eq)
    lhs, arrow, out = eq.partition("->")
    subs = lhs.split(",")
    if len(subs) != 2 or not all(_SUB.fullmatch(s) for s in subs + [out]):
        return None
    letters = [s.replace("...", "") for s in subs]
    if not arrow:  # implicit output: the indices that appear once, in alphabetical order
        joined = "".join(letters)
        out = "".join(sorted(c for c in set(joined) if joined.count(c) == 1))
    contracted = frozenset(set(letters[0]) & set(letters[1]) - set(out))
    a, b = (tuple(s.split("...", 1)) if "..." in s else ("", s) for s in subs)
    return (a, b, contracted)  # type: ignore[return-value]


def einsum_reduction_axes(eq: str, ndims: tuple[int, int]) -> tuple[int, int] | None:
    """Each operand's reduction axis (negative), for a two-operand ``einsum``; ``None`` if ``eq`` is not one.

    The reduction axis is the operand's contracted index nearest its end (``-1`` when nothing is
    contracted): for ``"BGHIJ,BGHJD->BGHID"`` that is ``(-1, -2)``.
    """
    parts = _einsum_parts(eq)
    if parts is None:
        return None
    *subs, contracted = parts
    axes = []
    for (head, tail), nd in zip(subs, ndims):  # type: ignore[misc]
        pos = [i - len(tail) for i, c in enumerate(tail) if c in contracted]
        pos += [i - nd for i, c in enumerate(head) if c in contracted]
        axes.append(max(pos) if pos else -1)
    return axes[0], axes[1]
