"""What a quantization keeps for the backward pass: clipped-STE masks as bits, quantized tensors as recipes.

Training through fake quantization used to keep, per point, a byte per element
for the clipped straight-through mask and, per layer, the quantized copy of the
layer's input that the layer saves for its own backward (a second full tensor
beside the unquantized one its producer already keeps). This module keeps the
mask as one bit per element (:func:`pack_mask`, :func:`masked_grad`: the same
``g * mask`` bits as before) and, inside a :func:`enter_scope` scope, replaces a
saved quantized tensor by a *recipe*: a reference to its unquantized source and
the deterministic format that made it, re-run when the backward unpacks it.

The one design reason: a recipe is only taken when the result can be
re-made bit for bit (a deterministic format, source and result untouched since;
a source changed in place before the backward raises, as PyTorch does for its
own saved tensors), and only when no other saved-tensor hooks are active
(activation checkpointing or offloading own saving in their scope).
"""

from __future__ import annotations

import contextlib
import sys
import weakref
from collections.abc import Callable, Iterator

import torch
from torch import Tensor

from . import kernels
from ._exmy import pack_bytes

__all__ = ["pack_mask", "unpack_mask", "masked_grad", "mark", "recompute", "enter_scope", "exit_scope", "Recipe"]

_SHIFTS = kernels.Consts(torch.arange(8, dtype=torch.uint8))
_ATTR = "_qsim_hooks_recipe"


# ---------------------------------------------------------------------------
# masks as bits: element i is bit (i % 8) of byte i // 8
#
# Eight bool bytes are one int64 word (little-endian: byte j is element j), so packing and unpacking are
# word-wise integer arithmetic, a few passes over n / 8 words (a reduction over rows of 8 bytes, or 8
# shifted copies of the mask, cost one to two orders of magnitude more):
#   pack:   (w * PACK) >> 56 moves byte j's bit to bit 56 + j (:func:`._exmy.pack_bytes`)
#   unpack: b * SPREAD copies byte b into all 8 bytes, & SELECT keeps bit j in byte j, + ROUND carries a
#           set bit into bit 7 of its own byte (0x80 + 0x7f = 0xff: never into the next), >> 7 & SPREAD
# ---------------------------------------------------------------------------
_SPREAD = 0x0101010101010101
_SELECT = 0x8040201008040201 - (1 << 64)  # as a signed int64
_ROUND = 0x7F7F7F7F7F7F7F7F
_WORDS = sys.byteorder == "little"  # byte j of a word is element j (else: the row-wise forms below)


def _words_apply() -> bool:
    return _WORDS and not torch.compiler.is_compiling()  # a user's torch.compile traces the row-wise forms


def _pack(m: Tensor) -> Tensor:  # eight strided slices: inductor fuses them into one loop (a row sum it does not)
    m8 = m.view(-1, 8)
    acc = m8[:, 0]
    for j in range(1, 8):
        acc = acc | (m8[:, j] << j)
    return acc


def pack_mask(mask: Tensor) -> Tensor:
    """A bool tensor as a uint8 tensor of ``ceil(numel / 8)`` bytes (its shape is the caller's to keep)."""
    m = mask.reshape(-1).view(torch.uint8)
    pad = (-m.numel()) % 8
    if pad:
        m = torch.cat([m, m.new_zeros(pad)])
    if not _words_apply():
        return _pack(m)
    return pack_bytes(m)


def _bytes(packed: Tensor, n: int) -> Tensor:
    """The packed mask as ``n`` bytes 0 / 1 (uint8)."""
    if not _words_apply():
        (shifts,) = _SHIFTS.on(packed.device)
        return ((packed.unsqueeze(-1) >> shifts) & 1).reshape(-1)[:n]
    w = ((packed.to(torch.int64) * _SPREAD) & _SELECT) + _ROUND
    return ((w >> 7) & _SPREAD).view(torch.uint8)[:n]


def unpack_mask(packed: Tensor, shape: torch.Size) -> Tensor:
    """The bool tensor of ``shape`` that :func:`pack_mask` packed."""
    n = 1
    for s in shape:
        n *= s
    return _bytes(packed, n).view(torch.bool).reshape(shape)


def _masked(g: Tensor, m: Tensor) -> Tensor:
    return g * m.to(g.dtype)


def _masked_bits(g: Tensor, packed: Tensor) -> Tensor:  # fused: the bits read in the product's own loop
    shifts = torch.arange(8, dtype=torch.uint8, device=g.device)  # made in the graph: a constant there
    return (g.view(-1, 8) * ((packed.view(-1, 1) >> shifts) & 1).to(g.dtype)).view(-1)


def masked_grad(g: Tensor, packed: Tensor) -> Tensor:
    """``g * mask.to(g.dtype)`` for the mask :func:`pack_mask` packed (NaN and signed zeros as that product gives)."""
    flat = g.reshape(-1)
    n = flat.numel()
    if n % 8:
        return kernels.run("masked_grad_bytes", _masked, flat, _bytes(packed, n)).reshape(g.shape)
    return kernels.run("masked_grad_bits", _masked_bits, flat, packed,
                       eager=lambda g: _masked(g, _bytes(packed, n))).reshape(g.shape)


# ---------------------------------------------------------------------------
# recipes: a saved quantized tensor re-made from its source in the backward
# ---------------------------------------------------------------------------
class Recipe:
    """A saved tensor replaced by ``remake(source)`` (what the pack hook returns); ``view``: the saved
    tensor's (size, stride, offset) in that result's memory (a Linear saves its weight transposed)."""

    __slots__ = ("source", "version", "remake", "view")

    def __init__(self, source: Tensor, version: int, remake: Callable[[Tensor], Tensor],
                 view: tuple) -> None:
        self.source = source
        self.version = version
        self.remake = remake
        self.view = view

    def unpack(self) -> Tensor:
        if self.source._version != self.version:
            raise RuntimeError(
                "qsim_hooks: the input of a quantization point was modified by an inplace operation after the "
                f"forward (version {self.version}, now {self.source._version}); its quantized tensor, needed "
                "for gradient computation, is re-made from it in the backward. Do not modify it in place before "
                "backward(), or save it as it is with qsim_hooks.formats.saved.recompute(False)")
        y = self.remake(self.source)
        size, stride, offset = self.view
        if y.size() == size and y.stride() == stride and y.storage_offset() == offset:
            return y
        return y.as_strided(size, stride, offset)


def mark(y: Tensor, x: Tensor, remake: Callable[[Tensor], Tensor]) -> None:
    """Record on ``y`` that ``remake(x)`` re-makes it (``x`` held weakly: the mark keeps nothing alive).

    A layer may save a view of ``y`` (a Linear its transposed weight): it is re-made with the same strides.
    """
    if y.untyped_storage().data_ptr() == x.untyped_storage().data_ptr():
        return  # y shares x's memory: nothing to gain, and x's base is the user's
    setattr(y, _ATTR, (weakref.ref(x), x._version, y._version, remake))


def _pack_hook(t: Tensor) -> Tensor | Recipe:
    m = getattr(t, _ATTR, None)
    if m is None:
        base = t._base
        m = None if base is None else getattr(base, _ATTR, None)
        if m is None:
            return t
    ref, x_version, y_version, remake = m
    x = ref()
    if x is None or x._version != x_version or t._version != y_version:
        return t  # the source is gone or changed, or the result changed since: keep the result itself
    return Recipe(x, x_version, remake, (t.size(), t.stride(), t.storage_offset()))


def _unpack_hook(p: Tensor | Recipe) -> Tensor:
    return p.unpack() if isinstance(p, Recipe) else p


_enabled = True


@contextlib.contextmanager
def recompute(enabled: bool) -> Iterator[None]:
    """Turn recipes on or off in this scope (off: for code that modifies quantized inputs in place
    before the backward; the quantized tensors are then saved as they are)."""
    global _enabled
    old, _enabled = _enabled, enabled
    try:
        yield
    finally:
        _enabled = old


def enter_scope() -> bool:
    """Push the recipe hooks if they apply here; returns whether they were pushed (then call :func:`exit_scope`).

    They do not apply when grad is off, under torch.compile, when :func:`recompute` turned them
    off, or when other saved-tensor hooks are active.
    """
    if not _enabled or not torch.is_grad_enabled() or torch.compiler.is_compiling():
        return False
    top = getattr(torch._C._autograd, "_top_saved_tensors_default_hooks", None)
    if top is not None and top(True) is not None:
        return False  # checkpointing / offloading hooks own what is saved here
    try:
        torch._C._autograd._push_saved_tensors_default_hooks(_pack_hook, _unpack_hook)
    except RuntimeError:  # saved-tensor hooks disabled in this scope (functorch transforms)
        return False
    return True


def exit_scope() -> None:
    """Pop the hooks :func:`enter_scope` pushed."""
    torch._C._autograd._pop_saved_tensors_default_hooks()
