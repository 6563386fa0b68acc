"""Model-wide GEMM interception and coverage on real model code (tiny random-weight configs, no downloads).

References are built by hand, independently of the session: a deep copy of the model whose weights are
quantized in place with the format itself (``fmt(W)`` on each (out, in) matrix, expert by expert), and
for activations a few hooks or a tiny ``TorchFunctionMode`` of the test's own. The session's output must
be bit-identical to the reference run of the same model code.
"""

from __future__ import annotations

import copy
import re
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

import qsim_hooks as qh
from qsim_hooks.formats import registry
from qsim_hooks.report_coverage import coverage_line
from tests.core.model_check import snapshot, verify_unchanged
from tests.zoo import decoders, moe, vision

pytest.importorskip("transformers")

_CASES = {c.name: c for c in (*moe.CASES, *decoders.CASES, *vision.CASES)}


def _run(case, model: nn.Module) -> Tensor:
    out = (case.forward or (lambda m, i: m(**i)))(model, case.inputs())
    return out.logits if hasattr(out, "logits") else out


def _quiet_session(model: nn.Module, cfg: qh.QuantConfig, **kw):
    return qh.quantized(model, cfg, **kw)


# ---------------------------------------------------------------------------
# GPT-2's transformers.pytorch_utils.Conv1D: weight (in, out), torch.addmm
# ---------------------------------------------------------------------------
def test_gpt2_conv1d_weights_inputs_outputs_match_a_hand_quantized_model():
    case = _CASES["gpt2"]
    model = case.build("eager")
    w_fmt, a_fmt = registry.get("mxfp4"), registry.get("e4m3")
    conv1d = type(model.transformer.h[0].attn.c_attn)
    # the Conv1D layers only (lm_head is tied to the embedding table; attention internals are another test's)
    cfg = qh.QuantConfig(rules=[qh.Rule(types=conv1d, input=a_fmt, weight=w_fmt, output=a_fmt)])
    ref = copy.deepcopy(model)
    convs = [m for m in ref.modules() if type(m).__name__ == "Conv1D"]
    assert len(convs) == 8  # c_attn, c_proj, mlp.c_fc, mlp.c_proj per layer
    with torch.no_grad():
        for m in convs:  # blocks run along the reduction axis: axis 0 of the (in, out) weight
            m.weight.copy_(w_fmt(m.weight.T.contiguous()).T)
            m.register_forward_pre_hook(lambda mod, args: (a_fmt(args[0]),))
            m.register_forward_hook(lambda mod, args, out: a_fmt(out))
        expected = _run(case, ref)
        snap = snapshot(model)
        with qh.quantized(model, cfg) as qs:
            got = _run(case, model)
    verify_unchanged(model, snap)
    assert torch.equal(got, expected)
    assert not torch.equal(got, _run(case, model))
    conv_keys = [k for k, p in qs.points.items() if type(model.get_submodule(k[0])).__name__ == "Conv1D"]
    assert len(conv_keys) == 3 * 8 and all(qs.points[k].fired for k in conv_keys)
    rows, summary = qs.coverage()
    assert summary.against_config == 0
    conv_rows = [r for r in rows if r["type"] == "Conv1D"]
    assert sum(r["calls"] for r in conv_rows) == 8 and all(r["status"] == "simulated" for r in conv_rows)
    assert {r["op"] for r in conv_rows} == {"addmm"}


def test_conv1d_is_in_the_layer_registry_by_name():
    from transformers.pytorch_utils import Conv1D

    spec = qh.layers.lookup(Conv1D(6, 4))
    assert (spec.weights, spec.weight_channel_axis, spec.weight_reduction_axis) == (("weight",), 1, 0)
    assert not spec.functional


# ---------------------------------------------------------------------------
# mixture-of-experts: 3-D expert parameters in one module (transformers 5)
# ---------------------------------------------------------------------------
#: expert parameters stored (E, in, out) (``x @ W[e]``); the others are (E, out, in) (``F.linear(x, W[e])``)
_IN_OUT = {"GptOssExperts"}


def _per_expert(fmt, w: Tensor, in_out: bool) -> Tensor:
    """Each expert's matrix quantized as a Linear weight (out, in) is, on its own."""
    mats = [fmt(m.T.contiguous()).T if in_out else fmt(m) for m in w.unbind(0)]
    return torch.stack(mats)


def _hand_quantized_weights(model: nn.Module, fmt) -> nn.Module:
    """Every GEMM weight of a MoE decoder quantized in place: Linears, routers (a bare 2-D ``weight``), experts."""
    ref = copy.deepcopy(model)
    with torch.no_grad():
        for m in ref.modules():
            if isinstance(m, nn.Embedding):
                continue
            for p in m.parameters(recurse=False):
                if p.dim() == 2:
                    p.copy_(fmt(p))
                elif p.dim() == 3:
                    p.copy_(_per_expert(fmt, p, type(m).__name__ in _IN_OUT))
    return ref


_MOE_RUNS = [("mixtral", "eager", "mxfp4"), ("mixtral", "sdpa", "int8"), ("mixtral", "sdpa+batched_mm", "mxfp4"),
             ("qwen2_moe", "sdpa", "mxfp4"), ("qwen3_moe", "eager", "int8"), ("olmoe", "sdpa", "mxfp4"),
             ("deepseek_v3", "sdpa", "mxfp4"), ("gpt_oss", "eager", "mxfp4"), ("gpt_oss", "eager+grouped_mm", "int8"),
             ("gpt_oss", "eager+batched_mm", "mxfp4")]


@pytest.mark.parametrize("name,impl,fmt", _MOE_RUNS, ids=["-".join(r) for r in _MOE_RUNS])
def test_moe_expert_weights_are_quantized_per_expert_along_their_reduction_axis(name, impl, fmt):
    case = _CASES[name]
    model = case.build(impl)
    assert model.get_output_embeddings().weight is not model.get_input_embeddings().weight
    stacks = [(n, p.shape) for n, p in model.named_parameters() if p.dim() == 3]
    assert stacks, "the case has no 3-D expert parameters"
    f = registry.get(fmt)
    with torch.no_grad():
        expected = _run(case, _hand_quantized_weights(model, f))
        snap = snapshot(model)
        with qh.quantized(model, qh.QuantConfig(weight=f)) as qs:
            got = _run(case, model)
    verify_unchanged(model, snap)
    assert torch.equal(got, expected)
    fired = {k[0] + "." + k[2] for k, p in qs.points.items() if p.fired}
    assert {n for n, _ in stacks} <= fired
    summary = qs.coverage().summary
    assert summary.against_config == 0 and not summary.never_fired


@pytest.mark.parametrize("impl", ["eager", "sdpa", "sdpa+batched_mm"])
def test_moe_everything_quantized_is_fully_simulated_and_expert_points_fire(impl):
    case = _CASES["mixtral"]
    model = case.build(impl)
    cfg = qh.QuantConfig(input="e4m3", weight="e4m3", output="e4m3")
    with torch.no_grad():
        plain = _run(case, model)
        with qh.quantized(model, cfg) as qs:
            got = _run(case, model)
    assert not torch.equal(got, plain)
    rows, summary = qs.coverage()
    assert summary.fraction == 1.0 and summary.gemms > 0, coverage_line(summary)
    experts = [n for n, m in model.named_modules() if type(m).__name__ == "MixtralExperts"]
    for n in experts:
        for point in ("input", "output"):
            assert qs.points[(n, point, point)].fired
        ops = {r["op"] for r in rows if r["module"] == n}
        assert ops, f"no GEMM recorded for {n}"
    with torch.no_grad(), qh.quantized(model, qh.QuantConfig()) as qs:
        assert torch.equal(_run(case, model), plain)  # nothing configured: the interception changes nothing


# ---------------------------------------------------------------------------
# torchvision swin_t: F.linear(x, self.qkv.weight) inside the attention module
# ---------------------------------------------------------------------------
class _LinearPoints(TorchFunctionMode):
    """The test's own reference: ``F.linear`` on one of ``weights`` gets ``fmt`` on its input and output."""

    def __init__(self, weights: set[int], fmt) -> None:
        super().__init__()
        self.weights, self.fmt = weights, fmt

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.linear and id(args[1]) in self.weights:
            return self.fmt(func(self.fmt(args[0]), *args[1:], **kwargs))
        return func(*args, **kwargs)


def test_swin_functional_qkv_and_proj_fire_their_layers_points():
    case = _CASES["tv_swin_t"]
    model = case.build("native")
    a_fmt = registry.get("e4m3")
    # only the attention modules' qkv and proj: their weights at full precision, inputs and outputs in e4m3
    cfg = qh.QuantConfig(rules=[qh.Rule(["*.attn.qkv", "*.attn.proj"], input=a_fmt, output=a_fmt)])
    layers = [n for n, _ in model.named_modules() if n.endswith((".attn.qkv", ".attn.proj"))]
    assert len(layers) == 8
    with torch.no_grad():
        ref = copy.deepcopy(model)
        with _LinearPoints({id(ref.get_submodule(n).weight) for n in layers}, a_fmt):
            expected = _run(case, ref)
        with qh.quantized(model, cfg) as qs:
            got = _run(case, model)
    assert torch.equal(got, expected)
    for n in layers:
        for point in ("input", "output"):
            assert qs.points[(n, point, point)].fired == 1, (n, point)
    # recorded in the attention module that made the call, covered by the layer's input point; the weight is
    # at full precision as configured (partial, not against the config)
    rows = [r for r in qs.coverage().rows if r["module"].endswith(".attn") and r["op"] == "linear"]
    assert sum(r["calls"] for r in rows) == 8
    for r in rows:
        act, weight = r["operands"]
        assert act["point"] in (f"{r['module']}.qkv[input]", f"{r['module']}.proj[input]")
        assert weight["point"] is None and not weight["asked"] and not r["against_config"]


# ---------------------------------------------------------------------------
# accounting: warnings, require_coverage, the summary line
# ---------------------------------------------------------------------------
class _Mixer(nn.Module):
    """An attention-like module no pattern names: SDPA outside an attention module is not simulated."""

    def __init__(self) -> None:
        super().__init__()
        self.qkv = nn.Linear(8, 24)

    def forward(self, x: Tensor) -> Tensor:
        q, k, v = self.qkv(x).chunk(3, -1)
        return F.scaled_dot_product_attention(q, k, v)


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.mix = _Mixer()
        self.head = nn.Linear(8, 4)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.mix(x))


def test_unsimulated_gemms_are_named_in_a_warning_at_exit():
    torch.manual_seed(0)
    model, x = _Net(), torch.randn(2, 3, 8)
    with pytest.warns(RuntimeWarning, match=r"2 GEMM call\(s\) ran .*mix scaled_dot_product_attention:QK"):
        with torch.no_grad(), qh.quantized(model, qh.QuantConfig(input="e4m3", weight="e4m3")) as qs:
            model(x)
    rows, summary = qs.coverage()
    assert (summary.gemms, summary.simulated, summary.not_simulated, summary.against_config) == (4, 2, 2, 2)
    by_op = {(r["module"], r["op"]): r for r in rows}
    assert by_op[("mix.qkv", "linear")]["status"] == "simulated"
    assert by_op[("head", "linear")]["operands"][1]["point"] == "head.weight"
    assert by_op[("mix", "scaled_dot_product_attention:QK")]["against_config"]
    assert coverage_line(summary).startswith("4 GEMMs: 2 fully simulated, 2 not: mix (")


def test_require_coverage_raises_after_restoring_the_model():
    torch.manual_seed(0)
    model, x = _Net(), torch.randn(2, 3, 8)
    snap = snapshot(model)
    cfg = qh.QuantConfig(input="e4m3", weight="e4m3", require_coverage=True)
    with pytest.raises(qh.CoverageError, match="require_coverage=True.*mix scaled_dot_product_attention"):
        with torch.no_grad(), qh.quantized(model, cfg):
            model(x)
    verify_unchanged(model, snap)
    # a rule that sets the role to None accepts the call: no error, no warning
    ok = qh.QuantConfig(input="e4m3", weight="e4m3", require_coverage=True, rules=[qh.Rule("mix", input=None)])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with torch.no_grad(), qh.quantized(model, ok) as qs:
            model(x)
    assert qs.coverage().summary.against_config == 0


def test_require_coverage_is_a_checked_bool():
    with pytest.raises(TypeError, match="require_coverage"):
        qh.QuantConfig(require_coverage="yes")
    assert qh.QuantConfig.from_dict({"require_coverage": True}).require_coverage


def test_a_configured_point_that_never_ran_is_named():
    torch.manual_seed(0)
    model, x = _Net(), torch.randn(2, 3, 8)
    with pytest.warns(RuntimeWarning, match=r"never ran: head\.weight"):
        with torch.no_grad(), qh.quantized(model, qh.QuantConfig(rules=[qh.Rule("head", weight="e4m3")])):
            model.mix(x)


def test_attention_products_whose_points_are_off_are_not_against_the_config():
    from tests.core.test_attention import ToyAttention

    torch.manual_seed(0)
    m, x = ToyAttention().eval(), torch.randn(2, 5, 16)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # only q and k configured: P·V at full precision is what was asked
        with torch.no_grad(), qh.quantized(m, qh.QuantConfig(rules=[qh.Rule(types=ToyAttention, q="e2m1",
                                                                              k="e2m1")])) as qs:
            m(x)
    rows = [r for r in qs.coverage().rows if r["module"] == "" and r["op"] == "matmul"]
    assert sorted(r["status"] for r in rows) == ["not simulated", "simulated"]  # Q·Kᵀ, then P·V
    assert [o["point"] for o in rows[0]["operands"]] == ["<model>[q]", "<model>[k]"]
    assert qs.coverage().summary.against_config == 0
    # everything asked: the same module is fully simulated
    with torch.no_grad(), qh.quantized(m, qh.QuantConfig(input="e4m3", weight="e4m3", output="e4m3")) as qs:
        m(x)
    assert qs.coverage().summary.fraction == 1.0


class _Gathered(nn.Module):
    """Expert-like stack whose GEMM operand is gathered along its reduction axis: no weight layout to read."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(4, 8, 8))

    def forward(self, x: Tensor) -> Tensor:
        return torch.bmm(x, self.w.index_select(1, torch.tensor([7, 6, 5, 4, 3, 2, 1, 0])))


def test_an_expert_layout_that_cannot_be_read_is_named_not_skipped():
    torch.manual_seed(0)
    m, x = _Gathered(), torch.randn(4, 3, 8)
    with torch.no_grad():
        plain = m(x)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with qh.quantized(m, qh.QuantConfig(weight="int4")) as qs:
                got = m(x)
    # one warning for one cause: not again as a point that never ran, nor as a GEMM against the config
    (text,) = [str(w.message) for w in caught]
    assert re.search(r"functional layer '' \(_Gathered\).*'w' in bmm.*not recognised", text)
    assert torch.equal(got, plain)  # the weight ran at full precision, and the warning says so
    rows, summary = qs.coverage()
    (row,) = [r for r in rows if r["op"] == "bmm"]
    assert row["operands"][1]["point"] is None and "not recognised" in row["operands"][1]["reason"]
    assert summary.against_config == 1 and summary.never_fired == ("<model>.w",)  # the account still says it
    # require_coverage: still an error
    with pytest.raises(qh.CoverageError, match=r"<model> bmm \(weight: layout of 'w' in bmm not recognised\)"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with torch.no_grad(), qh.quantized(m, qh.QuantConfig(weight="int4", require_coverage=True)):
                m(x)


def test_an_unrecognised_layout_does_not_hide_other_causes():
    """A second module whose point never ran and a GEMM against the config are still named, each once."""
    torch.manual_seed(0)
    model = nn.ModuleDict({"g": _Gathered(), "net": _Net()})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with torch.no_grad(), qh.quantized(model, qh.QuantConfig(input="e4m3", weight="int4")):
            model["g"](torch.randn(4, 3, 8))
            model["net"].mix(torch.randn(2, 3, 8))
    texts = [str(w.message) for w in caught if "qsim_hooks" in str(w.message)]
    assert len(texts) == 3, texts
    never, layout, against = sorted(texts, key=lambda t: ("never ran" not in t, "functional layer" not in t))
    assert "never ran: net.head[input], net.head.weight;" in never and "g.w" not in never
    assert "functional layer 'g'" in layout
    assert "net.mix scaled_dot_product_attention:QK" in against and "layout of" not in against


@pytest.mark.parametrize("name,folded", [("model.layers.3.mlp", "model.layers.*.mlp"), ("0", "0"),
                                         ("0.attn.1", "0.attn.*"), ("h.10", "h.*"), ("", "<model>"),
                                         ("blocks.0.layers.0.x2", "blocks.*.layers.*.x2")])
def test_folded_names_keep_a_top_level_numeric_module(name, folded):
    from qsim_hooks.coverage import fold, fold_point

    assert fold(name) == folded
    assert fold_point(f"{name or '<model>'}[input]") == f"{folded}[input]"


def test_a_sequential_model_is_named_by_its_layers_in_the_summary():
    torch.manual_seed(0)
    seq = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    cfg = qh.QuantConfig(input="e4m3", weight="e4m3", rules=[qh.Rule("2", enabled=False)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with torch.no_grad(), qh.quantized(seq, cfg) as qs:
            seq(torch.randn(3, 4))
    summary = qs.coverage().summary
    assert [m for m, _, _ in summary.missing] == ["2"]
    assert coverage_line(summary).startswith("2 GEMMs: 1 fully simulated, 1 not: 2 (")


# ---------------------------------------------------------------------------
# operands indexed out of a parameter: W[idx, :, :, 0], W[idx, :, 0]
# ---------------------------------------------------------------------------
class _Packed(nn.Module):
    """Expert matrices (E, out, in) packed two to a stack along a last axis; a GEMM on ``w[idx, :, :, 0]``."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(4, 6, 32, 2))

    def forward(self, x: Tensor, idx: Tensor) -> Tensor:
        return torch.bmm(self.w[idx, :, :, 0], x.unsqueeze(-1)).squeeze(-1)


@pytest.mark.parametrize("fmt", ["mxfp4", "int8"])
def test_an_operand_indexed_out_of_a_parameter_gets_the_weight_format(fmt):
    torch.manual_seed(0)
    m, x, idx = _Packed(), torch.randn(5, 32), torch.tensor([3, 0, 3, 1, 2])
    f = registry.get(fmt)
    with torch.no_grad():  # each (out, in) matrix w[e, :, :, c] quantized as a Linear weight, on its own
        wq = torch.stack([torch.stack([f(m.w[e, :, :, c]) for c in range(2)], -1) for e in range(4)])
        expected = torch.bmm(wq[idx, :, :, 0], x.unsqueeze(-1)).squeeze(-1)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            with qh.quantized(m, qh.QuantConfig(weight=f)) as qs:
                got = m(x, idx)
    assert torch.equal(got, expected) and not torch.equal(got, m(x, idx))
    (row,) = qs.coverage().rows
    assert row["operands"][0] == {"role": "weight", "point": "<model>.w", "asked": True, "reason": None}
    assert not row["against_config"] and qs.points[("", "weight", "w")].fired


class _Gather2D(nn.Module):
    """``F.linear(x, w[idx, :, 0])``: the weight's output axis is made by gathering (no weight layout)."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(4, 8, 3))

    def forward(self, x: Tensor, idx: Tensor) -> Tensor:
        return F.linear(x, self.w[idx, :, 0])


def test_an_indexed_operand_with_no_weight_layout_is_named_not_taken_for_an_activation():
    torch.manual_seed(0)
    m = nn.Sequential()
    m.add_module("mix", _Gather2D())
    x, idx = torch.randn(2, 8), torch.tensor([1, 1, 0])
    with torch.no_grad():
        plain = m.mix(x, idx)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with qh.quantized(m, qh.QuantConfig(input="e4m3", weight="int4")) as qs:
                got = m.mix(x, idx)
    (text,) = [str(w.message) for w in caught]
    assert "functional layer 'mix' (_Gather2D)" in text and "'w' in linear" in text
    (row,) = qs.coverage().rows
    x_op, w_op = row["operands"]
    assert w_op["role"] == "weight" and w_op["point"] is None and "not recognised" in w_op["reason"]
    assert x_op["point"] == "mix[input]"  # the activation is still the module's input
    assert torch.equal(got, F.linear(registry.get("e4m3")(x), m.mix.w[idx, :, 0]))
    assert not torch.equal(got, plain)


def test_the_readme_coverage_line_is_what_the_zoo_llama_gives():
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    (line,) = [ln[len("coverage: "):] for ln in readme.splitlines() if ln.startswith("coverage: 19 GEMMs")]
    case = _CASES["llama"]
    model = case.build("eager")
    cfg = qh.QuantConfig(input="e4m3", weight="e4m3", output="e4m3", rules=[qh.Rule("lm_head", enabled=False)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with torch.no_grad(), qh.quantized(model, cfg) as qs:
            _run(case, model)
    assert coverage_line(qs.coverage().summary) == line


# ---------------------------------------------------------------------------
# an attention module that is a functional layer too (3-D einsum weights, T5X style)
# ---------------------------------------------------------------------------
class _EinsumAttention(nn.Module):
    """Attention whose projections are 3-D parameters used by ``einsum`` (no Linear children)."""

    def __init__(self) -> None:
        super().__init__()
        self.wq, self.wk, self.wv = (nn.Parameter(torch.randn(8, 2, 4)) for _ in range(3))

    def forward(self, x: Tensor) -> Tensor:
        q, k, v = (torch.einsum("btd,dnh->bnth", x, w) for w in (self.wq, self.wk, self.wv))
        return torch.softmax(q @ k.transpose(-1, -2), -1) @ v


def test_an_attention_module_with_functional_weights_keeps_its_six_points():
    torch.manual_seed(0)
    m, x = nn.Sequential(_EinsumAttention()).eval(), torch.randn(2, 5, 8)
    f = registry.get("e4m3")
    with torch.no_grad():  # by hand: projections on quantized x and weights, their outputs quantized, then the six
        a = m[0]
        q, k, v = (f(torch.einsum("btd,dnh->bnth", f(x), f(w))) for w in (a.wq, a.wk, a.wv))
        expected = f(f(torch.softmax(f(f(q) @ f(k).transpose(-1, -2)), -1)) @ f(v))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with qh.quantized(m, qh.QuantConfig(input="e4m3", weight="e4m3", output="e4m3")) as qs:
                got = m(x)
    assert torch.equal(got, expected)
    assert not [w for w in caught if "never ran" in str(w.message) or "GEMM call" in str(w.message)]
    assert all(qs.points[("0", p, p)].fired for p in ("q", "k", "scores", "probs", "v", "context"))
    summary = qs.coverage().summary
    assert (summary.gemms, summary.simulated, summary.against_config) == (5, 5, 0)


class _NotAttention(nn.Module):
    """Marked as attention by a rule, but it runs no product of two activations."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(self.fc(x))


def test_an_attention_module_that_ran_no_product_is_named_once():
    torch.manual_seed(0)
    m = nn.Sequential(_NotAttention(), nn.Linear(4, 2), _NotAttention())
    cfg = qh.QuantConfig(input="e4m3", weight="e4m3", rules=[qh.Rule(types=_NotAttention, attention=True)])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with torch.no_grad(), qh.quantized(m, cfg) as qs:
            m[1](m[0](torch.randn(2, 4)))  # the second one never runs
    texts = [str(w.message) for w in caught if "qsim_hooks" in str(w.message)]
    assert len(texts) == 2, texts
    ran_none, never = sorted(texts, key=lambda t: "never ran" in t)
    assert "attention module '0' (_NotAttention) ran no product" in ran_none
    # the module that ran is named by its scope; the one that did not run is named as never run (its points
    # and its Linear's), and the first one's points are still in the account
    assert "never ran: 2[q], 2[k], 2[probs], 2[v], 2.fc[input], 2.fc.weight;" in never and "0[q]" not in never
    assert {"0[q]", "2[q]"} <= set(qs.coverage().summary.never_fired)
