"""qsim_hooks.stats: SQNR against hand-computed values, the formats table against known figures."""

import math

import pytest
import torch

from qsim_hooks import stats

# ---------------------------------------------------------------------------
# sqnr_db
# ---------------------------------------------------------------------------
HAND = [
    # reference, quantized, 10*log10(sum(ref^2) / sum((ref - q)^2)) worked out by hand
    ([1.0, 2.0, 3.0, 4.0], [1.0, 2.0, 3.0, 5.0], 10 * math.log10(30 / 1)),
    ([2.0], [1.0], 10 * math.log10(4 / 1)),
    ([1.0, -1.0], [0.0, 0.0], 0.0),
    ([3.0, 4.0], [3.5, 3.5], 10 * math.log10(25 / 0.5)),
    ([10.0, 0.0], [10.0, 0.5], 10 * math.log10(100 / 0.25)),
]


@pytest.mark.parametrize("ref,q,want", HAND, ids=[f"case{i}" for i in range(len(HAND))])
def test_sqnr_hand_computed(ref, q, want):
    assert stats.sqnr_db(torch.tensor(ref), torch.tensor(q)) == pytest.approx(want, abs=1e-9)


def test_sqnr_exact_is_inf():
    x = torch.randn(100)
    assert stats.sqnr_db(x, x.clone()) == math.inf
    assert stats.sqnr_db(torch.zeros(3), torch.zeros(3)) == math.inf


def test_sqnr_zero_signal_with_noise_is_minus_inf():
    assert stats.sqnr_db(torch.zeros(3), torch.tensor([0.0, 1.0, 0.0])) == -math.inf


def test_sqnr_empty_is_nan():
    assert math.isnan(stats.sqnr_db(torch.empty(0), torch.empty(0)))


def test_sqnr_nonfinite_reference_elements_are_left_out():
    ref = torch.tensor([float("nan"), 1.0, 2.0, float("inf")])
    q = torch.tensor([float("nan"), 1.0, 3.0, 448.0])
    assert stats.sqnr_db(ref, q) == pytest.approx(10 * math.log10(5 / 1), abs=1e-9)
    assert math.isnan(stats.sqnr_db(torch.tensor([float("nan")]), torch.tensor([float("nan")])))


def test_sqnr_finite_quantized_to_nonfinite_is_minus_inf():
    ref = torch.tensor([1.0, 500.0])
    assert stats.sqnr_db(ref, torch.tensor([1.0, float("inf")])) == -math.inf
    assert stats.sqnr_db(ref, torch.tensor([1.0, float("nan")])) == -math.inf


def test_sqnr_shape_mismatch_is_a_value_error():
    with pytest.raises(ValueError, match="same shape"):
        stats.sqnr_db(torch.zeros(3), torch.zeros(4))


def test_sqnr_low_precision_inputs_are_summed_in_float64():
    ref = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.bfloat16)
    q = torch.tensor([1.0, 2.0, 3.0, 5.0], dtype=torch.float16)
    assert stats.sqnr_db(ref, q) == pytest.approx(10 * math.log10(30), abs=1e-9)


def test_sums_merge_exactly_across_batches():
    ref, q = torch.randn(1000), torch.randn(1000)
    whole = stats.sqnr_db(ref, q)
    s1, n1, c1 = stats.power_sums(ref[:300], q[:300])
    s2, n2, c2 = stats.power_sums(ref[300:], q[300:])
    assert stats.sqnr_db_from_sums(s1 + s2, n1 + n2, c1 + c2) == pytest.approx(whole, rel=1e-12)


# ---------------------------------------------------------------------------
# format_rows
# ---------------------------------------------------------------------------
KNOWN_MAX = {"e4m3": 448.0, "e5m2": 57344.0, "e3m4": 15.5, "e3m2": 28.0, "e2m3": 7.5, "e2m1": 6.0,
             "fp16": 65504.0, "bf16": float(torch.finfo(torch.bfloat16).max),
             "fp32": float(torch.finfo(torch.float32).max), "int8": 127.0, "int4": 7.0, "uint8": 255.0}
KNOWN_BITS = {"e4m3": 8, "e5m2": 8, "e3m4": 8, "e3m2": 6, "e2m3": 6, "e2m1": 4, "fp16": 16, "bf16": 16,
              "tf32": 19, "fp32": 32, "int8": 8, "int4": 4, "uint8": 8}
# smallest subnormal and spacing at 1.0, from the format definitions (OCP MX spec, IEEE 754)
KNOWN_STEPS = {"e4m3": (2.0**-9, 2.0**-3), "e5m2": (2.0**-16, 2.0**-2), "e3m4": (2.0**-6, 2.0**-4),
               "e3m2": (2.0**-4, 2.0**-2), "e2m3": (2.0**-3, 2.0**-3), "e2m1": (0.5, 0.5),
               "fp16": (2.0**-24, 2.0**-10), "bf16": (2.0**-133, 2.0**-7), "fp32": (2.0**-149, 2.0**-23)}


@pytest.fixture(scope="module")
def rows():
    return {r["name"]: r for r in stats.format_rows(samples=4096)}


def test_rows_have_the_documented_keys(rows):
    for r in rows.values():
        assert tuple(r) == stats.FORMAT_ROW_KEYS


@pytest.mark.parametrize("name", sorted(KNOWN_MAX), ids=str)
def test_rows_known_maxima(rows, name):
    assert rows[name]["max"] == KNOWN_MAX[name]
    assert rows[name]["bits"] == KNOWN_BITS[name]


@pytest.mark.parametrize("name", sorted(KNOWN_STEPS), ids=str)
def test_rows_known_steps(rows, name):
    sub, spacing = KNOWN_STEPS[name]
    assert rows[name]["min_subnormal"] == sub
    assert rows[name]["spacing_at_1"] == spacing
    assert rows[name]["granularity"] == "cast"


def test_rows_cover_every_named_format(rows):
    from qsim_hooks import formats

    assert set(rows) == set(formats.names())


def _samples(n, seed):
    return torch.randn(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float32)


@pytest.mark.parametrize("name,dtype", [("e4m3", torch.float8_e4m3fn), ("e5m2", torch.float8_e5m2),
                                        ("fp16", torch.float16), ("bf16", torch.bfloat16)],
                         ids=["e4m3", "e5m2", "fp16", "bf16"])
def test_row_sqnr_matches_pytorch_cast(name, dtype):
    # independent reference: PyTorch's own cast of the same N(0,1) samples
    (row,) = stats.format_rows([name], samples=4096, seed=3)
    x = _samples(4096, 3)
    want = 10 * math.log10(float((x.double() ** 2).sum())
                           / float(((x.double() - x.to(dtype).double()) ** 2).sum()))
    assert row["sqnr_db"] == pytest.approx(want, abs=1e-9)


def test_row_sqnr_int8_matches_fake_quantize():
    (row,) = stats.format_rows(["int8"], samples=4096, seed=1)
    x = _samples(4096, 1)
    q = torch.fake_quantize_per_tensor_affine(x, float(x.abs().max()) / 127.0, 0, -127, 127)
    assert row["sqnr_db"] == pytest.approx(stats.sqnr_db(x, q), abs=1e-9)


def test_row_sqnr_identity_is_inf_and_ints_improve_with_bits(rows):
    assert rows["fp32"]["sqnr_db"] == math.inf
    ints = [rows[f"int{b}"]["sqnr_db"] for b in range(2, 17)]
    assert ints == sorted(ints)
    # ~6 dB per bit: the textbook rule for a uniform quantizer
    assert rows["int16"]["sqnr_db"] - rows["int8"]["sqnr_db"] == pytest.approx(8 * 6.02, abs=2.0)


def test_rows_are_seeded_and_keep_the_order_asked_for():
    a = stats.format_rows(["int4", "e2m1", "e4m3"], samples=1000, seed=7)
    b = stats.format_rows(["int4", "e2m1", "e4m3"], samples=1000, seed=7)
    c = stats.format_rows(["int4", "e2m1", "e4m3"], samples=1000, seed=8)
    assert [r["name"] for r in a] == ["int4", "e2m1", "e4m3"]
    assert a == b
    assert a != c


def test_rows_parse_any_exmy_name():
    (row,) = stats.format_rows(["e4m3fn"], samples=16)  # alias of e4m3
    assert row["max"] == 448.0
    (row,) = stats.format_rows(["e6m5"], samples=16)
    assert row["bits"] == 12


def test_rows_bad_input():
    with pytest.raises(ValueError, match="unknown format"):
        stats.format_rows(["e4m3", "nosuchformat"])
    with pytest.raises(ValueError, match="samples"):
        stats.format_rows(["e4m3"], samples=0)
