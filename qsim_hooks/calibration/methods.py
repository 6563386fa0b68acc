"""Calibration methods: from an observer's statistics to an amax per tensor or per channel.

Each method is a function ``(observer, fmt, percentile) -> amax`` (float32,
one value per channel) registered under its name with :func:`register_method`:

* ``max`` - the largest finite |x| seen.
* ``percentile`` - where the cumulative count of |x| reaches ``percentile`` %,
  interpolated linearly within that histogram bin (TensorRT takes the bin's
  upper edge), never above the max: within one bin width of
  ``numpy.percentile(|x|, p)``.
* ``mse`` - the candidate amax with the least squared error over the
  histogram: every bin centre ``c`` weighted by its count, quantized **by the
  target format itself** with ``amax=candidate`` (TensorRT's candidates, the
  bin centres from bin 128 on, scored with its integer grid only; here any
  scaled format, FP8 included, is scored on its own grid, rounding and
  saturation).
* ``entropy`` - TensorRT's KL-divergence search: for each candidate edge
  ``i`` the reference distribution P is the first ``i`` bins with the counts
  beyond added to the last one; the candidate distribution Q merges the bins
  that **the target format** maps to the same value (TensorRT merges them into
  ``2**(bits-1)`` equal groups, an integer grid) and spreads each group's
  count over its non-empty bins; the largest ``i`` with the least KL(P||Q)
  wins (TensorRT's ``last_argmin``), as does its ``bins[0] = bins[1]`` (a spike
  of zeros does not decide).

Candidates are scored in one call of the format per chunk: for a format
whose scaling is a :class:`~qsim_hooks.formats.Scaling` field, a copy with
per-channel scaling along dim 0 quantizes a ``[candidates, bins]`` matrix with
one amax per row, which is the same arithmetic as one call per candidate
(other formats, such as the compat quantizers, are called once per
candidate). Scoring runs on the CPU in float32 with a fixed generator
(stochastic rounding scores the same on every rank).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
from torch import Tensor

from ..formats import Format, Scaling
from .observers import HistogramObserver, Observer

__all__ = ["METHODS", "HISTOGRAM_METHODS", "register_method", "compute_amax", "quantize_rows"]

Method = Callable[[Observer, "Format | None", float], Tensor]
METHODS: dict[str, Method] = {}
#: methods that need a :class:`HistogramObserver`
HISTOGRAM_METHODS: set[str] = set()
#: methods that quantize candidates with the target format
SCORING_METHODS: set[str] = set()

_ROW_BUDGET = 1 << 22  # elements per scoring chunk (rows x bins)
_MAX_CHANNEL_CANDIDATES = 128


def register_method(name: str, *, histogram: bool = True, scores: bool = False) -> Callable[[Method], Method]:
    """Register a calibration method (a decorator)."""
    def deco(fn: Method) -> Method:
        METHODS[name] = fn
        if histogram:
            HISTOGRAM_METHODS.add(name)
        if scores:
            SCORING_METHODS.add(name)
        return fn
    return deco


def compute_amax(method: str, obs: Observer, fmt: Format | None, percentile: float = 99.99) -> Tensor:
    """The amax per channel (float32, CPU) of ``obs`` by ``method``."""
    if method not in METHODS:
        raise ValueError(f"unknown calibration method {method!r}; use one of {', '.join(sorted(METHODS))}")
    return METHODS[method](obs, fmt, percentile).float().cpu()


# ---------------------------------------------------------------------------
# max / percentile
# ---------------------------------------------------------------------------
@register_method("max", histogram=False)
def _max(obs: Observer, fmt: Format | None, percentile: float) -> Tensor:
    assert obs.amax is not None
    return obs.amax


@register_method("percentile")
def _percentile(obs: Observer, fmt: Format | None, percentile: float) -> Tensor:
    h = _hist(obs)
    counts = h.counts.cpu()  # type: ignore[union-attr]
    cum = counts.cumsum(dim=1)
    target = cum[:, -1:] * (percentile / 100.0)
    idx = torch.searchsorted(cum.contiguous(), target.contiguous()).clamp(max=h.bins - 1)  # [C, 1]
    # linear within the bin where the count crosses the target (TensorRT takes the bin's upper edge)
    before = torch.where(idx > 0, cum.gather(1, (idx - 1).clamp(min=0)), 0.0)
    inbin = counts.gather(1, idx).clamp(min=1.0)
    frac = ((target - before) / inbin).clamp(0.0, 1.0)
    amax = ((idx.double() + frac) * h.width.cpu()[:, None])[:, 0]
    return torch.minimum(amax, h.amax.cpu().double())  # type: ignore[union-attr]


def _hist(obs: Observer) -> HistogramObserver:
    if not isinstance(obs, HistogramObserver) or obs.counts is None:
        raise TypeError(f"{obs.name}: this method needs a HistogramObserver with data")
    return obs


# ---------------------------------------------------------------------------
# scoring candidates with the target format
# ---------------------------------------------------------------------------
def _row_format(fmt: Format) -> Format | None:
    """A copy of ``fmt`` with one static amax per row of a 2-d input, or None if ``fmt`` has no such form."""
    names = {f.name for f in dataclasses.fields(fmt)} if dataclasses.is_dataclass(fmt) else set()
    sc = getattr(fmt, "scaling", None)
    if "scaling" not in names or not isinstance(sc, Scaling):
        return None
    row = dataclasses.replace(sc, granularity="channel", axis=0, mode="static", amax=None)
    return dataclasses.replace(fmt, scaling=row)  # type: ignore[type-var]


def quantize_rows(fmt: Format, x: Tensor, amax: Tensor, row_fmt: Format | None = None) -> Tensor:
    """``fmt(x[r], amax=amax[r])`` for every row r of the 2-d float32 ``x``."""
    gen = torch.Generator(device=x.device).manual_seed(0)
    if row_fmt is None:
        row_fmt = _row_format(fmt)
    if row_fmt is not None:
        return row_fmt(x, amax=amax.float(), generator=gen)
    return torch.stack([fmt(x[r], amax=amax[r].float(), generator=gen) for r in range(x.shape[0])])


def _unit_centres(bins: int) -> Tensor:
    """Bin centres in units of the bin width, ``0.5, 1.5, ...`` (float32, exact).

    Candidates are scored in these units: the width is a power of two, and a scaled format's result
    scales exactly with its input and amax by a power of two, so the errors (mse) and the groups of bins
    that quantize alike (entropy) are those of the real range, without its float32 overflow (a range
    up to ``bins * 2**117`` holds values near float32's max) or underflow (squared errors of data
    near 1e-30).
    """
    return torch.arange(bins, dtype=torch.float32) + 0.5


def _pairs(counts: Tensor, bins: int, *, edges: bool) -> tuple[Tensor, Tensor, Tensor]:
    """The (channel, candidate) pairs to score: ``(rows_c, rows_i, cand)``.

    Candidates are bin indices from ``min(128, bins / 16)`` on (TensorRT's
    ``start_bin``), every one for a per-tensor histogram and about 128 per
    channel otherwise, up to the last non-empty bin (a centre, ``edges=False``)
    or one past it (an edge). A channel whose data is all in the first bins
    gets its last useful candidate only.
    """
    C = counts.shape[0]
    nz = counts > 0
    last = torch.where(nz.any(dim=1), bins - 1 - nz.flip(1).int().argmax(dim=1),
                       torch.zeros(C, dtype=torch.long))
    stop = last + 1 if edges else last
    start = max(1, min(128, bins // 16))
    stride = 1 if C == 1 else max(1, (bins - start) // _MAX_CHANNEL_CANDIDATES)
    cand = torch.arange(start, bins + 1 if edges else bins, stride)
    keep = cand[None, :] <= stop[:, None]
    # a channel with no candidate in range is scored at its own last useful one
    lone = ~keep.any(dim=1)
    rows_c, rows_k = keep.nonzero(as_tuple=True)
    rows_i = cand[rows_k]
    if bool(lone.any()):
        lc = lone.nonzero(as_tuple=True)[0]
        li = stop[lc].clamp(min=1 if edges else 0)
        rows_c = torch.cat([rows_c, lc])
        rows_i = torch.cat([rows_i, li])
    return rows_c, rows_i, last


def _pick(rows_c: Tensor, score: Tensor, value: Tensor, C: int, *, last: bool) -> tuple[Tensor, Tensor]:
    """Per channel, the value of the (first or last) row with the least score; and whether one was finite."""
    best = torch.full((C,), torch.inf, dtype=torch.float64)
    best.scatter_reduce_(0, rows_c, score, reduce="amin")
    b = best[rows_c]
    # ties within rounding (1e-9 relative) are ties: the pick must not depend on how sums were rounded
    # (two ranks' merged counts, a histogram counted twice)
    hit = (score <= b + 1e-9 * b.abs() + 1e-12) & torch.isfinite(score)
    order = torch.arange(score.numel())
    sel = torch.full((C,), -1 if last else score.numel(), dtype=torch.long)
    sel.scatter_reduce_(0, rows_c[hit], order[hit], reduce="amax" if last else "amin")
    ok = torch.isfinite(best)
    out = torch.zeros(C, dtype=torch.float64)
    out[ok] = value[sel[ok]]
    return out, ok


@register_method("mse", scores=True)
def _mse(obs: Observer, fmt: Format | None, percentile: float) -> Tensor:
    h = _hist(obs)
    assert fmt is not None
    counts = h.counts.cpu()  # type: ignore[union-attr]
    width = h.width.cpu()
    C, B = counts.shape
    rows_c, rows_i, _ = _pairs(counts, B, edges=False)  # candidates are bin centres (TensorRT)
    w32 = counts.float()
    unit = _unit_centres(B)
    row_fmt = _row_format(fmt)
    per = max(1, _ROW_BUDGET // B)
    errs = []
    for s in range(0, rows_c.numel(), per):
        rc, ri = rows_c[s:s + per], rows_i[s:s + per]
        x = unit.expand(rc.numel(), B)
        d = quantize_rows(fmt, x.contiguous(), unit[ri], row_fmt) - x
        d.mul_(d)
        errs.append((d @ w32[0] if C == 1 else (d * w32[rc]).sum(dim=1)).double())
    err = torch.cat(errs)
    amax, _ = _pick(rows_c, err, unit[rows_i].double() * width[rows_c], C, last=False)
    return torch.minimum(amax, h.amax.cpu().double())  # type: ignore[union-attr]


@register_method("entropy", scores=True)
def _entropy(obs: Observer, fmt: Format | None, percentile: float) -> Tensor:
    """TensorRT's KL search, group by group (see the module docstring for the distributions).

    The format quantizes the bin centres for every candidate; the bins it maps
    to one value are runs (formats are monotone), found as the steps of the
    quantized row. Every sum over a run comes from per-channel prefix sums of
    ``c``, ``c > 0`` and ``c log c``, so the cost per candidate is one format
    row plus a few operations per run, not per bin.
    """
    h = _hist(obs)
    assert fmt is not None
    counts = h.counts.cpu().clone()  # type: ignore[union-attr]
    width = h.width.cpu()
    C, B = counts.shape
    rows_c, rows_i, _ = _pairs(counts, B, edges=True)  # candidates are edges: amax = i * width
    counts[:, 0] = counts[:, 1]  # TensorRT: a spike at zero does not decide
    zero = torch.zeros(C, 1, dtype=torch.float64)
    pc = torch.cat([zero, counts.cumsum(1)], dim=1)  # pc[:, k] = sum(c[:, :k])
    pn = torch.cat([zero, (counts > 0).double().cumsum(1)], dim=1)
    clogc = torch.where(counts > 0, counts * torch.log(torch.where(counts > 0, counts, 1.0)), 0.0)
    pl = torch.cat([zero, clogc.cumsum(1)], dim=1)
    total = pc[:, B]
    unit = _unit_centres(B)
    row_fmt = _row_format(fmt)
    per = max(1, _ROW_BUDGET // B)
    kls = []
    for s in range(0, rows_c.numel(), per):
        rc, ri = rows_c[s:s + per], rows_i[s:s + per]
        n = rc.numel()
        x = unit.expand(n, B)
        q = quantize_rows(fmt, x.contiguous(), ri.float(), row_fmt)
        gid = torch.zeros(n, B, dtype=torch.int64)
        torch.cumsum(q[:, 1:] != q[:, :-1], dim=1, out=gid[:, 1:])
        G = int(gid[torch.arange(n), ri - 1].max()) + 1  # groups that reach inside [0, i)
        g = torch.arange(G).expand(n, G).contiguous()
        end = torch.searchsorted(gid, g, right=True)  # one past each run's last bin
        start = torch.cat([torch.zeros(n, 1, dtype=torch.int64), end[:, :-1]], dim=1)
        lim = ri[:, None]
        end = torch.minimum(end, lim)
        live = start < end
        start = torch.minimum(start, lim)
        rcx = rc[:, None].expand(n, G)
        S = pc[rcx, end] - pc[rcx, start]
        N = pn[rcx, end] - pn[rcx, start]
        L = pl[rcx, end] - pl[rcx, start]
        # P: the counts beyond the candidate go to its last bin, i - 1 (in the last live group)
        tail = total[rc] - pc[rc, ri]
        c_last = counts[rc, ri - 1]
        lastg = gid[torch.arange(n), ri - 1]
        fix = (c_last + tail) * torch.log(torch.where(c_last + tail > 0, c_last + tail, 1.0)) - \
            torch.where(c_last > 0, c_last * torch.log(torch.where(c_last > 0, c_last, 1.0)), 0.0)
        at_last = g == lastg[:, None]
        Pg = S + torch.where(at_last, tail[:, None], 0.0)
        Lg = L + torch.where(at_last, fix[:, None], 0.0)
        zq = pc[rc, ri]
        use = live & (N > 0)
        logq = torch.log(torch.where(use, S, 1.0) / (torch.where(use, N, 1.0) * zq[:, None]))
        kl = (torch.where(use, Lg - Pg * logq, 0.0).sum(dim=1)) / total[rc] - torch.log(total[rc])
        bad = (c_last == 0) & (tail > 0)  # P > 0 where Q = 0: infinite divergence (as TensorRT)
        kls.append(torch.where(bad, torch.inf, kl))
    kl = torch.cat(kls)
    amax, ok = _pick(rows_c, kl, rows_i.double() * width[rows_c], C, last=True)
    full = h.amax.cpu().double()  # type: ignore[union-attr]
    amax = torch.where(ok, amax, full)  # no finite divergence (a lone spike): keep the max
    return torch.minimum(amax, full)
