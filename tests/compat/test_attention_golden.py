"""compat's attention against INT-FP-QSim's attention replacements (tools/compat_golden/make_attention_golden.py).

MaskFormerSwinSelfAttention (scores before the scale and the mask) and diffusers' Attention (k not
quantized, the scores after the scaled ``baddbmm``), each under E4M3/E4M3/FP16, INT8/INT8/FP16 and
E2M1/E2M1/FP16 (nn.MultiheadAttention and BertSelfAttention: test_golden.py). With a head size of 16 the
old and today's arithmetic are the same operations and the outputs are bit-identical where the golden
data's environment is this one; elsewhere (another ATen CPU capability or torch) the comparison is within
a few steps of the output format instead. With a head size of 8 the old tool quantized the scores after
the 1/sqrt(8) scale and compat before it: a documented difference, bounded here.
"""

from __future__ import annotations

import pathlib

import pytest
import torch

from qsim_hooks import compat

from . import models
from .test_golden import assert_bits

GOLDEN = torch.load(pathlib.Path(__file__).parent / "golden" / "attention.pt", weights_only=True)
ENV = GOLDEN["environment"]
SAME_ENV = ENV["torch"] == torch.__version__ and ENV["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
#: the output format's relative step (FP16: 2^-10), times the steps allowed off the golden environment
OUT_ULP, STEPS = 2.0 ** -10, 4


def _run(name: str, cfg: str) -> torch.Tensor:
    m, kw = models.attention_modules()[name]
    assert torch.equal(models.fingerprint(m), GOLDEN["modules"][name]["fingerprint"]), "rebuilt module differs"
    compat.replace_layers(m, *(getattr(compat, n) for n in cfg.split("/")))
    try:
        with torch.no_grad():
            y = m(**kw)
    finally:
        compat.detach(m)
    return y[0] if isinstance(y, tuple) else y


def _assert_close(y: torch.Tensor, old: torch.Tensor, what: str, steps: float) -> None:
    tol = steps * OUT_ULP * float(old.abs().max())
    err = float((y - old).abs().max())
    assert err <= tol, f"{what}: max |diff| {err:.3g} > {steps} steps of the output format ({tol:.3g})"


@pytest.mark.parametrize("cfg", GOLDEN["configs"])
@pytest.mark.parametrize("name", ["MaskFormerSwinSelfAttention", "Attention"])
def test_attention_module_matches_the_old_tool(name: str, cfg: str) -> None:
    g = GOLDEN["modules"][name]
    y = _run(name, cfg)
    if SAME_ENV:
        assert_bits(y, g[cfg], f"{name} {cfg}")
    else:
        _assert_close(y, g[cfg], f"{name} {cfg} (golden made on {ENV})", STEPS)
    # the internals are what the old tool quantized: without them the output is far from its
    assert float((g[cfg] - g["fp32"]).abs().max()) > 10 * float((y - g[cfg]).abs().max()) + 1e-4


@pytest.mark.parametrize("cfg", GOLDEN["configs"])
def test_head_size_8_scores_are_quantized_before_the_scale_a_bounded_difference(cfg: str) -> None:
    g = GOLDEN["modules"]["Attention-head8"]
    y = _run("Attention-head8", cfg)
    err, quant = float((y - g[cfg]).abs().max()), float((g[cfg] - g["fp32"]).abs().max())
    # measured (README): E4M3 0, INT8 0.43x and E2M1 0.18x the old tool's own distance from fp32
    assert err < quant / 2, f"{cfg}: compat {err:.3g} from the old tool, the old tool {quant:.3g} from fp32"


def test_diffusers_attention_k_is_not_quantized_as_in_the_old_processor() -> None:
    m, kw = models.attention_modules()["Attention"]
    compat.replace_layers(m, compat.E4M3, compat.E4M3, compat.FP16)
    keys = {k[1] for k in compat.session_of(m).points}
    compat.detach(m)
    assert keys == {"q", "scores", "probs", "v", "context"}
