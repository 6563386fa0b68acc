"""Element-wise kernels and the choice between eager and fused (compiled) paths.

Every kernel is written once, as plain torch operations on the float32 bit
pattern (integer arithmetic, no log2/pow per element), so that
``torch.compile`` fuses it into a single loop on CPU (C++/OpenMP) or GPU
(Triton). Format parameters travel as a small int32 tensor, never as Python
numbers, so one compiled kernel serves every ExMy format without recompiling.

Backends (``set_backend`` or the ``QSIM_HOOKS_BACKEND`` environment variable):

* ``"auto"`` (default): the fused kernel for tensors of at least
  ``COMPILE_MIN_NUMEL`` elements, eager torch below that or when compilation
  is unavailable (a warning is given once and eager is used from then on);
* ``"eager"``: never compile;
* ``"compiled"``: always the fused kernel.

Eager and fused paths give bit-identical results (tested).
"""

from __future__ import annotations

import os
import types
import warnings
import weakref
from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["set_backend", "get_backend", "float_round", "scaled_float_round", "int_fake_quant", "canonical",
           "named_copy", "run", "COMPILE_MIN_NUMEL", "NEAREST_EVEN", "NEAREST_AWAY", "TOWARD_ZERO", "STOCHASTIC"]

#: Rounding-mode ids (what :class:`~qsim_hooks.formats.base.Rounding` maps to).
NEAREST_EVEN, NEAREST_AWAY, TOWARD_ZERO, STOCHASTIC = 0, 1, 2, 3

COMPILE_MIN_NUMEL = 1 << 16  # below this, eager is fast enough and compiling is not worth the wait
_BACKENDS = ("auto", "eager", "compiled")
_backend = os.environ.get("QSIM_HOOKS_BACKEND", "auto")
if _backend not in _BACKENDS:
    warnings.warn(f"QSIM_HOOKS_BACKEND={_backend!r} is not one of {_BACKENDS}; using 'auto'",
                  stacklevel=1)
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


def _use_compiled(x: Tensor) -> bool:
    if _backend == "eager" or _compile_failed:
        return False
    if torch.compiler.is_compiling():
        return False  # already inside a user's torch.compile: let it fuse us
    if _backend == "compiled":
        return True
    return x.numel() >= COMPILE_MIN_NUMEL


def run(name: str, fn: Callable, x: Tensor, *args) -> Tensor:
    """Run kernel ``fn`` on ``x``, fused when the backend says so."""
    global _compile_failed
    if _use_compiled(x):
        cfn = _compiled.get(name)
        if cfn is None:
            cfn = torch.compile(fn, dynamic=True, fullgraph=True)
            _compiled[name] = cfn
        try:
            return cfn(x, *args)
        except Exception as exc:  # compiler missing, unsupported device, ...
            _compile_failed = True
            warnings.warn(f"qsim_hooks: torch.compile of kernel {name!r} failed ({type(exc).__name__}: "
                          f"{str(exc).splitlines()[0] if str(exc) else ''}); using eager kernels",
                          RuntimeWarning, stacklevel=3)
    return fn(x, *args)


# ---------------------------------------------------------------------------
# ExMy rounding on the float32 bit pattern
# ---------------------------------------------------------------------------
# params (int32 tensor):
#   0 man_bits M        1 emin (unbiased)     2 max finite (fp32 bits)
#   3 overflow result (fp32 bits: max, inf or NaN)
#   4 smallest normal (fp32 bits; results below are flushed when flush=1)
#   5 smallest subnormal q_min (fp32 bits)   6 q_min / 2 (fp32 bits, 0 if not representable)
#   7 flush subnormals (0/1)
P_M, P_EMIN, P_MAX, P_OVF, P_MINNORM, P_QMIN, P_HALF, P_FLUSH = range(8)
#   8 lowest fp32 exponent field of a quantum step (emin + 127)   9 highest (above max)
P_ELO, P_EHI = 8, 9
_SIGN = -2147483648  # 0x80000000 as int32
_ABS = 0x7FFFFFFF
_INF = 0x7F800000


def _float_round_impl(x: Tensor, p: Tensor, mode: int, noise: Tensor | None) -> Tensor:
    bits = x.view(torch.int32)
    a = bits & _ABS
    sign = bits & _SIGN
    exp = a >> 23
    shift = (23 - p[P_M]) + torch.clamp((p[P_EMIN] + 127) - torch.clamp(exp, min=1), min=0)
    tiny = shift > 23  # |x| below the smallest subnormal of the target
    s = torch.clamp(shift, max=23)
    low = (1 << s) - 1
    if mode == 0:  # nearest, ties to even
        # the kept LSB; at s == 23 only the implicit bit is kept (1 for normal inputs)
        lsb = torch.where(s == 23, (exp > 0).to(torch.int32), (a >> s) & 1)
        inc = ((low >> 1) + lsb) & low
        t_up = a > p[P_HALF]
    elif mode == 1:  # nearest, ties away from zero
        inc = (low + 1) >> 1
        t_up = (a >= p[P_HALF]) & (a > 0)
    elif mode == 2:  # toward zero
        inc = torch.zeros_like(a)
        t_up = torch.zeros_like(a, dtype=torch.bool)
    else:  # stochastic: noise is uniform in [0, 2^23)
        assert noise is not None
        inc = noise & low
        qmin = p[P_QMIN].view(torch.float32)
        t_up = (x.abs() / qmin) * 8388608.0 > noise.to(torch.float32)
    r = (a + inc) & ~low
    r = torch.where(tiny, torch.where(t_up, p[P_QMIN], 0), r)
    r = torch.where(r > p[P_MAX], p[P_OVF], r)
    r = torch.where((p[P_FLUSH] != 0) & (r < p[P_MINNORM]), 0, r)
    r = torch.where(a > _INF, a, r)  # NaN stays NaN
    return (r | sign).view(torch.float32)


def _fast_round_impl(x: Tensor, p: Tensor, mode: int, noise: Tensor | None) -> Tensor:
    """The same rounding with fewer operations, for formats whose steps are normal fp32 numbers.

    Deterministic modes only (0, 1, 2): stochastic rounding always uses the bit kernel,
    whose noise-to-decision mapping is the reference.

    The step (quantum) at |x| is ``2^(max(e, emin) - M)``; it and its reciprocal are
    built from exponent bits, so ``x / step`` is exact and any rounding of it to an
    integer is the rounding of x onto the grid (subnormals and ties included).
    Valid when every step and reciprocal is a normal fp32 power of two,
    ``|x / step| < 2^21`` and the format keeps subnormals (``FloatFormat`` checks this
    and otherwise uses the bit kernel).
    """
    a = x.view(torch.int32) & _ABS
    e = torch.clamp(a >> 23, min=p[P_ELO], max=p[P_EHI]) - p[P_M]
    step = (e << 23).view(torch.float32)
    inv = ((254 - e) << 23).view(torch.float32)
    v = x * inv
    if mode == 0:
        r = torch.round(v)
    elif mode == 1:
        # not floor(|v| + 0.5): for v = 0.5 - 2^-25 (x just below half the smallest
        # subnormal) that float addition itself rounds up to 1.0
        t = torch.trunc(v)
        r = torch.where((v - t).abs() >= 0.5, t + torch.sign(v), t)
    else:
        r = torch.trunc(v)
    y = r * step
    # no flush-to-zero here: formats without subnormals take the bit kernel (a per-element
    # flag test costs about a third of this kernel's time)
    return torch.where(y.abs() > p[P_MAX].view(torch.float32), torch.copysign(p[P_OVF].view(torch.float32), x), y)


# Toward-zero and stochastic rounding of a scaled tensor: a dequantized grid value
# g * scale, scaled again by 1/scale, can come back an ulp below g, and truncating
# that would move it one grid step down (q(q(x)) != q(x)). Values within _SNAP
# (relative) of a grid point - more than the three float32 roundings of
# (g * scale) * (1 / scale) - are taken as that grid point first.
_SNAP = 2.0**-22


def _snap(y: Tensor, p: Tensor, impl: Callable) -> Tensor:
    g = impl(y, p, 0, None)
    return torch.where(torch.isfinite(g) & ((y - g).abs() <= g.abs() * _SNAP), g, y)


def named_copy(fn: Callable, name: str) -> Callable:
    """``fn`` with its own code object named ``name``.

    Dynamo caches compiled graphs per code object: closures made by one factory
    share one, and their guards would pile onto one cache entry list.
    """
    code = fn.__code__.replace(co_name=name, co_qualname=name) if hasattr(fn.__code__, "co_qualname") \
        else fn.__code__.replace(co_name=name)
    return types.FunctionType(code, fn.__globals__, name, fn.__defaults__, fn.__closure__)


def _make_float_kernel(impl: Callable, mode: int, scaled: bool) -> Callable:
    """One ExMy kernel: ``impl`` (bit or step kernel) at a fixed rounding mode, optionally scaled.

    Unscaled: ``kernel(x, p[, noise])``; scaled: ``kernel(x, p, inv, scale[, noise])``
    computes ``round(x * inv) * scale`` (snapping first for the directed modes, see _SNAP).
    """
    if not scaled:
        def kernel(x: Tensor, p: Tensor, *noise: Tensor) -> Tensor:
            return impl(x, p, mode, noise[0] if noise else None)
        return kernel

    def scaled_kernel(x: Tensor, p: Tensor, inv: Tensor, scale: Tensor, *noise: Tensor) -> Tensor:
        y = x * inv
        if mode >= 2:
            y = _snap(y, p, impl)
        return impl(y, p, mode, noise[0] if noise else None) * scale
    return scaled_kernel


# (kind, scaled) -> one kernel per rounding mode; the step kernel has no stochastic mode
_KINDS = {"float_round": (_float_round_impl, 4), "fast_round": (_fast_round_impl, 3)}
_FLOAT_KERNELS: dict[tuple[str, bool], tuple[Callable, ...]] = {
    (kind, scaled): tuple(
        named_copy(_make_float_kernel(impl, mode, scaled), f"{'scaled_' if scaled else ''}{kind}_{mode}")
        for mode in range(n_modes))
    for kind, (impl, n_modes) in _KINDS.items() for scaled in (False, True)}


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


_prepared: dict[int, tuple[weakref.ref, bool, dict[torch.device, Tensor]]] = {}


def _prepare(params: Tensor, device: torch.device) -> tuple[bool, Tensor]:
    """(may the step kernel run, ``params`` on ``device``), worked out once per params tensor.

    A format's params are a small CPU tensor that lives as long as the format: reading a
    flag off it or copying it to a GPU on every call would cost a sync or a transfer per call.
    """
    entry = _prepared.get(id(params))
    if entry is None or entry[0]() is not params:
        entry = (weakref.ref(params), bool(params[P_EHI] > 0), {})
        _prepared[id(params)] = entry
        weakref.finalize(params, _prepared.pop, id(params), None)
    p = entry[2].get(device)
    if p is None:
        p = entry[2][device] = params.to(device)
    return entry[1], p


def _fast(params: Tensor) -> bool:
    return _prepare(params, params.device)[0]


def _float_args(x: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
    # detach: kernels never take part in autograd (formats wrap them in a STE);
    # a plain Tensor also keeps torch.compile from specialising on Parameter.
    return x.detach().contiguous(), _prepare(params, x.device)[1]


def float_round(x: Tensor, params: Tensor, mode: int, generator: torch.Generator | None = None,
                *, fast: bool | None = None) -> Tensor:
    """Round a float32 tensor to an ExMy grid described by ``params``.

    ``fast`` picks the step-based kernel (default: whenever the format allows it);
    ``fast=False`` forces the bit-pattern kernel (the two agree bit for bit).
    """
    use_fast = mode != 3 and (_fast(params) if fast is None else (fast and _fast(params)))
    x, p = _float_args(x, params)
    shape = x.shape
    x = x.reshape(-1)
    fn = _FLOAT_KERNELS["fast_round" if use_fast else "float_round", False][mode]
    return run(fn.__name__, fn, x, p, *_bit_noise(mode, x.shape, x.device, generator)).reshape(shape)


def scaled_float_round(x: Tensor, params: Tensor, inv: Tensor, scale: Tensor, mode: int,
                       generator: torch.Generator | None = None) -> Tensor:
    """``round(x * inv) * scale`` on an ExMy grid, fused when possible."""
    use_fast = mode != 3 and _fast(params)
    x, p = _float_args(x, params)
    xc, sc, shape = canonical(x, scale)
    _, ic, _ = canonical(x, inv)
    fn = _FLOAT_KERNELS["fast_round" if use_fast else "float_round", True][mode]
    return run(fn.__name__, fn, xc, p, ic, sc, *_bit_noise(mode, xc.shape, x.device, generator)).reshape(shape)


def _bit_noise(mode: int, shape: torch.Size, device: torch.device,
               generator: torch.Generator | None) -> tuple[Tensor, ...]:
    """Stochastic rounding's noise for the bit kernel (uniform in [0, 2^23)); nothing for other modes."""
    if mode != STOCHASTIC:
        return ()
    return (torch.randint(0, 1 << 23, shape, generator=generator, device=device, dtype=torch.int32),)


# ---------------------------------------------------------------------------
# Integer rounding of an already scaled tensor
# ---------------------------------------------------------------------------
def _round_mode(q: Tensor, mode: int, noise: Tensor | None) -> Tensor:
    if mode == 0:
        return torch.round(q)
    if mode == 1:
        # trunc + exact fraction: floor(|q| + 0.5) is wrong for |q| = 0.5 - 2^-25,
        # where the float addition itself rounds up to 1.0
        t = torch.trunc(q)
        return torch.where((q - t).abs() >= 0.5, t + torch.sign(q), t)
    if mode == 2:
        return torch.trunc(q)
    assert noise is not None
    return torch.floor(q + noise)


def _int_fq_impl(x: Tensor, inv_scale: Tensor, scale: Tensor, lim: Tensor, mode: int,
                 noise: Tensor | None) -> Tensor:
    q = torch.clamp(x * inv_scale, lim[0], lim[1])
    if mode >= 2:  # toward zero, stochastic: an integer missed by an ulp is that integer (see _SNAP)
        r = torch.round(q)
        q = torch.where((q - r).abs() <= r.abs() * _SNAP, r, q)
    return _round_mode(q, mode, noise) * scale


def _make_int_kernel(mode: int) -> Callable:
    def kernel(x: Tensor, inv: Tensor, scale: Tensor, lim: Tensor, *noise: Tensor) -> Tensor:
        return _int_fq_impl(x, inv, scale, lim, mode, noise[0] if noise else None)
    return kernel


_INT_KERNELS = tuple(named_copy(_make_int_kernel(mode), f"int_fq_{mode}") for mode in range(4))


def int_fake_quant(x: Tensor, inv_scale: Tensor, scale: Tensor, qmin: int, qmax: int, mode: int,
                   generator: torch.Generator | None = None) -> Tensor:
    """clamp(round(x * inv_scale), qmin, qmax) * scale, fused when possible."""
    lim = torch.tensor([qmin, qmax], dtype=torch.float32, device=x.device)
    x = x.detach().contiguous()
    xc, sc, shape = canonical(x, scale)
    _, ic, _ = canonical(x, inv_scale)
    fn = _INT_KERNELS[mode]
    noise = (torch.rand(xc.shape, generator=generator, device=x.device, dtype=torch.float32),) \
        if mode == STOCHASTIC else ()
    return run(fn.__name__, fn, xc, ic, sc, lim, *noise).reshape(shape)
