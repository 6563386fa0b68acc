"""The zoo's instrumentation (tests/zoo/probe.py) against a hand-built module whose GEMMs are known.

The probe is the independent reference of the coverage survey (and of the coverage matrix to come), so it
is checked here on a model small enough to list every call by hand.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import qsim_hooks as qh
from tests.zoo.probe import Probe, attention_like, point_checks, sequences


class _Attn(nn.Module):
    def forward(self, q, k, v):
        return torch.softmax(q @ k.transpose(-1, -2), dim=-1) @ v


class _Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 8)
        self.experts = nn.Parameter(torch.randn(2, 4, 8))  # (E, out, in), as transformers' MoE experts
        self.attn = _Attn()

    def forward(self, x):
        h = self.lin(x)  # (2, 3, 8)
        e = F.linear(h, self.experts[1])  # a slice of a 3-D parameter, (4, 8): (2, 3, 8) -> (2, 3, 4)
        return self.attn(e, e, e)


def _toy() -> _Toy:
    torch.manual_seed(0)
    return _Toy().eval()


def test_probe_records_every_gemm_its_operands_and_its_module():
    m, x = _toy(), torch.randn(2, 3, 4)
    probe = Probe(m)
    with torch.no_grad(), probe:
        m(x)
    gemms = [e for e in probe.events if e["kind"] == "gemm"]
    assert [(g["module"], g["fn"]) for g in gemms] == [("lin", "linear"), ("", "linear"),
                                                        ("attn", "Tensor.matmul"), ("attn", "Tensor.matmul")]
    srcs = [[s for s in g["sources"] if s] for g in gemms]
    assert srcs[0] == [("raw", ("lin.weight",))]  # through aten.t
    assert srcs[1] == [("raw", ("experts",))]  # through select and t: a 3-D parameter's slice
    assert srcs[2] == [] and srcs[3] == []  # activation x activation
    assert attention_like(probe.events) == {"attn": {"softmax": 1, "act_matmuls": 2}}
    # the probe leaves nothing behind
    assert not m._forward_hooks and torch._C._len_torch_function_stack() == 0


def test_probe_sees_quantized_weights_and_the_roles_of_attention_points():
    m, x = _toy(), torch.randn(2, 3, 4)
    points = {p: "e4m3" for p in ("q", "k", "scores", "probs", "v", "context")}
    cfg = qh.QuantConfig(input="e4m3", weight="e4m3", output="e4m3",
                         rules=[qh.Rule(types=_Attn, attention=True, **points)])
    probe = Probe(m)
    with torch.no_grad(), probe, qh.quantized(m, cfg) as qs:
        probe.watch_session(m, qs)
        m(x)
    gemms = [e for e in probe.events if e["kind"] == "gemm"]
    assert [s for s in gemms[0]["sources"] if s] == [("quant", ("lin.weight",))]
    # the bare 3-D parameter's slice is a functional candidate: the interception quantizes it before the GEMM
    # (under DisableTorchFunction, so the probe sees a fresh tensor), where the raw parameter reached it before
    assert ("raw", ("experts",)) not in gemms[1]["sources"]
    assert (gemms[2]["roles"], gemms[2]["result"]) == (["q", "k"], "scores")
    assert (gemms[3]["roles"], gemms[3]["result"]) == (["probs", "v"], "context")
    assert sequences(probe.events, {"attn"}, probe.types) == {
        "_Attn": [".:Tensor.matmul->bmm[q+k->scores]", ".:softmax", ".:Tensor.matmul->bmm[probs+v->context]"]}
    assert not point_checks(probe.events)  # q/k share the head dim, probs are probabilities, ...


def test_point_checks_name_a_misplaced_pair():
    events = [{"kind": "point", "module": "a", "point": p, "shape": s} for p, s in
              (("q", [2, 5, 8]), ("k", [2, 8, 5]), ("scores", [2, 5, 5]))]
    events.append({"kind": "point", "module": "a", "point": "probs", "shape": [2, 5, 8], "min": -1.0, "max": 1.0,
                   "rowsum_dev": 0.0, "zero_rows": 0})
    bad = point_checks(events)["a"]
    assert any("outside [0, 1]" in k for k in bad) and any("not shaped like probs" in k for k in bad)


def test_probe_sees_an_operand_no_point_quantized_off_the_grid():
    """The coverage matrix's grid check can fail: a layer turned off feeds its GEMM a raw weight and an
    activation off the e4m3 grid; a number times a quantized tensor counts as scaled, not as off the grid."""
    m, x = _toy(), torch.randn(2, 3, 4)
    cfg = qh.QuantConfig(input="e4m3", weight="e4m3", output="e4m3", rules=[qh.Rule("lin", enabled=False)])
    probe = Probe(m, grid=lambda t: t.to(torch.float8_e4m3fn).to(t.dtype))
    with torch.no_grad(), probe, qh.quantized(m, cfg) as qs:
        m(x)
        y = qs.points[("", "input", "input")](torch.randn(3, 4))  # a point's output, then scaled by a number
        torch.mm(y * 0.3, y.T)
    gemms = [e for e in probe.events if e["kind"] == "gemm"]
    assert gemms[0]["module"] == "lin" and gemms[0]["on_grid"] == [False, False]
    assert ("raw", ("lin.weight",)) in gemms[0]["sources"]
    assert all(e["on_grid"] == [True, True] for e in gemms[1:3])  # the expert slice, q·kᵀ
    assert gemms[-1]["on_grid"] == ["scaled", True]
    assert qs.coverage().summary.not_simulated >= 1
