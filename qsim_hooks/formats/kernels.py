"""Element-wise kernels and the choice between eager and fused (compiled) paths.

Every kernel is written once, as plain torch operations on the float32 bit
pattern (integer arithmetic, no log2/pow per element; the arithmetic is in
:mod:`._exmy`), so that ``torch.compile`` fuses it into a single loop on CPU
(C++/OpenMP) or GPU (Triton). Format parameters travel as small tensors, never
as Python numbers, so one compiled kernel serves every ExMy format without
recompiling. A format holds its own tensors in a :class:`Consts` (copied to a
device once, dropped with the format; nothing here caches per format).

Backends (``set_backend`` or the ``QSIM_HOOKS_BACKEND`` environment variable):

* ``"auto"`` (default): eager torch until fusing a kernel pays: a kernel is
  compiled once the eager time spent in it (plus the coming call's) reaches
  what compiling it is expected to cost (:mod:`._compile_cost`: less when
  torch.compile is already loaded and this kernel's compile is cached from an
  earlier process), and only for tensors of at least ``COMPILE_MIN_NUMEL``
  elements; so a small job never waits for the compiler and a big one is fused
  after at most about twice the compile's cost. When compilation is
  unavailable, a warning is given once and eager is used from then on;
* ``"eager"``: never compile;
* ``"compiled"``: always the fused kernel.

Eager and fused paths give bit-identical results (tested; a NaN stays a NaN, its sign
and payload as each path leaves them). Inside a user's ``torch.compile`` the kernels
are traced inline, and the native-cast shortcuts (``x.to(float16).float()``) are not
used: inductor drops such round trips, the bit kernels it cannot.
"""

from __future__ import annotations

import functools
import math
import os
import sys
import time
import warnings
from collections.abc import Callable

import torch
from torch import Tensor

from . import _compile_cost, _fused_call
from ._exmy import (
    F32_MAX,
    NEAREST_AWAY,
    NEAREST_EVEN,
    P_MAX,
    STOCHASTIC,
    TOWARD_ZERO,
    cap,
    clamp_f32,
    directed,
    fast_round_impl,
    float_round_impl,
    grid_down,
    grid_up,
    has_magic,
    in_range_bits,
    magic_overflow_impl,
    magic_round_impl,
    round_int,
    saturate,
    to_dtype,
)
from ._fused_call import EXACT_OPTIONS, into_variant, named_copy
from ._split import SplitConsts, split_round

__all__ = ["set_backend", "get_backend", "float_round", "scaled_float_round", "int_fake_quant", "finite_absmax",
           "to_dtype", "canonical", "named_copy", "run", "Consts", "COMPILE_MIN_NUMEL",
           "NEAREST_EVEN", "NEAREST_AWAY", "TOWARD_ZERO", "STOCHASTIC"]

COMPILE_MIN_NUMEL = 1 << 16  # below this, eager is fast enough and compiling is not worth the wait
_BACKENDS = ("auto", "eager", "compiled")
_backend = os.environ.get("QSIM_HOOKS_BACKEND", "auto")
if _backend not in _BACKENDS:
    warnings.warn(f"QSIM_HOOKS_BACKEND={_backend!r} is not one of {_BACKENDS}; using 'auto'", stacklevel=1)
    _backend = "auto"
_compile_failed = False
_compiled: dict[str, Callable] = {}


def set_backend(name: str) -> None:
    """Choose how kernels run: ``"auto"``, ``"eager"`` or ``"compiled"``."""
    global _backend
    if name not in _BACKENDS:
        raise ValueError(f"backend={name!r} is not allowed; use one of {', '.join(_BACKENDS)}")
    _backend = name


def get_backend() -> str:
    return _backend


def _use_compiled(x: Tensor, name: str = "") -> bool:
    """Whether kernel ``name`` runs fused on ``x`` now (``name=""``: whether some kernel already does)."""
    if _backend == "eager" or _compile_failed:
        return False
    if torch.compiler.is_compiling():
        return False  # already inside a user's torch.compile: let it fuse us
    if _backend == "compiled":
        return True
    if x.numel() < COMPILE_MIN_NUMEL:
        return False
    if not name:
        return bool(_compiled)
    return name in _compiled or _compile_cost.pays(name, x)


def run(name: str, fn: Callable, x: Tensor, *args: Tensor,
        eager: Callable[[Tensor], Tensor] | None = None) -> Tensor:
    """Run kernel ``fn`` on ``x``, fused when the backend says so.

    ``eager``: a cheaper eager equivalent of ``fn(x, *args)`` (a native cast, bit for bit the
    same), run instead of ``fn`` when not fused and not inside a user's torch.compile.
    """
    global _compile_failed
    if _use_compiled(x, name):
        cfn = _compiled.get(name)
        try:
            if cfn is not None:
                return _fused_call.call(cfn, (x, *args))
            cfn = torch.compile(fn, dynamic=True, fullgraph=True, options=EXACT_OPTIONS)
            with _compile_cost.compiling(name):
                out = _fused_call.call(cfn, (x, *args))
            _compiled[name] = cfn
            return out
        except Exception as exc:  # compiler missing, unsupported device, ...
            _compile_failed = True
            warnings.warn(f"qsim_hooks: torch.compile of kernel {name!r} failed ({type(exc).__name__}: "
                          f"{str(exc).splitlines()[0] if str(exc) else ''}); using eager kernels",
                          RuntimeWarning, stacklevel=3)
    if torch.compiler.is_compiling():
        return fn(x, *args)  # traced inline into the user's graph: the bit kernel, nothing timed
    if eager is not None:
        fn, args = (lambda x: eager(x)), ()
    if _backend != "auto" or _compile_failed:
        return fn(x, *args)
    if x.device.type != "cpu":
        _compile_cost.spent(name, x, None)  # asynchronous: estimated, not timed
        return fn(x, *args)
    t0 = time.perf_counter()  # CPU kernels are synchronous: their time is what fusing would save
    out = fn(x, *args)
    _compile_cost.spent(name, x, time.perf_counter() - t0)
    return out


class Consts:
    """A format's small constant tensors: made on the CPU once, copied to each device once.

    The format holds it, so the tensors live exactly as long as the format (no
    module-level cache keeps them). While torch.compile traces, nothing is
    cached: a trace must not write state that its own guards read.
    """

    __slots__ = ("cpu", "fast", "magic", "split", "_on")

    def __init__(self, *cpu: Tensor, fast: bool = False, split: SplitConsts | None = None,
                 saturating: bool = True) -> None:
        self.cpu = cpu
        self.fast = fast  # an ExMy grid the step kernel may round onto
        # the magic kernel's name for this grid (round to nearest even), if it may round onto it
        self.magic = None if not (fast and has_magic(cpu[0])) else \
            ("magic_round" if saturating else "magic_overflow")
        self.split = split  # its constants for the eager split kernel (round to nearest even), if exact there
        self._on: dict[torch.device, tuple[Tensor, ...]] = {}

    def on(self, device: torch.device) -> tuple[Tensor, ...]:
        if torch.compiler.is_compiling():
            return tuple(t.to(device) for t in self.cpu)
        got = self._on.get(device)
        if got is None:
            got = self._on[device] = tuple(t.to(device) for t in self.cpu)
        return got


# ---------------------------------------------------------------------------
# ExMy kernels: unscaled, and scaled (round(x / scale) * scale on the output grid)
# ---------------------------------------------------------------------------
def _scaled_directed(x: Tensor, p: Tensor, inv: Tensor, scale: Tensor, mode: int, impl: Callable,
                     noise: Tensor | None) -> Tensor:
    g = impl((x * inv).abs(), p, TOWARD_ZERO, None)

    def decode(v: Tensor) -> Tensor:
        return cap(v * scale)

    u = None if noise is None else noise.to(torch.float32) * 2.0**-23
    g = directed(x.abs(), g, mode, u, decode, lambda v: grid_up(v, p), lambda v: grid_down(v, p, impl),
                 p[P_MAX].view(torch.float32))
    return torch.copysign(saturate(g * scale, g), x)


def _make_float_kernel(impl: Callable, mode: int, scaled: bool | str, sat: bool) -> Callable:
    """One ExMy kernel: ``impl`` (bit or step kernel) at a fixed rounding mode, optionally scaled.

    Unscaled: ``kernel(x, p[, noise])`` (``scaled="mask"``: also in_range_bits); scaled: ``kernel(x, p, inv,
    scale[, noise])`` rounds ``x * inv`` and decodes with ``scale``; ``sat``: saturating at ±float32 max (``max *
    scale`` can round past it when amax is near it). The directed modes decide on the decoded values (``directed``).
    """
    if scaled is not True:  # "mask": with the clipped STE's in-range mask as bits, from the same pass
        def kernel(x: Tensor, p: Tensor, *noise: Tensor) -> Tensor | tuple[Tensor, Tensor]:
            y = impl(x, p, mode, noise[0] if noise else None)
            return (y, in_range_bits(x, p)) if scaled else y
        return kernel

    def scaled_kernel(x: Tensor, p: Tensor, inv: Tensor, scale: Tensor, *noise: Tensor) -> Tensor:
        if mode >= TOWARD_ZERO:
            return _scaled_directed(x, p, inv, scale, mode, impl, noise[0] if noise else None)
        y = impl(x * inv, p, mode, None) * scale
        return clamp_f32(y) if sat else y
    return scaled_kernel


# (kind, scaled, saturating) -> one kernel per rounding mode; the step kernel has no stochastic mode, the
# magic kernels only round to nearest even
_KINDS = {"float_round": (float_round_impl, 4), "fast_round": (fast_round_impl, 3),
          "magic_round": (magic_round_impl, 1), "magic_overflow": (magic_overflow_impl, 1)}
_FLOAT_KERNELS: dict[tuple[str, bool | str, bool], tuple[Callable, ...]] = {
    (kind, scaled, sat): tuple(
        named_copy(_make_float_kernel(impl, mode, scaled, sat), f"{'scaled_' if scaled is True else ''}{kind}_"
                   f"{mode}{'_sat' if sat else ''}{'_mask' if scaled == 'mask' else ''}") for mode in range(n_modes))
    for kind, (impl, n_modes) in _KINDS.items() for scaled, sat in ((False, False), ("mask", False), (True, False),
                                                                    (True, True))}
#: the unscaled deterministic kernels writing into their input (``float_round(..., into=True)``), by name
_INTO = {fn.__name__: into_variant(fn) for fns in (_FLOAT_KERNELS[k, False, False] for k in _KINDS) for fn in fns[:3]}


def canonical(x: Tensor, scale: Tensor) -> tuple[Tensor, Tensor, torch.Size]:
    """Reshape ``x`` and a broadcastable ``scale`` to a fixed rank (so one compiled graph serves all).

    Per-tensor scales give 1-D ``x`` and a 0-d scale; any other scale (per
    channel, per block) gives ``x`` as ``(A, C, B)`` and the scale as
    ``(1, C, 1)``, where C covers the contiguous dims the scale varies along.
    """
    shape = x.shape
    if scale.numel() == 1:
        return x.reshape(-1), scale.reshape(()), shape
    s = scale.reshape((1,) * (x.dim() - scale.dim()) + tuple(scale.shape))
    varying = [i for i, n in enumerate(s.shape) if n != 1]
    lo, hi = varying[0], varying[-1]
    if any(s.shape[i] != shape[i] for i in range(lo, hi + 1)):
        raise AssertionError("scale must vary along a contiguous run of dims of x")
    a = 1
    for n in shape[:lo]:
        a *= n
    c = 1
    for n in shape[lo:hi + 1]:
        c *= n
    return x.reshape(a, c, -1), s.reshape(1, c, 1), shape


def _bit_noise(mode: int, shape: torch.Size, device: torch.device,
               generator: torch.Generator | None) -> tuple[Tensor, ...]:
    """Stochastic rounding's noise for the ExMy kernels (uniform in [0, 2^23)); nothing for other modes."""
    if mode != STOCHASTIC:
        return ()
    return (torch.randint(0, 1 << 23, shape, generator=generator, device=device, dtype=torch.int32),)


def _magic_exact() -> bool:
    """Whether code compiled now keeps ``(x + c) - c`` as written. The kernels compiled here pin it
    (:data:`EXACT_OPTIONS`); traced into a user's torch.compile, their inductor settings apply, and its C++
    may reassociate when asked for unsafe math (``torch._inductor.config.cpp.enable_unsafe_math_opt_flag``)."""
    if not torch.compiler.is_compiling():
        return True
    config = sys.modules.get("torch._inductor.config")
    return config is None or not config.cpp.enable_unsafe_math_opt_flag


def _kind(params: Consts, mode: int, fast: bool, scaled: bool = False) -> str:
    """The ExMy kernel for ``params`` at ``mode``: magic (nearest even), step, or bit kernel (every mode).
    Traced into a user's torch.compile, a scaled kernel keeps the step kernel: there ``x * inv + c`` could be
    contracted into one FMA (Triton does by default), which rounds once where eager rounds twice."""
    if not fast or mode == STOCHASTIC or not params.fast:
        return "float_round"
    if mode == NEAREST_EVEN and params.magic is not None and _magic_exact() \
            and not (scaled and torch.compiler.is_compiling()):
        return params.magic
    return "fast_round"


def float_round(x: Tensor, params: Consts, mode: int, generator: torch.Generator | None = None,
                *, fast: bool | None = None, eager: Callable[[Tensor], Tensor] | None = None,
                into: bool = False, mask: bool = False) -> Tensor | tuple[Tensor, Tensor]:
    """Round a float32 tensor to the ExMy grid ``params`` (a format's :class:`Consts`).

    ``fast`` picks the magic or step kernel (default: whenever the format allows) and, for round to nearest
    even when not fused, the split kernel (:mod:`._split`) unless ``eager`` (a native cast doing the same
    rounding, used when the kernel is not fused: :func:`run`) is given; ``fast=False`` forces the bit kernel
    (all agree bit for bit). ``into``: the caller gives ``x`` up (nothing else reads it), so a fused
    deterministic kernel may write its result into ``x`` and return it (eager kernels and stochastic rounding
    still return a new tensor). ``mask``: ``(result, bits)``, bits the packed ``|x| <= max``
    (:func:`._exmy.in_range_bits`; from the same pass when fused), ``None`` when x's size is no multiple of 8.
    """
    kind = _kind(params, mode, fast is not False)
    if eager is None and mode == NEAREST_EVEN and params.split is not None and fast is not False:
        eager = functools.partial(split_round, k=params.split)
    # detach: kernels never take part in autograd (formats wrap them in a STE); nor specialise on Parameter
    x = x.detach().contiguous()
    (p,) = params.on(x.device)
    shape = x.shape
    x = x.reshape(-1)
    fn, fm = (_FLOAT_KERNELS[kind, m, False][mode] for m in (False, "mask"))
    if into and not mask and mode != STOCHASTIC and x.dtype == torch.float32 and not torch.compiler.is_compiling():
        in_place = _INTO[fn.__name__]
        out = run(in_place.__name__, in_place, x, p, eager=eager or functools.partial(fn, p=p))
        return (x if out is None else out).reshape(shape)  # None: the fused kernel wrote into x
    noise = _bit_noise(mode, x.shape, x.device, generator)
    if mask and x.numel() % 8 == 0:  # unfused: the cast (or its eager form) and the bits, timed as one kernel
        y, bits = run(fm.__name__, fm, x, p, *noise, eager=lambda x: (
            fn(x, p, *noise) if eager is None else eager(x), in_range_bits(x, p)))
        return y.reshape(shape), bits
    y = run(fn.__name__, fn, x, p, *noise, eager=eager).reshape(shape)
    return (y, None) if mask else y


def scaled_float_round(x: Tensor, params: Consts, inv: Tensor, scale: Tensor, mode: int,
                       generator: torch.Generator | None = None, *, saturate: bool = True) -> Tensor:
    """``round(x * inv) * scale`` on an ExMy grid, fused when possible (``saturate``: at ±float32 max)."""
    x = x.detach().contiguous()
    (p,) = params.on(x.device)
    xc, sc, shape = canonical(x, scale)
    _, ic, _ = canonical(x, inv)
    fn = _FLOAT_KERNELS[_kind(params, mode, True, scaled=True), True, saturate][mode]
    eager = None
    if mode == NEAREST_EVEN and params.split is not None:
        eager = functools.partial(_split_scaled, inv=ic, scale=sc, k=params.split, sat=saturate)
    return run(fn.__name__, fn, xc, p, ic, sc, *_bit_noise(mode, xc.shape, x.device, generator),
               eager=eager).reshape(shape)


def _split_scaled(x: Tensor, inv: Tensor, scale: Tensor, k: SplitConsts, sat: bool) -> Tensor:
    """The scaled kernel's round to nearest even with the split kernel (eager; the same bits)."""
    y = split_round(x * inv, k).mul_(scale)
    return clamp_f32(y) if sat else y


# ---------------------------------------------------------------------------
# Integers: clamp(round(x * inv), qmin, qmax) * scale
# ---------------------------------------------------------------------------
def _int_fq_impl(x: Tensor, inv_scale: Tensor, scale: Tensor, lim: Tensor, mode: int,
                 noise: Tensor | None, unsigned: bool) -> Tensor:
    if mode < TOWARD_ZERO:
        # clamp(round(v), qmin, qmax) * scale == clamp(round(v) * scale, qmin * scale, qmax * scale) for
        # integer qmin, qmax: one clamp both saturates the codes and keeps the result within float32
        lo = torch.clamp(lim[0] * scale, -F32_MAX, F32_MAX)
        hi = torch.clamp(lim[1] * scale, -F32_MAX, F32_MAX)
        y = torch.clamp(round_int(x * inv_scale, mode, None) * scale, lo, hi)
        # unsigned: a negative x clamped to 0 keeps its sign on both paths (eager and inductor
        # disagree on which zero clamp(-0.0, min=0) returns)
        return torch.copysign(y, x) if unsigned else y
    q = torch.clamp(x * inv_scale, lim[0], lim[1])

    def decode(k: Tensor) -> Tensor:
        return cap(k * scale)

    top = torch.where(x < 0, -lim[0], lim[1])
    k = directed(x.abs(), torch.trunc(q.abs()), mode, noise, decode, lambda k: k + 1, lambda k: k - 1, top)
    return torch.copysign(decode(k), x)


def _make_int_kernel(mode: int, unsigned: bool) -> Callable:
    def kernel(x: Tensor, inv: Tensor, scale: Tensor, lim: Tensor, *noise: Tensor) -> Tensor:
        return _int_fq_impl(x, inv, scale, lim, mode, noise[0] if noise else None, unsigned)
    return kernel


_INT_KERNELS = {(mode, unsigned): named_copy(_make_int_kernel(mode, unsigned),
                                             f"int_fq_{mode}{'_unsigned' if unsigned else ''}")
                for mode in range(4) for unsigned in (False, True)}


def int_fake_quant(x: Tensor, inv_scale: Tensor, scale: Tensor, lim: Consts, mode: int,
                   generator: torch.Generator | None = None, *, unsigned: bool = False) -> Tensor:
    """``clamp(round(x * inv_scale), qmin, qmax) * scale``, fused when possible.

    ``lim``: the format's ``[qmin, qmax]`` (float32). The result saturates at ±float32 max
    (``qmax * scale`` can round past it when amax is near it).
    """
    x = x.detach().contiguous()
    (lo_hi,) = lim.on(x.device)
    xc, sc, shape = canonical(x, scale)
    _, ic, _ = canonical(x, inv_scale)
    fn = _INT_KERNELS[mode, unsigned]
    noise = (torch.rand(xc.shape, generator=generator, device=x.device, dtype=torch.float32),) \
        if mode == STOCHASTIC else ()
    return run(fn.__name__, fn, xc, ic, sc, lo_hi, *noise).reshape(shape)


# ---------------------------------------------------------------------------
# The finite amax (casting back to a half-precision input dtype: _exmy.to_dtype)
# ---------------------------------------------------------------------------
def _finite_absmax(x: Tensor) -> Tensor:
    a = x.abs()
    return torch.where(a < math.inf, a, 0.0).amax()  # NaN < inf is False too


def finite_absmax(x: Tensor) -> Tensor:
    """max |x| over the finite elements, as a 0-d tensor: one fused pass, no host sync."""
    return run("finite_absmax", _finite_absmax, x.detach().reshape(-1))
