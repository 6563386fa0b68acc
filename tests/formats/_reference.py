"""Independent references and input generators for the format tests.

:func:`ref_round` rounds float32 values to an ExMy grid in float64 numpy
arithmetic (frexp, floor): no bit tricks shared with the library's kernels.
:func:`assert_same_bits` compares two float tensors bit for bit (NaN == NaN,
any payload), optionally treating -0.0 and +0.0 as equal.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

__all__ = ["ref_round", "assert_same_bits", "all_bf16", "random_f32", "grid_of", "ties_and_neighbours"]


def ref_round(x: np.ndarray | Tensor, E: int, M: int, bias: int | None = None, specials: str = "ieee",
              subnormals: bool = True, overflow: str = "saturate", mode: str = "nearest_even") -> np.ndarray:
    """Round float32 values onto the ExMy grid; returns float32 numpy.

    ``mode``: ``nearest_even``, ``nearest_away`` or ``toward_zero``. For M = 0
    a tie in the normal range rounds up in magnitude: with no mantissa bits the
    kept LSB is the implicit leading 1 (PyTorch's ``float8_e8m0fnu`` cast does
    the same; tested against it).
    """
    if isinstance(x, Tensor):
        x = x.detach().cpu().float().numpy()
    if bias is None:
        bias = 2 ** (E - 1) - 1
    with np.errstate(invalid="ignore"):  # NaN payloads
        x64 = np.asarray(x, dtype=np.float32).astype(np.float64)
    emin = 1 - bias
    top = 2**E - 1 - (1 if specials == "ieee" or (specials == "fn" and M == 0) else 0)
    normals = top >= 1
    if normals:
        frac = 2 - 2.0 ** (1 - M) if (specials == "fn" and M > 0) else 2 - 2.0**-M
        mx = frac * 2.0 ** (top - bias)
    else:
        mx = (1 - 2.0**-M) * 2.0**emin
    a = np.abs(x64)
    with np.errstate(all="ignore"):
        _, ex = np.frexp(a)  # a = f * 2**ex, f in [0.5, 1)
        e = np.maximum(ex - 1, emin) if normals else np.full_like(ex, emin)
        ulp = np.ldexp(1.0, (e - M).astype(np.int64))
        q = a / ulp  # exact: a has 24 significant bits
        fl = np.floor(q)
        d = q - fl
        if mode == "nearest_even":
            tie_up = (fl % 2 == 1) | ((M == 0) & (fl >= 1))
            r = np.where(d > 0.5, fl + 1, np.where(d < 0.5, fl, np.where(tie_up, fl + 1, fl)))
        elif mode == "nearest_away":
            r = np.where(d >= 0.5, fl + 1, fl)
        elif mode == "toward_zero":
            r = fl
        else:
            raise ValueError(mode)
        res = np.where(np.isinf(a), np.inf, r * ulp)
        if overflow == "saturate":
            ov = mx
        else:
            ov = np.inf if specials == "ieee" else np.nan
        res = np.where(res > mx, ov, res)
        if not subnormals:
            res = np.where(res < 2.0**emin, 0.0, res)
        res = np.where(np.isnan(a), np.nan, res)
        out = np.copysign(res, x64)
    return out.astype(np.float32)


def assert_same_bits(actual: Tensor | np.ndarray, expected: Tensor | np.ndarray, *, zero_sign: bool = True,
                     inputs: Tensor | np.ndarray | None = None, what: str = "") -> None:
    """Assert bit equality of two float32 arrays; NaN matches NaN.

    ``zero_sign=False`` lets -0.0 match +0.0.
    """
    a = torch.as_tensor(actual).detach().cpu().float().contiguous()
    b = torch.as_tensor(expected).detach().cpu().float().contiguous()
    assert a.shape == b.shape, f"{what}: shape {tuple(a.shape)} != {tuple(b.shape)}"
    ok = (a.view(torch.int32) == b.view(torch.int32)) | (torch.isnan(a) & torch.isnan(b))
    if not zero_sign:
        ok |= (a == 0) & (b == 0)
    if bool(ok.all()):
        return
    bad = (~ok).nonzero().flatten()
    xs = None if inputs is None else torch.as_tensor(inputs).detach().cpu().float().reshape(-1)
    rows = []
    for i in bad[:8].tolist():
        xi = "" if xs is None else f"x={xs[i].item()!r} ({xs[i:i+1].view(torch.int32).item() & 0xFFFFFFFF:#010x}) "
        rows.append(f"{xi}got {a.reshape(-1)[i].item()!r} expected {b.reshape(-1)[i].item()!r}")
    raise AssertionError(f"{what}: {bad.numel()} of {a.numel()} differ:\n  " + "\n  ".join(rows))


def all_bf16() -> Tensor:
    """Every one of the 65,536 bfloat16 bit patterns, widened exactly to float32."""
    return torch.arange(-32768, 32768, dtype=torch.int32).to(torch.int16).view(torch.bfloat16).float()


def random_f32(n: int, seed: int = 0, finite: bool = False) -> Tensor:
    """``n`` float32 values from uniformly random bit patterns: every exponent equally likely."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(-(2**31), 2**31 - 1, (n,), generator=g, dtype=torch.int32).view(torch.float32)
    return x[torch.isfinite(x)] if finite else x


def grid_of(dtype: torch.dtype) -> Tensor:
    """Every finite non-negative value of a 8- or 16-bit float dtype, sorted (float32)."""
    n = 256 if dtype.itemsize == 1 else 65536
    raw = torch.arange(n, dtype=torch.int32)
    raw = raw.to(torch.uint8) if n == 256 else raw.to(torch.int16)
    v = raw.view(dtype).float()
    return torch.unique(v[torch.isfinite(v) & (v >= 0)])


def ties_and_neighbours(grid: Tensor, beyond: float | None = None) -> Tensor:
    """Exact midpoints of a sorted non-negative grid, one float32 ulp either side, the grid itself; both signs.

    ``beyond``: a value past the largest one, so that the midpoint above the
    maximum (where overflow starts) is included.
    """
    g = grid.double()
    if beyond is not None:
        g = torch.cat([g, torch.tensor([beyond], dtype=torch.float64)])
    mids = (g[1:] + g[:-1]) / 2
    assert bool((mids.float().double() == mids).all()), "midpoints must be exact in float32"
    m = mids.float()
    up = torch.nextafter(m, torch.tensor(float("inf")))
    dn = torch.nextafter(m, torch.tensor(0.0))
    x = torch.cat([m, up, dn, grid.float()])
    return torch.cat([x, -x])
