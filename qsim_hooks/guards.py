"""What a quantization point refuses or warns about in the tensors it is given.

Two silent failures become loud here: a complex tensor (no format has a
grid for it, and passing it through would leave the point in full precision
with no word said) raises ``TypeError`` naming the point; and a format that
flushes most of a point's non-zero values to zero (plain ``e2m1`` on weights
of magnitude 0.05) warns, once per point, naming the format and its scaled or
block forms. The flush check runs on a point's first call with real data
only (one reduction and one host sync per point per session; after that one
attribute test per call), so it costs nothing measurable with statistics off.
"""

from __future__ import annotations

import math
import numbers
import warnings
from typing import Any

import torch
from torch import Tensor

__all__ = ["refuse_complex", "check_flushed", "check_seed", "FLUSH_WARN_FRACTION", "SEED_MAX"]

#: more than this fraction of a point's finite non-zero values quantized to zero gives a warning
FLUSH_WARN_FRACTION = 0.5


def refuse_complex(label: str, fmt_name: str, x: Tensor) -> None:
    """Raise ``TypeError`` if ``x`` is complex (a point with a format would otherwise pass it through)."""
    if x.is_complex():
        raise TypeError(f"qsim_hooks: {label} was given a complex tensor ({x.dtype}, shape {tuple(x.shape)}) to "
                        f"quantize with {fmt_name}; formats quantize real floating tensors only, so it would stay "
                        "in full precision: switch the module off with Rule(match=..., enabled=False), or "
                        "quantize torch.view_as_real(x) in your model")


def _advice(fmt: object) -> str:
    name = getattr(fmt, "name", type(fmt).__name__)
    if not getattr(fmt, "is_scaled", False):
        tiny = getattr(fmt, "min_subnormal", 0.0)
        low = f" (its smallest non-zero magnitude is {tiny:g})" if tiny else ""
        return (f"{name} is an unscaled cast{low}: give it a Scaling (e.g. "
                f"dataclasses.replace(qsim_hooks.formats.get({name!r}), scaling=Scaling())) or use a block "
                "form (mxfp4, nvfp4, or mx(...) of this element)")
    gran = getattr(fmt, "granularity", "")
    return (f"{name} ({gran}) scales by the largest |x| of each scaling group, so values far below it round "
            "to zero: use a finer Scaling (granularity='channel' or 'block') or a block format (mxfp4, nvfp4, "
            "mxint8)")


def check_flushed(label: str, fmt: object, x: Tensor, y: Tensor) -> bool:
    """Warn if ``y`` (``fmt`` applied to ``x``) is zero where most of ``x``'s finite non-zero values are not.

    Returns whether the check is still to do: ``True`` when there was nothing to look at (a meta or
    empty tensor, or a call being traced by ``torch.compile``), ``False`` once it has run.
    """
    if x.is_meta or x.numel() == 0 or torch.compiler.is_compiling():
        return True
    with torch.no_grad():  # finite non-zero as 0 < |x| < inf: half the passes of (x != 0) & isfinite(x)
        a = x.detach().abs()
        nonzero = (a > 0) & (a < math.inf)
        n = torch.count_nonzero(nonzero)
        f = torch.count_nonzero(nonzero.logical_and_(y.detach() == 0))
        n, f = (int(v) for v in torch.stack([n, f]).tolist())
    if n and f > FLUSH_WARN_FRACTION * n:
        warnings.warn(f"qsim_hooks: {label}: {getattr(fmt, 'name', fmt)} flushed {f / n:.1%} of its non-zero "
                      f"values to zero ({f} of {n} on its first call); {_advice(fmt)}", RuntimeWarning,
                      stacklevel=3)
    return False


#: what torch.Generator.manual_seed takes without wrapping
SEED_MAX = 2**64 - 1


def check_seed(v: Any) -> int | None:
    """``QuantConfig.seed`` checked: ``None`` or an int ``torch.Generator.manual_seed`` takes as it is."""
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, numbers.Integral):
        raise TypeError(f"QuantConfig.seed must be an int in [0, 2**64 - 1] or None, got {v!r} ({type(v).__name__})")
    if not 0 <= int(v) <= SEED_MAX:
        raise ValueError(f"QuantConfig.seed={int(v)} is out of range; allowed: an int in [0, 2**64 - 1] or None")
    return int(v)
