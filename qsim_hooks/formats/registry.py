"""Names -> formats, and the one function that turns anything format-like into a Format.

``get("e4m3")`` returns the named format; any ``eXmY`` string parses to an
IEEE-convention float (``eXmYfn`` / ``eXmYnone`` pick the other special-value
conventions), ``intN`` / ``uintN`` to an integer format. :func:`as_format`
also accepts Format objects, qtorch number objects (``FloatingPoint``,
``FixedPoint``, ``BlockFloatingPoint``) and any callable tensor -> tensor.
qtorch itself is never imported here: its objects are recognised by class name,
so ``import qsim_hooks`` never compiles its C++ extension.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from . import base, block
from ._checks import check_name
from .base import Format, FormatLike, GradSpec, check_tensor
from .floating import BF16, E2M1, E2M3, E3M2, E3M4, E4M3, E5M2, FP16, FP32, TF32, FloatFormat
from .integer import IntFormat
from .scaling import Scaling

__all__ = ["get", "names", "as_format", "register", "CallableFormat", "FormatLike"]

#: Every pinned name and its format (formats are frozen values: one object serves every caller).
_NAMED: dict[str, Format] = {
    f.name: f for f in (E4M3, E5M2, E3M4, E3M2, E2M3, E2M1, FP16, BF16, TF32, FP32,
                        *(IntFormat(b) for b in range(2, 17)), IntFormat(8, signed=False),
                        *block.NAMED.values())}
_ALIASES = {"float16": "fp16", "half": "fp16", "bfloat16": "bf16", "float32": "fp32",
            "e4m3fn": "e4m3", "fp8_e4m3": "e4m3", "fp8_e5m2": "e5m2", "fp4": "e2m1",
            "fp4_e2m1": "e2m1", "fp6_e3m2": "e3m2", "fp6_e2m3": "e2m3"}
_EXMY = re.compile(r"^e(\d+)m(\d+)(fn|none|ieee)?$")
_INTN = re.compile(r"^(u?)int(\d+)$")
_extra: dict[str, Callable[[], Format]] = {}


def register(name: str, factory: Callable[[], Format]) -> None:
    """Register a named format (a zero-argument factory returning a Format)."""
    if not isinstance(name, str) or not name:
        raise TypeError("register: name must be a non-empty str")
    if not callable(factory):
        raise TypeError("register: factory must be callable")
    _extra[name.lower()] = factory


def names() -> list[str]:
    """Every pinned format name (``eXmY``/``intN`` strings parse too)."""
    return list(_NAMED) + [n for n in _extra if n not in _NAMED]


def get(name: str) -> Format:
    """The format named ``name``; unknown names list the closest known ones."""
    if not isinstance(name, str):
        raise TypeError(f"format name must be a str, got {type(name).__name__}")
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    if key in _extra:
        return _extra[key]()
    if key in _NAMED:
        return _NAMED[key]
    m = _EXMY.match(key)
    if m:
        e, mm, sp = int(m.group(1)), int(m.group(2)), m.group(3) or "ieee"
        return FloatFormat(e, mm, specials=sp, name=key)
    m = _INTN.match(key)
    if m:
        return IntFormat(int(m.group(2)), signed=not m.group(1), name=key)
    close = difflib.get_close_matches(key, names() + list(_ALIASES), n=4, cutoff=0.5)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise ValueError(f"unknown format {name!r}{hint} (known: {', '.join(names()[:12])}, ..., "
                     "or any 'eXmY' / 'intN' string)")


@dataclass(frozen=True)
class CallableFormat(Format):
    """Wraps any callable tensor -> tensor (a qtorch quantizer, a user function).

    Its gradient is the plain straight-through estimator unless ``grad`` says
    otherwise (the callable is applied to a detached tensor). A callable that
    is an autograd Function's ``apply`` (a qtorch ``quantizer(...)``) brings
    its own backward, for instance qtorch's ``backward_number`` gradient
    quantization: that backward is used and ``grad`` is ignored.
    """

    fn: Callable[[Tensor], Tensor]
    name: str = ""
    grad: GradSpec = field(default_factory=lambda: GradSpec("ste"))

    def __post_init__(self) -> None:
        if not callable(self.fn):
            raise TypeError(f"CallableFormat.fn must be callable, got {type(self.fn).__name__}")
        check_name("CallableFormat", self.name)
        if not isinstance(self.grad, GradSpec):
            raise TypeError(f"CallableFormat.grad must be a GradSpec, got {type(self.grad).__name__}")
        if not self.name:
            object.__setattr__(self, "name", getattr(self.fn, "__name__", type(self.fn).__name__))

    def __call__(self, x: Tensor, *, amax: Any = None, generator: torch.Generator | None = None) -> Tensor:
        owner = getattr(self.fn, "__self__", None)
        if (isinstance(owner, type) and issubclass(owner, torch.autograd.Function)
                and isinstance(x, Tensor) and x.requires_grad and torch.is_grad_enabled()):
            check_tensor(x, f"format {self.name}")
            return self._apply(x if x.dtype == torch.float32 else x.float()).to(x.dtype)
        return super().__call__(x, amax=amax, generator=generator)

    def _apply(self, x: Tensor) -> Tensor:
        y = self.fn(x)
        if not isinstance(y, Tensor) or y.shape != x.shape:
            raise TypeError(f"format {self.name}: the callable must return a tensor of shape "
                            f"{tuple(x.shape)}, got {getattr(y, 'shape', type(y).__name__)}")
        return y.to(torch.float32)

    def _forward(self, x: Tensor, amax: Tensor | None, generator: torch.Generator | None,
                 want_mask: bool) -> tuple[Tensor, Tensor | None]:
        return self._apply(x), (torch.ones_like(x, dtype=torch.bool) if want_mask else None)


def _from_qtorch(obj: Any) -> Format | None:
    cls = type(obj).__name__
    mod = type(obj).__module__ or ""
    if not mod.startswith("qtorch"):
        return None
    if cls == "FloatingPoint":
        # qtorch convention: every code finite, ties away from zero, saturating.
        e, m = int(obj.exp), int(obj.man)
        if e == 8:
            # qtorch never clips an 8-bit exponent: it is float32's own range,
            # overflow gives Inf and Inf/NaN pass through (the IEEE convention)
            return FloatFormat(e, m, specials="ieee", overflow="special", rounding="nearest_away",
                               name=f"qtorch_e{e}m{m}")
        return FloatFormat(e, m, specials="none", rounding="nearest_away", name=f"qtorch_e{e}m{m}")
    if cls == "FixedPoint":
        wl, fl = int(obj.wl), int(obj.fl)
        qmax = 2 ** (wl - 1) - 1
        # qtorch's fixed-point "nearest" is nearbyint: ties to even (unlike its floats)
        return IntFormat(wl, narrow=bool(getattr(obj, "symmetric", False)),
                         scaling=Scaling(mode="static", amax=qmax * 2.0**-fl),
                         rounding="nearest_even", name=f"qtorch_fixed{wl}.{fl}")
    if cls == "BlockFloatingPoint":
        return block.from_qtorch_bfp(obj)
    return None


def as_format(obj: FormatLike | None, *, field: str = "format") -> Format | None:
    """Turn anything format-like into a Format (``None`` stays ``None``)."""
    if obj is None or isinstance(obj, Format):
        return obj
    if isinstance(obj, str):
        try:
            return get(obj)
        except ValueError as exc:
            raise ValueError(f"{field}: {exc}") from None
    q = _from_qtorch(obj)
    if q is not None:
        return q
    if callable(obj) and not isinstance(obj, type):
        return CallableFormat(obj)
    raise TypeError(f"{field}: {obj!r} ({type(obj).__name__}) is not a format; pass a name such as "
                    "'e4m3' or 'int8', a Format, a qtorch number or quantizer, a callable, or None")


base.set_format_resolver(lambda obj, field: as_format(obj, field=field))
