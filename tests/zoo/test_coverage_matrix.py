"""The coverage matrix: every GEMM of every zoo architecture simulated as configured, checked independently.

Per case and implementation, one build, one forward inside ``qh.quantized(model, ALL)`` (e4m3 inputs,
weights and outputs everywhere, so every attention point is e4m3 too) under the zoo's own instrumentation
(:class:`tests.zoo.probe.Probe`), which knows nothing of the library's bookkeeping:

* ``qs.coverage()`` says every GEMM call was fully simulated, none against the config, every configured
  point ran, and the summary line says so;
* the probe counts the same GEMM calls (a fused attention kernel counts as two, as the summary counts it),
  module by module;
* no GEMM received a raw parameter (a weight that entered unquantized), and every floating operand of
  every GEMM lies on the e4m3 grid: PyTorch's own ``float8_e4m3fn`` cast leaves it unchanged, or it is
  a number times such a tensor (an attention module scaling its quantized query before Q·Kᵀ; the scalar
  commutes with the product). An operand no point quantized is off the grid (``test_probe`` checks that
  the probe sees one);
* every attention module's six points ran and saw what their names say (``point_checks``: q and k share
  the head dim, scores are (L, S), probs are probabilities shaped like scores, v's axis -2 is the key
  length, context is (L, Dv));
* e4m3 changes the output (finite), and nothing is left on the model.

Coverage exceptions, each one a thing the library warns about at run time, are listed in ``WARNED``; the
coverage of those calls is still asserted.
"""

from __future__ import annotations

import warnings
from collections import Counter

import pytest
import torch

import qsim_hooks as qh
from qsim_hooks import reuse
from qsim_hooks.report_coverage import coverage_line
from tests.core.model_check import snapshot, verify_unchanged
from tests.zoo import CASES, impl_cases, outputs
from tests.zoo.probe import FUSED, POINTS, Probe, point_checks
from tests.zoo.test_attention_points import MISFIT, SINKS
from tests.zoo.test_zoo_builds import _one_thread  # noqa: F401  (autouse: tiny models run on one thread)

pytest.importorskip("transformers")
pytest.importorskip("diffusers")

ALL = qh.QuantConfig(input="e4m3", weight="e4m3", output="e4m3")
#: the library's coverage warnings (the flush-to-zero notes of unscaled e4m3 casts are another matter)
COVERAGE_WARNINGS = ("never ran", "GEMM call(s) ran with an operand", "functional layer", "does not fit")
#: case -> (the warning the library gives, why its calls still count as simulated)
WARNED = {
    "deberta_v2": (MISFIT["deberta_v2"],
                   "the content->position and position->content bmm's are no attention product: the scope "
                   "leaves them to the points that made their operands (query_proj/key_proj outputs)"),
}


def _e4m3(x: torch.Tensor) -> torch.Tensor:
    """PyTorch's own e4m3 (fn) cast, back to ``x``'s dtype: the grid a quantized operand lies on."""
    return x.to(torch.float8_e4m3fn).to(x.dtype)


def _calls(e: dict) -> int:
    return 2 if e["op"] in FUSED else 1


@pytest.mark.parametrize("name,impl", impl_cases(), ids=[f"{n}-{i}" for n, i in impl_cases()])
def test_every_gemm_is_simulated_as_configured(name, impl):
    case = CASES[name]
    m = case.build(impl)
    attention = {e.module for e in qh.plan(m, ALL) if e.point == "q"}
    plain = outputs(case.run(m))
    snap = snapshot(m)
    probe = Probe(m, grid=_e4m3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with probe, qh.quantized(m, ALL) as qs:
            probe.watch_session(m, qs)
            got = outputs(case.run(m))
    verify_unchanged(m, snap)
    rows, summary = qs.coverage()
    # the library's account
    assert (summary.simulated, summary.partial, summary.not_simulated) == (summary.gemms, 0, 0), coverage_line(summary)
    assert summary.gemms > 0 and summary.against_config == 0 and summary.never_fired == ()
    assert coverage_line(summary) == f"{summary.gemms} GEMMs: all fully simulated"
    texts = [str(w.message) for w in caught if any(k in str(w.message) for k in COVERAGE_WARNINGS)]
    if name in WARNED:
        assert texts and all(WARNED[name][0] in t for t in texts), texts
    else:
        assert not texts, texts
    # the probe's account: the same calls, by module
    gemms = [e for e in probe.events if e["kind"] == "gemm" and e["float"]]
    by_module = Counter()
    for e in gemms:
        by_module[e["module"]] += _calls(e)
    assert by_module == _row_calls(rows)
    assert sum(by_module.values()) == summary.gemms
    raw = [(e["module"], e["op"], s[1]) for e in gemms for s in e["sources"] if s and s[0] == "raw"]
    assert not raw, f"raw parameters reached GEMMs: {raw[:4]}"
    off = [(e["module"], e["fn"], e["shapes"], e["on_grid"]) for e in gemms if False in e["on_grid"]]
    assert not off, f"GEMM operands off the e4m3 grid (no point quantized them): {off[:4]}"
    # the six points of every attention module ran and saw their tensors
    assert all(qs.points[(mod, p, p)].fired for mod in attention for p in POINTS)
    assert not point_checks(probe.events, sinks=name in SINKS)
    assert all(torch.isfinite(t).all() for t in got) and any(not torch.equal(a, b) for a, b in zip(got, plain))


def _row_calls(rows: list[dict]) -> Counter:
    c: Counter = Counter()
    for r in rows:
        c[r["module"]] += r["calls"]
    return c


@pytest.mark.parametrize("reuse_on", [False, True], ids=["fresh", "reuse"])
def test_the_warned_products_are_covered_by_the_points_that_made_their_operands(reuse_on):
    """DeBERTa-v2: the two extra bmm's per layer run on query_proj's and key_proj's quantized outputs.

    With reuse on, a q/k point given a tensor already on its grid returns that tensor (no copy), so one
    object stands for both the projection's output and the attention operand: a product is then named
    after whichever point marked the object or its base last, but every call stays covered.
    """
    case = CASES["deberta_v2"]
    m = case.build("eager")
    reuse.set_enabled(reuse_on)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with qh.quantized(m, ALL) as qs:
                case.run(m)
    finally:
        reuse.set_enabled(True)
    scopes = [n for n, x in m.named_modules() if type(x).__name__ in case.attention]
    for s in scopes:
        rows = [r for r in qs.coverage().rows if r["module"] == s]
        pts = [tuple(o["point"] for o in r["operands"]) for r in rows]
        if not reuse_on:
            assert pts == [(f"{s}[q]", f"{s}[k]"), (f"{s}.query_proj[output]", f"{s}.key_proj[output]"),
                           (f"{s}.key_proj[output]", f"{s}.query_proj[output]"), (f"{s}[probs]", f"{s}[v]")]
            continue
        assert sum(r["calls"] for r in rows) == 4 and all(r["status"] == "simulated" for r in rows), rows
        allowed = {f"{s}[{p}]" for p in ("q", "k", "probs", "v")} | \
            {f"{s}.{p}_proj[output]" for p in ("query", "key")}
        assert all(p in allowed for t in pts for p in t), pts
