"""TensorRT's arithmetic as INT-FP-QSim used it: integer fake quantization and histogram calibration.

INT-FP-QSim took its integer quantizer and its calibrators from NVIDIA's pytorch-quantization 2.1.3
(TensorRT). To give INT-FP-QSim's numbers bit for bit, compat computes what those functions computed, in
the same floating-point operations and the same dtypes: the scale is ``qmax / amax`` and the result
``round(x * scale) / scale`` (not ``* (amax / qmax)``, which is up to 2 ulp away), a histogram starts at
2048 bins over ``[0, max]`` of the first batch and grows by appending bins of the same width, mse scores
each candidate in a float32 ``mean``, entropy keeps TensorRT's unnormalised candidate distributions and
picks the *last* minimum. Re-implemented from that behaviour (no code copied) and checked against the old
tool's own outputs in ``tests/compat/golden``. qsim-hooks proper calibrates its own way
(:mod:`qsim_hooks.calibration`); this module exists so that compat can reproduce the old numbers.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

__all__ = ["ZERO_AMAX", "fake_quant", "quantize", "Histogram", "amax_percentile", "amax_mse", "amax_entropy"]

#: an amax at or below this quantizes to zero (TensorRT: "smaller than the minimum representable of fp16")
ZERO_AMAX = 1.0 / (1 << 24)
_START_BIN = 128  # mse / entropy: the first candidate bin
_FIRST_BINS = 2048  # bins of the first batch's histogram
_SCORE_BUDGET = 1 << 22  # elements per block of mse candidates


def fake_quant(x: Tensor, amax: Tensor, num_bits: int, unsigned: bool) -> Tensor:
    """TensorRT's narrow-range ``fake_tensor_quant`` forward: ``clamp(round(x * s)) / s`` with ``s = qmax / amax``.

    float16 is computed in float32 and rounded back before the division (TensorRT's own rule); other dtypes
    are computed in their own (bfloat16 included). An amax <= 2^-24 gives zeros.
    """
    xin = x.float() if x.dtype == torch.half else x
    a = amax.float() if amax.dtype == torch.half else amax
    qmax = torch.tensor(2.0 ** (num_bits - 1 + int(unsigned)) - 1.0, device=a.device)
    zero = a <= ZERO_AMAX
    scale = torch.where(zero, 0.0, qmax / a)
    q = torch.clamp((xin * scale).round(), torch.zeros_like(qmax) if unsigned else -qmax, qmax)
    if x.dtype == torch.half:
        q = q.half()
    return q / torch.where(zero, 1.0, scale).to(x.dtype)


class _FakeQuantFn(torch.autograd.Function):
    """Forward: :func:`fake_quant`. Backward: TensorRT's clipped straight-through gradient, ``|x| <= amax``."""

    @staticmethod
    def forward(ctx, x, amax, num_bits, unsigned):  # type: ignore[override]
        ctx.save_for_backward(x, amax)
        return fake_quant(x, amax, num_bits, unsigned)

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        x, amax = ctx.saved_tensors
        return torch.where(x.abs() <= amax, g, g.new_zeros(1)), None, None, None


def quantize(x: Tensor, amax: Tensor, num_bits: int, unsigned: bool) -> Tensor:
    """:func:`fake_quant` with TensorRT's gradient when ``x`` requires one."""
    if torch.is_grad_enabled() and x.requires_grad:
        return _FakeQuantFn.apply(x, amax, num_bits, unsigned)
    return fake_quant(x, amax, num_bits, unsigned)


# ---------------------------------------------------------------------------
# calibration
# ---------------------------------------------------------------------------
class Histogram:
    """TensorRT's ``HistogramCalibrator`` collection (its default ``torch.histc`` path) of |x|.

    The first batch sets 2048 bins over ``[0, max|x|]``; a later batch with a larger max appends bins of
    the same width (``torch.arange``) and every batch is counted with ``torch.histc`` over the current range.
    """

    def __init__(self) -> None:
        self.counts: Tensor | None = None
        self.edges: Tensor | None = None
        self._bins = _FIRST_BINS

    def collect(self, x: Tensor) -> None:
        with torch.no_grad():
            if torch.min(x) < 0.0:
                x = x.abs()
            x = x.float()
            x_max = x.max()
            if self.counts is None or self.edges is None:
                self.counts = torch.histc(x, bins=self._bins, min=0, max=x_max)  # type: ignore[arg-type]
                self.edges = torch.linspace(0, x_max, self._bins + 1)  # type: ignore[arg-type]
                return
            if x_max > self.edges[-1]:
                width = self.edges[1] - self.edges[0]
                self._bins = int((x_max / width).ceil().item())
                self.edges = torch.arange(0, x_max + width, width, device=x.device)  # type: ignore[arg-type]
            counts = torch.histc(x, bins=self._bins, min=0, max=self.edges[-1])  # type: ignore[arg-type]
            counts[: self.counts.numel()] += self.counts
            self.counts = counts

    def arrays(self) -> tuple[np.ndarray, np.ndarray] | None:
        """(integer counts, edges) as TensorRT's ``compute_amax`` reads them; ``None`` before any data."""
        if self.counts is None or self.edges is None:
            return None
        return self.counts.int().cpu().numpy(), self.edges.cpu().numpy()


def _check_bins(n: int, least: int, method: str) -> None:
    if n < least:
        raise ValueError(f"calibration method {method!r} scores the bins from {_START_BIN} on and needs at least "
                         f"{least} histogram bins, got {n}; use more bins or 'max' / 'percentile'")


def amax_percentile(counts: np.ndarray, edges: np.ndarray, percentile: float) -> Tensor:
    """The left edge of the bin where the cumulative fraction reaches ``percentile`` %."""
    if not 0 <= percentile <= 100:
        raise ValueError(f"percentile={percentile!r} must be in [0, 100]")
    cdf = np.cumsum(counts / counts.sum())
    return torch.tensor(edges[np.searchsorted(cdf, percentile / 100)].item())


def amax_mse(counts: np.ndarray, edges: np.ndarray, num_bits: int, unsigned: bool) -> Tensor:
    """The bin centre (from bin 128 on) whose fake quantization of all centres has the least weighted MSE."""
    _check_bins(len(counts), _START_BIN + 1, "mse")
    weights = torch.from_numpy(counts).float()
    e = torch.from_numpy(edges).float()
    centres = (e[1:] + e[:-1]) / 2
    candidates = centres[_START_BIN:].unsqueeze(1)
    # the candidates are scored in row blocks: element-wise the same operations as TensorRT's one call per
    # candidate, and a row's float32 mean is the mean of that row alone (tests/compat: golden mse amax)
    rows = max(1, _SCORE_BUDGET // len(centres))
    scores = torch.cat([((fake_quant(centres, a, num_bits, unsigned) - centres) ** 2 * weights).mean(dim=1)
                        for a in candidates.split(rows)])
    return centres[_START_BIN + int(torch.argmin(scores))]


def _relative_entropy(p: np.ndarray, p_total: float, q: np.ndarray) -> float:
    """KL(p || q) of two unnormalised distributions, as ``scipy.stats.entropy(p, q)`` computes it."""
    q = q / np.sum(q)
    p = p / p_total
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, np.where(q > 0, p * np.log(p / q), np.inf), 0.0)
    return float(np.sum(terms))


def amax_entropy(counts: np.ndarray, edges: np.ndarray, num_bits: int, unsigned: bool) -> Tensor:
    """TensorRT's KL-divergence search over candidate edges; the last of the minima wins.

    For candidate ``i`` the reference is the first ``i`` bins with the rest added to the last one; the
    candidate merges them into ``2^(bits-1)`` (unsigned ``2^bits``) groups and spreads each group's count
    over its non-empty bins. Bin 0 takes bin 1's count first (a spike of zeros does not decide).
    """
    _check_bins(len(counts), _START_BIN, "entropy")
    bins = counts.astype(np.int64)
    bins[0] = bins[1]
    total = int(np.sum(bins))
    tail = total - np.cumsum(bins)  # tail[i - 1]: the count beyond the first i bins (exact integers)
    groups = 1 << (num_bits - 1 + int(unsigned))
    divergences = []
    for i in range(_START_BIN, len(bins) + 1):
        # TensorRT's np.digitize(range(i), np.linspace(0, i, groups + 1)) - 1: with a power-of-two number of
        # groups the linspace edges k * i / groups are exact, so the group of bin j is (j * groups) // i
        group = (np.arange(i) * groups) // i
        used = bins[:i] != 0
        g = group[used]
        sums = np.bincount(g, weights=bins[:i][used], minlength=groups)
        members = np.bincount(g, minlength=groups)
        per_bin = np.divide(sums, members, out=np.zeros(groups), where=members > 0)
        candidate = np.zeros(i)
        candidate[used] = per_bin[g]
        reference = bins[:i].copy()
        reference[-1] += tail[i - 1]
        divergences.append(_relative_entropy(reference, float(total), candidate))
    d = np.array(divergences)
    last_argmin = len(d) - 1 - int(np.argmin(d[::-1]))
    return torch.tensor(edges[last_argmin + _START_BIN].item())
