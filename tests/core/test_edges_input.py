"""Issue 12, items 5 and 10: bad configuration gets one clear error; a format that flushes most of a point's
values to zero says so.

The flush warning is checked against a hand rule, not the format's own output: plain ``e2m1`` (OCP
FP4, smallest non-zero magnitude 0.5) rounds ``0 < |x| <= 0.25`` to zero (0.25 is a tie, to the even 0).
"""

from __future__ import annotations

import dataclasses
import math
import warnings

import pytest
import torch
import torchvision
from torch import nn

import qsim_hooks as qh
from qsim_hooks import guards
from qsim_hooks.formats import Scaling, get


# ---------------------------------------------------------------------------
# seed
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("seed, error", [("abc", TypeError), (math.nan, TypeError), (1.0, TypeError),
                                         (True, TypeError), (2**70, ValueError), (2**64, ValueError),
                                         (-1, ValueError)], ids=["str", "nan", "float", "bool", "2**70",
                                                                 "2**64", "negative"])
def test_a_bad_seed_is_one_error_naming_the_field_and_the_range(seed, error):
    with pytest.raises(error, match=r"QuantConfig\.seed.*\[0, 2\*\*64 - 1\]"):
        qh.QuantConfig(seed=seed)
    with pytest.raises(error, match=r"QuantConfig\.seed"):
        qh.QuantConfig.from_dict({"seed": seed})


def test_good_seeds_are_kept_and_seed_the_session():
    import numpy as np

    assert qh.QuantConfig(seed=np.int64(7)).seed == 7 and type(qh.QuantConfig(seed=np.int64(7)).seed) is int
    top = qh.QuantConfig(input=dataclasses.replace(get("int4"), rounding="stochastic"), seed=2**64 - 1)
    lin = nn.Linear(8, 8)
    x = torch.randn(64, 8)
    outs = []
    for _ in range(2):
        with torch.no_grad(), qh.quantized(lin, top):
            outs.append(lin(x))
    assert torch.equal(outs[0], outs[1])


# ---------------------------------------------------------------------------
# layer specs naming a tensor the layer does not have
# ---------------------------------------------------------------------------
class MyL(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(4, 4))
        self.register_buffer("scale", torch.ones(4))

    def forward(self, x):
        return x @ self.w * self.scale


@pytest.mark.parametrize("weight", ["int8", None], ids=["quantized", "weights off"])
def test_a_layer_spec_naming_a_missing_tensor_fails_at_plan_naming_module_and_tensor(weight):
    model = nn.Sequential(nn.Linear(4, 4), MyL())
    cfg = qh.QuantConfig(weight=weight, input="int8", layers={MyL: ("ww",)})
    with pytest.raises(ValueError, match=r"module '1' \(MyL\) has no tensor 'ww'.*its tensors: \['scale', 'w'\]"):
        qh.plan(model, cfg)
    with pytest.raises(ValueError, match="has no tensor 'ww'"):
        qh.attach(model, cfg)
    assert not hasattr(model[0], "parametrizations")  # nothing was attached
    assert len(qh.plan(model, qh.QuantConfig(weight="int8", layers={MyL: ("w",)})).active()) == 2


def test_absent_optional_weights_are_still_fine():
    mha = nn.MultiheadAttention(8, 2)  # q/k/v_proj_weight registered as None (packed in_proj_weight)
    lin = nn.Linear(4, 4, bias=False)
    assert [e.tensor for e in qh.plan(mha, qh.QuantConfig(weight="int8")).active() if e.point == "weight"] == \
        ["in_proj_weight", "weight"]
    assert len(qh.plan(lin, qh.QuantConfig(weight="int8")).active()) == 1


# ---------------------------------------------------------------------------
# most of a point flushed to zero
# ---------------------------------------------------------------------------
def _e2m1_flushed(w: torch.Tensor) -> float:
    a = w.detach().abs()
    nz = a > 0
    return float(((a <= 0.25) & nz).sum() / nz.sum())


def _flush_warnings(record) -> list[str]:
    return [str(w.message) for w in record if "flushed" in str(w.message)]


def test_plain_e2m1_on_resnet18_weights_warns_once_per_flushed_point():
    model = torchvision.models.resnet18().eval()
    x = torch.randn(1, 3, 32, 32)
    named = dict(model.named_modules())
    want = {f"{n}.weight" for n, m in named.items() if isinstance(m, (nn.Conv2d, nn.Linear))
            and _e2m1_flushed(m.weight) > 0.5}
    assert len(want) == 21  # every conv and the fc: ~99.8% of resnet18's weights are within +-0.25
    with torch.no_grad(), qh.quantized(model, weight="e2m1"):
        with warnings.catch_warnings(record=True) as first:
            warnings.simplefilter("always")
            model(x)
        with warnings.catch_warnings(record=True) as second:
            warnings.simplefilter("always")
            model(x)
    msgs = _flush_warnings(first)
    assert {m.split(": ")[1] for m in msgs} == want and len(msgs) == len(want)
    conv1 = next(m for m in msgs if m.startswith("qsim_hooks: conv1.weight: "))
    pct = 100 * _e2m1_flushed(model.conv1.weight)
    assert f"e2m1 flushed {pct:.1f}% of its non-zero values to zero" in conv1
    assert "unscaled cast" in conv1 and "Scaling" in conv1 and "mxfp4" in conv1 and "nvfp4" in conv1
    assert _flush_warnings(second) == []  # once per point


@pytest.mark.parametrize("fmt", ["mxfp4", "nvfp4", dataclasses.replace(get("e2m1"), scaling=Scaling()), "e4m3"],
                         ids=["mxfp4", "nvfp4", "scaled e2m1", "e4m3"])
def test_the_scaled_and_block_forms_do_not_warn(fmt):
    model = torchvision.models.resnet18().eval()
    with torch.no_grad(), qh.quantized(model, weight=fmt), warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        model(torch.randn(1, 3, 32, 32))
    assert _flush_warnings(rec) == []


@pytest.mark.parametrize("stats", [False, True], ids=["stats off", "stats on"])
def test_an_activation_point_flushed_by_its_format_warns_with_or_without_stats(stats):
    lin = nn.Linear(8, 8)
    x = torch.randn(16, 8) * 0.1  # within +-0.25 but for a few outliers
    frac = _e2m1_flushed(x)
    assert frac > 0.5
    with pytest.warns(RuntimeWarning, match=rf"<model>\[input\]: e2m1 flushed {100 * frac:.1f}%") as rec:
        with qh.quantized(lin, input="e2m1", stats=stats):
            lin(x)
    assert len(_flush_warnings(rec)) == 1


def test_an_integer_scale_set_by_an_outlier_warns_and_suggests_finer_scaling():
    lin = nn.Linear(64, 4)
    x = torch.randn(8, 64) * 0.01
    x[0, 0] = 100.0  # int4's step becomes 100 / 7: everything else rounds to zero
    with pytest.warns(RuntimeWarning, match=r"int4 flushed 99\.8% .*\(511 of 512.*int4 \(tensor dyn-max\) scales by "
                                            r"the largest.*granularity='channel' or 'block'"):
        with qh.quantized(lin, input="int4"):
            lin(x)


def test_the_check_runs_once_per_point_and_skips_what_has_no_values(monkeypatch):
    calls = []
    real = guards.check_flushed

    def counting(label, fmt, x, y):
        calls.append((label, x.is_meta))
        return real(label, fmt, x, y)

    monkeypatch.setattr(guards, "check_flushed", counting)
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8))
    with torch.no_grad(), qh.quantized(model, input="int8", weight="int8", output="int8"):
        for _ in range(3):
            model(torch.randn(2, 8))
        model(torch.randn(0, 8))
    assert sorted(label for label, _ in calls) == sorted(
        ["0[input]", "0.weight", "0[output]", "2[input]", "2.weight", "2[output]"])
    calls.clear()
    with torch.device("meta"):
        meta = nn.Linear(8, 8)
    with qh.quantized(meta, input="e2m1"):
        meta(torch.empty(2, 8, device="meta"))
        meta(torch.empty(2, 8, device="meta"))
    assert calls == [("<model>[input]", True)] * 2  # still to do: a meta tensor has nothing to look at
