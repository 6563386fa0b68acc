"""Quantized results a point may hand out again instead of computing them twice (inference only).

Two kinds of repeated work are common in a forward, and both have a result known exactly:

* *the same tensor, the same format*: the three projections of an attention layer, or a
  ResNet block's first conv and its downsample conv, quantize one input with equal formats.
  A deterministic format gives the same result every time, so the first result is returned
  again (:func:`lookup` by source);
* *a tensor already on the format's grid*: a Linear's quantized output reaching an attention
  point (``q``, ``k``, ``v``) or the next Linear's input point in the same cast format. An
  unscaled float cast with deterministic rounding leaves a value of its grid unchanged, so the
  point's result is the tensor itself, laid out as the format would return it (the
  strides ``torch.empty_like`` keeps: a transposed or channels-last tensor stays as it is,
  an expanded or strided one becomes dense; a different layout changes a GEMM's rounding).
  Views of such a tensor and value-preserving copies of it (:func:`propagate`, called by the
  interception for reshapes, ``contiguous``, indexing) count too.

Entries are keyed by ``id`` with a weak reference to the tensor (an entry dies with its tensor
and cannot name a new tensor that reuses the id) and the tensor's version counter when it was
seen (and of the result, for a source entry), so any in-place write through the tensor or a view
of it (``add_``, ``copy_``, an optimizer step) makes the entry miss. Writes that bump no version
counter (through ``.data`` or a numpy view) are not seen: the entries live for one forward of the
model (:func:`forget` at its start and end, and when the session detaches).
Nothing is reused while autograd records the call, under ``torch.inference_mode`` (its tensors
have no version counter), with statistics or an observer, for stochastic rounding, a static
amax, or a format that is not a plain :class:`FloatFormat` / :class:`IntFormat` (the points
check :func:`eligible`), and only where the caller says its consumer does not write into what
it is given (``reuse_ok=True``: attention operands, the inputs of PyTorch's own Linear and Conv
layers).
"""

from __future__ import annotations

import weakref
from collections import OrderedDict
from typing import Any

import torch
from torch import Tensor

from .formats import FloatFormat, Format, IntFormat, Rounding

__all__ = ["eligible", "lookup", "record", "propagate", "forget", "enabled", "set_enabled"]

#: source entries kept at most (each holds its quantized result alive)
MAX_SOURCES = 8

_sources: OrderedDict[int, tuple[weakref.ref, int, Format, Tensor, int]] = OrderedDict()
_fixed: dict[int, tuple[weakref.ref, int, Format]] = {}
_on = True


def enabled() -> bool:
    return _on


def set_enabled(on: bool) -> None:
    """Switch reuse off (``False``) or on; the results are the same either way (tests compare them)."""
    global _on
    _on = bool(on)
    forget()


def eligible(fmt: Any, x: Tensor) -> bool:
    """Whether ``fmt`` on ``x`` may be reused: a plain deterministic format, no autograd, real values."""
    return (_on and type(fmt) in (FloatFormat, IntFormat) and fmt.rounding is not Rounding.STOCHASTIC
            and not (x.requires_grad and torch.is_grad_enabled()) and not x.is_meta
            and not x.is_inference() and not torch.is_inference_mode_enabled())  # no version counter there


def _idempotent(fmt: Format, t: Tensor) -> bool:
    """An unscaled float cast on float32 maps every value of its grid to itself."""
    return type(fmt) is FloatFormat and fmt.scaling is None and t.dtype == torch.float32


def _drop(table: dict, key: int, ref: weakref.ref) -> None:
    entry = table.get(key)  # no lock: a weakref callback may run inside any dict operation on this thread
    if entry is not None and entry[0] is ref:
        table.pop(key, None)


def _entry(table: dict, t: Tensor) -> tuple | None:
    e = table.get(id(t))
    if e is not None and e[0]() is t and e[1] == t._version:
        return e
    return None


def _same(a: Format, b: Format) -> bool:
    return a is b or a == b


def lookup(fmt: Format, x: Tensor) -> Tensor | None:
    """The result ``fmt`` would give on ``x`` if it is known, else ``None`` (call only when :func:`eligible`)."""
    e = _entry(_sources, x)
    if e is not None and _same(e[2], fmt) and e[3]._version == e[4]:  # nor the result written into since
        return e[3]
    if _idempotent(fmt, x):
        e = _entry(_fixed, x)
        if e is None and x._base is not None and x._base.dtype == torch.float32:
            e = _entry(_fixed, x._base)  # a view shares its base's version counter and values
        if e is not None and _same(e[2], fmt):
            return _laid_out_as_format(fmt, x)
    return None


def _laid_out_as_format(fmt: FloatFormat, x: Tensor) -> Tensor:
    """``x`` in the layout ``fmt.cast`` gives its result, ``x`` itself when it has it: float32's own grid
    is a ``clone`` / ``clamp`` (``empty_like``'s strides: a transposed tensor stays transposed), every
    other cast a dense kernel (contiguous). tests/core/test_reuse.py checks both against the casts."""
    if fmt.exp_bits == 8 and fmt.man_bits == 23:
        if torch.empty_like(x, device="meta").stride() == x.stride():
            return x
        return torch.empty_like(x).copy_(x)
    return x.contiguous()


def _remember_fixed(fmt: Format, y: Tensor) -> None:
    for t in (y, _whole_base(y)):
        if t is not None:
            key = id(t)
            _fixed[key] = (weakref.ref(t, lambda r, k=key: _drop(_fixed, k, r)), t._version, fmt)


def _whole_base(y: Tensor) -> Tensor | None:
    """``y``'s base when ``y`` covers all of it (a format's result is a reshape of its kernel's output)."""
    b = y._base
    if b is None or b.dtype != y.dtype or b.numel() != y.numel() or b.storage_offset() != y.storage_offset() or \
            not (b.is_contiguous() and y.is_contiguous()):
        return None
    return b


def record(fmt: Format, x: Tensor, y: Tensor, source: bool) -> None:
    """``fmt`` on ``x`` gave ``y``: remember ``y`` for ``x`` (``source``) and as on the grid when it is."""
    if source and x is not y:
        key = id(x)
        ref = weakref.ref(x, lambda r, k=key: _drop(_sources, k, r))
        _sources[key] = (ref, x._version, fmt, y, y._version)
        _sources.move_to_end(key)
        while len(_sources) > MAX_SOURCES:
            _sources.popitem(last=False)
    if _idempotent(fmt, y):
        _remember_fixed(fmt, y)


def propagate(src: Any, out: Any) -> None:
    """``out`` is a value-preserving copy of ``src`` (a reshape, ``contiguous``, indexing): if ``src`` is on
    a format's grid, so is ``out``."""
    if not (_on and isinstance(src, Tensor) and isinstance(out, Tensor)) or out is src or out.dtype != src.dtype \
            or out.is_inference() or src.is_inference():
        return
    e = _entry(_fixed, src)
    if e is None and src._base is not None:
        e = _entry(_fixed, src._base)
    if e is not None and _idempotent(e[2], out):
        _remember_fixed(e[2], out)


def forget() -> None:
    """Drop every entry (the end of a forward; a source entry holds a result alive)."""
    _sources.clear()
    _fixed.clear()
