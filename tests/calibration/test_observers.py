"""Observers: exact growing-range histograms, non-finite and empty input, per channel, parameters once."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from qsim_hooks.calibration.observers import K_MIN, HistogramObserver, MaxObserver


def _np_hist(a: np.ndarray, bins: int, k: int) -> np.ndarray:
    """Independent reference: floor(|x| / 2**k), the top edge in the last bin."""
    idx = np.minimum(np.floor(np.abs(a) / 2.0**k), bins - 1).astype(np.int64)
    return np.bincount(idx, minlength=bins).astype(np.float64)


def test_range_is_the_smallest_power_of_two_width_covering_the_max():
    obs = HistogramObserver(bins=2048)
    obs(torch.tensor([0.5, -3.0, 1.0]))
    k = int(obs.k[0])
    assert 2048 * 2.0**k >= 3.0 > 2048 * 2.0 ** (k - 1)
    assert obs.amax.item() == 3.0 and obs.numel == 3
    obs2 = HistogramObserver(bins=2048)
    obs2(torch.tensor([2048 * 2.0**-10]))  # exactly a power-of-two range: no extra doubling
    assert int(obs2.k[0]) == -10


def test_growth_rebins_exactly_and_matches_a_histogram_of_all_data():
    g = torch.Generator().manual_seed(0)
    parts = [torch.randn(5000, generator=g) * s for s in (0.01, 1.0, 0.3, 40.0, 2.0)]
    obs = HistogramObserver(bins=512)
    ks = []
    for p in parts:
        obs(p)
        ks.append(int(obs.k[0]))
    assert ks == sorted(ks) and ks[0] < ks[-1]  # the range grew
    allx = torch.cat(parts).numpy()
    assert obs.counts.sum().item() == allx.size
    np.testing.assert_array_equal(obs.counts[0].numpy(), _np_hist(allx, 512, ks[-1]))
    assert obs.amax.item() == float(np.abs(allx).max())


def test_nonfinite_elements_are_counted_and_left_out():
    x = torch.tensor([1.0, float("nan"), -float("inf"), 2.5, float("inf"), -0.5])
    for obs in (HistogramObserver(bins=64), MaxObserver()):
        obs(x)
        assert obs.nonfinite == 3 and obs.numel == 3
        assert obs.amax.item() == 2.5
    h = HistogramObserver(bins=64)
    h(x)
    assert h.counts.sum().item() == 3
    only_bad = HistogramObserver(bins=64)
    only_bad(torch.tensor([float("nan"), float("inf")]))
    assert only_bad.numel == 0 and not only_bad.seen_data and only_bad.nonfinite == 2


def test_empty_integer_meta_and_non_tensors_are_skipped():
    for obs in (HistogramObserver(bins=64), MaxObserver(), MaxObserver(axis=0)):
        obs(torch.empty(0, 3))
        obs(torch.arange(5))
        obs((torch.ones(2),))
        obs(None)
        obs(torch.empty(3, device="meta"))
        assert obs.calls == 1 and obs.numel == 0 and not obs.seen_data


def test_all_zero_data_lands_in_bin_zero_and_keeps_the_smallest_range():
    obs = HistogramObserver(bins=64)
    obs(torch.zeros(10))
    assert int(obs.k[0]) == K_MIN and obs.counts[0, 0].item() == 10 and obs.amax.item() == 0.0
    obs(torch.tensor([3.0]))  # now the range grows from K_MIN in one step
    assert obs.counts[0, 0].item() == 10 and obs.counts.sum().item() == 11


def test_half_and_bfloat16_inputs():
    x = torch.randn(1000)
    for dt in (torch.float16, torch.bfloat16):
        obs = HistogramObserver(bins=128)
        obs(x.to(dt))
        assert obs.amax.item() == x.to(dt).abs().max().float().item()


def test_per_channel_histograms_and_max_along_an_axis():
    g = torch.Generator().manual_seed(1)
    w = torch.randn(6, 4, 3, 3, generator=g) * torch.tensor([0.1, 1, 10, 0.5, 3, 0.01]).view(6, 1, 1, 1)
    w[2, 0, 0, 0] = float("nan")
    h = HistogramObserver(axis=0, bins=64)
    m = MaxObserver(axis=0)
    h(w)
    m(w)
    ref = torch.where(torch.isfinite(w), w.abs(), 0).amax(dim=(1, 2, 3))
    assert torch.equal(h.amax, ref) and torch.equal(m.amax, ref)
    assert h.shape == (6, 1, 1, 1) and h.nonfinite == 1 and h.numel == w.numel() - 1
    for c in range(6):
        a = w[c].flatten().numpy()
        a = a[np.isfinite(a)]
        np.testing.assert_array_equal(h.counts[c].numpy(), _np_hist(a, 64, int(h.k[c])))
    # along the last axis of an activation
    x = torch.randn(2, 5, 7, generator=g)
    a = MaxObserver(axis=-1)
    a(x)
    assert torch.equal(a.amax, x.abs().amax(dim=(0, 1))) and a.shape == (1, 1, 7)
    with pytest.raises(ValueError, match="channels"):
        a(torch.randn(2, 5, 8))


def test_per_channel_growth_is_exact():
    g = torch.Generator().manual_seed(2)
    h = HistogramObserver(axis=1, bins=32)
    xs = [torch.randn(50, 3, generator=g) * torch.tensor([1.0, 0.1, 5.0]) * s for s in (0.1, 1.0, 30.0)]
    for x in xs:
        h(x)
    allx = torch.cat(xs)
    for c in range(3):
        np.testing.assert_array_equal(h.counts[c].numpy(), _np_hist(allx[:, c].numpy(), 32, int(h.k[c])))


def test_a_parameter_is_observed_once_per_value():
    p = nn.Parameter(torch.randn(4, 4))
    obs = HistogramObserver(bins=64)
    for _ in range(3):
        obs(p)
    assert obs.calls == 1 and obs.numel == 16
    with torch.no_grad():
        p.mul_(2)  # a new value (version counter moved): observed again
    obs(p)
    assert obs.calls == 2 and obs.numel == 32
    plain = torch.randn(4)
    obs(plain)
    obs(plain)  # activations are never deduplicated
    assert obs.calls == 4


@settings(max_examples=30, deadline=None)
@given(st.lists(st.lists(st.floats(-1e4, 1e4, allow_nan=False, width=32), min_size=1, max_size=40),
                min_size=1, max_size=4),
       st.integers(0, 2**31 - 1))
def test_batches_in_any_order_give_the_histogram_of_all_data(batches, seed):
    """Exact re-binning: the histogram does not depend on how the data was split or ordered."""
    ts = [torch.tensor(b, dtype=torch.float32) for b in batches]
    order = np.random.default_rng(seed).permutation(len(ts))
    a, b = HistogramObserver(bins=64), HistogramObserver(bins=64)
    for t in ts:
        a(t)
    for i in order:
        b(ts[i])
    one = HistogramObserver(bins=64)
    one(torch.cat(ts))
    assert torch.equal(a.k, one.k) and torch.equal(b.k, one.k)
    assert torch.equal(a.counts, one.counts) and torch.equal(b.counts, one.counts)
    assert a.amax.item() == one.amax.item() == max(abs(v) for bb in batches for v in bb)
