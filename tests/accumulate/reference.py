"""Independent references for the accumulator engine: plain Python loops over products, float64 arithmetic,
numpy float32 for what the spec says is formed in fp32, and a round-to-nearest-even written from the
definition of an ExMy grid (not the library's kernels)."""

from __future__ import annotations

import math

import numpy as np


def round_exmy(x: float, exp_bits: int, man_bits: int, saturate: bool = True) -> float:
    """Nearest-even rounding of ``x`` onto IEEE-style ExMy (subnormals, top exponent reserved), saturating."""
    if x == 0 or math.isnan(x) or math.isinf(x):
        return x
    bias = 2 ** (exp_bits - 1) - 1
    emin, emax = 1 - bias, 2**exp_bits - 2 - bias
    e = max(math.frexp(abs(x))[1] - 1, emin)
    ulp = math.ldexp(1.0, e - man_bits)
    q = round(x / ulp) * ulp  # Python's round: half to even; x / ulp is exact
    mx = math.ldexp(2 - 2.0**-man_bits, emax)
    if abs(q) > mx:
        return math.copysign(mx, q) if saturate else math.copysign(math.inf, q)
    return q


def f32(x: float) -> float:
    return float(np.float32(x))


def rounder(fmt):  # fmt: (exp_bits, man_bits) or None for fp32
    if fmt is None:
        return f32
    return lambda x: round_exmy(f32(x), *fmt)


def reduce_products(ps, r, order, chunk, promote_r, chunked_exact=False):
    """The spec's reduction of one output's fp32 products ``ps``."""
    step = len(ps) if chunk is None else chunk
    total = None
    for k0 in range(0, len(ps), step):
        part = ps[k0:k0 + step]
        if order == "sequential":
            s = 0.0
            for p in part:
                s = r(s + p)
        elif order == "pairwise":
            level = list(part)
            while len(level) > 1:
                nxt = [r(level[i] + level[i + 1]) for i in range(0, len(level) - 1, 2)]
                if len(level) % 2:
                    nxt.append(level[-1])
                level = nxt
            s = r(level[0])
        else:  # chunked: the exact chunk sum, rounded once
            s = r(math.fsum(part))
        if chunk is None:
            total = s
        else:
            total = promote_r(s) if total is None else promote_r(total + s)
    return total


def aligned_products(ps, bits, group):
    """Hopper model: the running sum and the next ``group`` products, aligned and truncated, added exactly."""
    s = 0.0
    for g0 in range(0, len(ps), group):
        terms = [s] + list(ps[g0:g0 + group])
        m = max(abs(t) for t in terms)
        e = math.frexp(m)[1]
        ulp = math.ldexp(1.0, e - bits)
        s = math.fsum(math.trunc(t / ulp) * ulp for t in terms)
    return s


def matmul(a, b, reduce):
    """``a`` (M, K), ``b`` (K, N) as float32 arrays; ``reduce(products) -> value`` per output, float64 out."""
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    out = np.zeros((a.shape[0], b.shape[1]))
    for i in range(a.shape[0]):
        for j in range(b.shape[1]):
            out[i, j] = reduce([float(a[i, k] * b[k, j]) for k in range(a.shape[1])])
    return out
