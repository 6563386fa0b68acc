"""Statistics as plain data: SQNR, and the figures of the named formats.

Owns the numbers that :mod:`qsim_hooks.report` renders; nothing here prints or
formats text. Every function returns floats, dicts or lists of dicts, so the
same data feeds a rich table, JSON, CSV or a test.

SQNR is kept as two sums (signal and noise power) where it has to be merged
across calls: :func:`sqnr_db_from_sums` turns summed powers into decibels, so
statistics merged over many batches stay exact.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from . import formats

__all__ = ["sqnr_db", "power_sums", "sqnr_db_from_sums", "format_rows", "FORMAT_ROW_KEYS",
           "DEFAULT_SAMPLES"]

#: Samples of N(0, 1) used for a format's SQNR. Kept below the fused-kernel
#: threshold (``formats.kernels.COMPILE_MIN_NUMEL``) so the table needs no compile.
DEFAULT_SAMPLES = 1 << 16

#: The keys of every row returned by :func:`format_rows`, in display order.
FORMAT_ROW_KEYS = ("name", "bits", "max", "min_subnormal", "spacing_at_1", "granularity", "sqnr_db")


def power_sums(reference: Any, quantized: Any) -> tuple[float, float, int]:
    """``(sum(ref**2), sum((ref - q)**2), n)`` over the elements where ``reference`` is finite.

    Computed in float64. Elements whose reference is NaN or ±inf are left out:
    they carry no signal power, and what a format does with them (NaN stays
    NaN, ±inf saturates) is its convention, not quantization noise. A finite
    reference quantized to a non-finite value (overflow to inf or NaN) makes
    the noise infinite.

    Raises:
        ValueError: when the two shapes differ.
    """
    ref = torch.as_tensor(reference).detach()
    q = torch.as_tensor(quantized).detach()
    if ref.shape != q.shape:
        raise ValueError(f"sqnr: reference and quantized must have the same shape, "
                         f"got {tuple(ref.shape)} and {tuple(q.shape)}")
    r = ref.to(device="cpu", dtype=torch.float64).flatten()
    qq = q.to(device="cpu", dtype=torch.float64).flatten()
    keep = torch.isfinite(r)
    if not bool(keep.all()):
        r, qq = r[keep], qq[keep]
    if r.numel() == 0:
        return 0.0, 0.0, 0
    if not bool(torch.isfinite(qq).all()):
        return float((r * r).sum()), math.inf, int(r.numel())
    return float((r * r).sum()), float(((r - qq) ** 2).sum()), int(r.numel())


def sqnr_db_from_sums(signal: float, noise: float, n: int = 1) -> float:
    """SQNR in dB from summed signal and noise powers.

    ``inf`` when the noise is zero (exact), ``-inf`` when the signal is zero
    and the noise is not (or the noise is infinite), ``nan`` when there is no
    data (``n == 0``).
    """
    if n == 0 or math.isnan(signal) or math.isnan(noise):
        return math.nan
    if noise == 0.0:
        return math.inf
    if signal == 0.0 or math.isinf(noise):
        return -math.inf
    return 10.0 * math.log10(signal / noise)


def sqnr_db(reference: Any, quantized: Any) -> float:
    """Signal-to-quantization-noise ratio ``10*log10(sum(ref^2) / sum((ref - q)^2))`` in dB.

    ``inf`` when ``quantized`` equals ``reference`` exactly; ``nan`` for empty
    input (or when no reference element is finite); see :func:`power_sums`
    for how NaN and inf are treated.
    """
    return sqnr_db_from_sums(*power_sums(reference, quantized))


def _normal_samples(samples: int, seed: int) -> Tensor:
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ValueError(f"samples={samples!r} must be a positive int")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(samples, generator=gen, dtype=torch.float32)


def format_rows(names: Iterable[str] | None = None, samples: int = DEFAULT_SAMPLES,
                seed: int = 0) -> list[dict[str, Any]]:
    """One row per named format: its figures and its SQNR on N(0, 1) samples.

    Args:
        names: format names (anything :func:`qsim_hooks.formats.get` accepts);
            ``None`` means every pinned name, :func:`qsim_hooks.formats.names`.
        samples: how many N(0, 1) samples the SQNR is measured on.
        seed: seed of the sample generator (same seed, same figures).

    Returns:
        dicts with the keys :data:`FORMAT_ROW_KEYS`: ``name``, ``bits`` (int or
        ``None``), ``max``, ``min_subnormal``, ``spacing_at_1`` (floats; for
        scaled formats in units of the scale), ``granularity`` (``"cast"`` for
        plain casts) and ``sqnr_db`` (float, ``inf`` when exact).

    Raises:
        ValueError: an unknown format name (the message lists the closest ones),
            or ``samples`` < 1.
        RuntimeError: a format failed on the samples (the message names it).
    """
    wanted = formats.names() if names is None else list(names)
    fmts = [formats.get(n) for n in wanted]  # resolve every name before any work
    x = _normal_samples(samples, seed)
    rows = []
    for fmt in fmts:
        info = fmt.info  # the format's own figures (one source: formats.FormatInfo)
        rows.append({
            "name": fmt.name,
            "bits": info.bits,
            "max": info.max,
            "min_subnormal": info.min_subnormal,
            "spacing_at_1": info.spacing_at_one,
            "granularity": info.granularity,
            "sqnr_db": sqnr_db(x, _apply(fmt, x)),
        })
    return rows


def _apply(fmt: formats.Format, x: Tensor) -> Tensor:
    try:
        return fmt(x)
    except Exception as exc:  # name the format: a bare kernel error does not say which one failed
        raise RuntimeError(f"format {fmt.name!r} failed on {x.numel()} N(0,1) samples: "
                           f"{type(exc).__name__}: {exc}") from exc
