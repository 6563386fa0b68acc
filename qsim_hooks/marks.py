"""Provenance marks: which quantization point produced a tensor.

A :class:`~qsim_hooks.points.QuantPoint` marks every tensor it returns, so that
the model-wide interception (:mod:`qsim_hooks.intercept`) can tell, at each GEMM,
which point (if any) covered each operand. A view of a marked tensor counts as
marked (``t._base``), and the interception carries marks through a few
value-preserving copies (``contiguous``, ``repeat_interleave``, indexing, ...).

The registry is keyed by ``id`` and holds only a weak reference to the tensor
(with a callback that drops the entry when the tensor dies), so nothing is kept
alive, no attribute is written on a user's tensor (a marked model output pickles
as before), and an entry cannot outlive its tensor to mislabel a new one that
reuses the id. The point is held strongly: a session checks that a mark is one
of its own points before it trusts it.
"""

from __future__ import annotations

import weakref
from typing import Any

from torch import Tensor

__all__ = ["mark", "marked_by", "copy_mark"]

_marks: dict[int, tuple[weakref.ref, Any]] = {}


def _drop(key: int, ref: weakref.ref) -> None:
    entry = _marks.get(key)
    if entry is not None and entry[0] is ref:
        del _marks[key]


def mark(t: Any, point: Any) -> None:
    """Record that ``point`` produced ``t`` (a tensor; anything else is ignored).

    A view returned by a point (a format that changed nothing gives back its input) marks its base as
    well, since views of that view have the base, not the view, as ``_base``.
    """
    if not isinstance(t, Tensor):
        return
    key = id(t)
    _marks[key] = (weakref.ref(t, lambda r, k=key: _drop(k, r)), point)
    base = t._base
    if base is not None and id(base) not in _marks:
        bkey = id(base)
        _marks[bkey] = (weakref.ref(base, lambda r, k=bkey: _drop(k, r)), point)


def _lookup(t: Tensor) -> Any:
    entry = _marks.get(id(t))
    if entry is not None and entry[0]() is t:
        return entry[1]
    return None


def marked_by(t: Any) -> Any:
    """The point that produced ``t`` or the tensor ``t`` is a view of; ``None`` if none did."""
    if not isinstance(t, Tensor):
        return None
    p = _lookup(t)
    if p is None:
        base = t._base
        if base is not None:
            p = _lookup(base)
    return p


def copy_mark(src: Any, out: Any) -> None:
    """Give ``out`` (a value-preserving copy of ``src``) the mark of ``src``, if it has one."""
    p = marked_by(src)
    if p is not None and isinstance(out, Tensor) and out is not src:
        mark(out, p)
