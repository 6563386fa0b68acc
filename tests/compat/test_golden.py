"""qsim_hooks.compat against INT-FP-QSim itself: the golden outputs of tools/compat_golden/make_golden.py.

Every quantizer case, gradient, model logit and calibration amax the old tool produced is compared bit for
bit (NaN matches NaN, -0.0 does not match +0.0). The deliberate differences (README, compatibility section)
are excluded from that comparison by name and each is asserted by its own test below, against the old
tool's output too. The E1M2/E2M1 arithmetic (float32 ``log2`` / ``pow``) and the model logits depend on
the vectorised code path, so those comparisons need the environment the golden data was made in (torch
version and ATen CPU capability, recorded in golden/manifest.json, and kernels that compute the plain
float32 models with the golden run's bits: oneDNN and the BLAS also choose by microarchitecture); elsewhere
they skip, saying so. Every test runs with one thread (conftest.py), as the golden data was made.
"""

from __future__ import annotations

import functools
import json
import pathlib
import platform
import warnings

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from qsim_hooks import compat

from . import models

GOLDEN = pathlib.Path(__file__).parent / "golden"
MANIFEST = json.loads((GOLDEN / "manifest.json").read_text())
QUANT = torch.load(GOLDEN / "quantizers.pt", weights_only=True)
MODELS = torch.load(GOLDEN / "models.pt", weights_only=True)
CALIB = torch.load(GOLDEN / "calibration.pt", weights_only=True)
QUANTIZERS = {n: getattr(compat, n) for n in ("INT8", "INT4", "E4M3", "FP16", "BF16", "E1M2", "E2M1")}
ENV = MANIFEST["environment"]
SAME_ENV = ENV["torch"] == torch.__version__ and ENV["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
path_dependent = pytest.mark.skipif(
    not SAME_ENV, reason=f"golden data made with torch {ENV['torch']} on {ENV['cpu_capability']} (here "
                         f"{torch.__version__} on {torch.backends.cpu.get_cpu_capability()}): float32 log2/pow and "
                         "the model kernels depend on the code path; regenerate with tools/compat_golden")

#: the cases where compat deliberately differs, each asserted by a test below
DELIBERATE = {
    **{f"{q}-dyn-specials": "nan_inf_amax" for q in ("INT8", "INT4", "E1M2", "E2M1")},
    **{f"{q}-static-inf-randn": "nonfinite_static" for q in ("INT8", "INT4")},
    **{f"{q}-unsigned-negative": "error_type" for q in ("INT8", "INT4")},
    **{f"{q}-dyn-axis{a}-matrix": "channel_axis" for q in ("INT8", "INT4") for a in (0, 1)},
    **{f"{q}-{i}": "qtorch" for q in ("E4M3", "FP16") for i in ("specials", "edges", "wide")},
    "E4M3-randn_t": "qtorch",
    **{f"{q}-randn_f16": "qtorch_f16" for q in ("E4M3", "FP16")},
    **{f"{q}-dyn-randn_{d}": "dtype" for q in ("E1M2", "E2M1") for d in ("f16", "bf16")},
    **{f"BF16-randn_{d}": "dtype" for d in ("f16", "bf16")},
}


def assert_bits(ours: Tensor, old: Tensor, what: str) -> None:
    """Same dtype, shape and bit pattern (NaN matches NaN, the sign of zero counts)."""
    assert ours.dtype == old.dtype, f"{what}: dtype {ours.dtype}, the old tool's {old.dtype}"
    assert ours.shape == old.shape, f"{what}: shape {tuple(ours.shape)}, the old tool's {tuple(old.shape)}"
    view = {2: torch.int16, 4: torch.int32}[ours.element_size()]
    same = (ours.detach().view(view) == old.view(view)) | (ours.isnan() & old.isnan())
    if not bool(same.all()):
        bad = (~same).flatten().nonzero().flatten()[:4]
        raise AssertionError(f"{what}: {int((~same).sum())} of {same.numel()} differ, e.g. ours "
                             f"{ours.flatten()[bad].tolist()} old {old.flatten()[bad].tolist()}")


def _kwargs(kw: dict) -> dict:
    return {k: v["numpy"].numpy() if isinstance(v, dict) else v for k, v in kw.items()}


def _run(cid: str) -> tuple[Tensor, Tensor, Tensor]:
    case = QUANT["cases"][cid]
    x = QUANT["inputs"][case["input"]]
    return x, QUANTIZERS[case["quantizer"]](x.clone(), **_kwargs(case["kwargs"])), case["output"]


def _needs_env(cid: str) -> list:
    return [path_dependent] if cid.startswith(("E1M2", "E2M1")) else []


# ---------------------------------------------------------------------------
# quantizers
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("cid", [pytest.param(c, marks=_needs_env(c)) for c in QUANT["cases"] if c not in DELIBERATE])
def test_quantizer_is_bit_identical(cid: str) -> None:
    x, ours, old = _run(cid)
    assert old is not None, QUANT["cases"][cid]["error"]
    assert_bits(ours, old, cid)


def test_every_deliberate_difference_is_a_real_case_and_really_differs() -> None:
    assert set(DELIBERATE) <= set(QUANT["cases"])
    for cid in DELIBERATE:
        case = QUANT["cases"][cid]
        if DELIBERATE[cid] in ("nonfinite_static", "error_type", "qtorch_f16"):
            continue  # one of the two raises: asserted below
        _, ours, old = _run(cid)
        differs = ours.dtype != old.dtype or not torch.equal(ours.view(torch.uint8), old.view(torch.uint8))
        assert differs, f"{cid} ({case['quantizer']}) is listed as a deliberate difference but is identical"


@pytest.mark.parametrize("q", ["INT8", "INT4", pytest.param("E1M2", marks=path_dependent),
                               pytest.param("E2M1", marks=path_dependent)])
def test_dynamic_amax_ignores_nan_and_inf(q: str) -> None:
    # old: max|x| is NaN with one NaN in x (Inf: a zero scale, 0/0), so every element comes out NaN
    x, ours, old = _run(f"{q}-dyn-specials")
    assert bool(old.isnan().all())
    # compat: the amax of the finite values; NaN stays NaN, +-Inf saturates to +-amax
    finite = torch.isfinite(x)
    assert_bits(ours[finite], QUANT["cases"][f"{q}-dyn-specials_finite"]["output"], f"{q} finite part")
    assert bool(ours[x.isnan()].isnan().all())
    top = QUANTIZERS[q](torch.tensor([5.0, -5.0]), static_scale=x[finite].abs().max())
    assert ours[x == float("inf")].item() == top[0].item() and ours[x == -float("inf")].item() == top[1].item()


@pytest.mark.parametrize("q", ["INT8", "INT4"])
def test_static_scale_must_be_finite(q: str) -> None:
    old = QUANT["cases"][f"{q}-static-inf-randn"]["output"]  # the old tool: 127 / inf = 0, then 0 / 0
    assert bool(old.isnan().all())
    with pytest.raises(ValueError, match="static_scale must be finite"):
        QUANTIZERS[q](QUANT["inputs"]["randn"], static_scale=torch.tensor(float("inf")))


@pytest.mark.parametrize("q", ["INT8", "INT4"])
def test_unsigned_with_negative_input_is_a_value_error(q: str) -> None:
    assert QUANT["cases"][f"{q}-unsigned-negative"]["error"].startswith("TypeError: Negative values")
    with pytest.raises(ValueError, match="unsigned=True but x has negative values"):
        QUANTIZERS[q](QUANT["inputs"]["randn"], unsigned=True)


@pytest.mark.parametrize("q", ["INT8", "INT4"])
@pytest.mark.parametrize("axis", [0, 1])
def test_dynamic_per_channel_axis_is_one_amax_per_channel(q: str, axis: int) -> None:
    x, ours, old = _run(f"{q}-dyn-axis{axis}-matrix")
    # old: _tensor_max reduced *along* per_channel_axis (one amax per index of the other axis)
    assert_bits(old, QUANTIZERS[q](x, static_scale=x.abs().amax(dim=axis, keepdim=True)), "old layout")
    # compat: one amax per index of per_channel_axis, what the name says
    assert_bits(ours, QUANTIZERS[q](x, static_scale=x.abs().amax(dim=1 - axis, keepdim=True)), "compat")


@pytest.mark.parametrize("q", ["E4M3", "FP16"])
def test_qtorch_nan_signed_zero_and_subnormal_double_rounding(q: str) -> None:
    top = {"E4M3": 480.0, "FP16": 131008.0}[q]
    for cid in [c for c, k in DELIBERATE.items() if k == "qtorch" and c.startswith(q)]:
        inp = cid.split("-", 1)[1]
        x, ours, old = _run(cid)
        x, ours, old = x.flatten(), ours.flatten(), old.flatten()
        nan = x.isnan()
        # qtorch turns NaN into +max; compat keeps NaN
        assert bool((old[nan] == top).all()) and bool(ours[nan].isnan().all())
        # qtorch returns +0.0 where the result is a zero of a negative input; compat keeps -0.0
        zero = (ours == 0) & (old == 0) & torch.signbit(ours) & ~torch.signbit(old)
        assert bool((torch.signbit(x[zero])).all())
        # qtorch's subnormal double rounding (tests/formats/test_interop.py): E4M3 rounds
        # 2^-10 - 2^-34, just below half the smallest subnormal, up to 2^-9; compat rounds it to 0
        rest = ~(nan | zero)
        if q == "E4M3" and inp == "edges":
            tie = x == 2.0**-10 - 2.0**-34
            assert old[tie].item() == 2.0**-9 and ours[tie].item() == 0.0
            rest &= ~tie
        assert_bits(ours[rest], old[rest], f"{q}-{inp} apart from NaN, signed zero and double rounding")
        if inp == "specials":
            assert int(zero.sum()) == 1 and int(nan.sum()) == 1


@pytest.mark.parametrize("q", ["E4M3", "FP16"])
def test_qtorch_casts_take_float16_input(q: str) -> None:
    # qtorch's float_quantize raised for float16; compat rounds the exactly widened values
    assert QUANT["cases"][f"{q}-randn_f16"]["error"].startswith("RuntimeError: expected scalar type Float")
    x = QUANT["inputs"]["randn_f16"]
    ours = QUANTIZERS[q](x)
    assert ours.dtype == torch.float16
    assert_bits(ours, QUANTIZERS[q](x.float()).half(), f"{q} on float16")


@pytest.mark.parametrize("cid", [pytest.param(c, marks=_needs_env(c)) for c, k in DELIBERATE.items()
                                 if k == "dtype"])
def test_output_dtype_is_the_input_dtype(cid: str) -> None:
    x, ours, old = _run(cid)
    assert old.dtype == torch.float32 and ours.dtype == x.dtype  # the old tool returned float32
    assert_bits(ours, old.to(x.dtype), f"{cid}: the same values, rounded to the input dtype")


# ---------------------------------------------------------------------------
# gradients
# ---------------------------------------------------------------------------
def _grad(cid: str) -> tuple[Tensor, Tensor, Tensor]:
    case = QUANT["grads"][cid]
    x = QUANT["inputs"]["small"].clone().requires_grad_()
    QUANTIZERS[case["quantizer"]](x, **case["kwargs"]).backward(QUANT["grad_upstream"])
    return x.detach(), x.grad, case["grad"]


@pytest.mark.parametrize("cid", ["INT8-static-1", "INT4-dyn", "E4M3", "FP16", "BF16"])
def test_gradient_is_bit_identical(cid: str) -> None:
    _, ours, old = _grad(cid)
    assert_bits(ours, old, f"{cid} gradient")


@pytest.mark.parametrize("cid", ["E2M1-static-1", "E1M2-dyn"])
def test_scaled_fp_gradient_is_the_clipped_straight_through_estimator(cid: str) -> None:
    x, ours, old = _grad(cid)
    g = QUANT["grad_upstream"]
    amax = 1.0 if cid.startswith("E2M1") else x.abs().max().item()
    assert torch.equal(ours, torch.where(x.abs() <= amax + 1e-10, g, 0.0))
    # the old FPQuantFunction passed the gradient only where |x| was within its own step: mostly zero
    assert int((old != 0).sum()) < int((ours != 0).sum()) // 2
    assert bool((old[old != 0] == g[old != 0]).all())


# ---------------------------------------------------------------------------
# models
# ---------------------------------------------------------------------------
def _check_fingerprint(model: nn.Module, golden: Tensor) -> None:
    assert torch.equal(models.fingerprint(model), golden), \
        "the rebuilt model differs from the golden data's (torch / torchvision init changed?)"


def _plain_output(which: str) -> Tensor:
    with torch.no_grad():
        if which == "resnet18":
            return models.resnet18()(MODELS["resnet18"]["input"])
        if which == "encoder":
            return models.encoder()(MODELS["encoder"]["input"])
        b = MODELS["bert"]
        return models.bert()(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).last_hidden_state


@functools.cache
def _kernels_differ(which: str) -> bool:
    """Whether this machine computes the plain float32 model ``which`` (no quantization, no qsim_hooks) with other
    bits than the golden run did. The same torch and ATen CPU capability do not pin the kernels: oneDNN and the
    BLAS choose by microarchitecture too (an AMD EPYC with AVX512 rounds resnet18's convolutions differently
    from the machine the data was made on), and a quantized model's bits follow its float ones."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        golden = {"resnet18": MODELS["resnet18"]["fp32"], "encoder": MODELS["encoder"]["fp32/plain"],
                  "bert": MODELS["bert"]["fp32"]}[which]
        return not torch.equal(_plain_output(which), golden)
    finally:
        torch.set_num_threads(n)


def _require_same_kernels(*which: str) -> None:
    """Skip a model comparison where this machine's float32 kernels are not the golden run's (saying which)."""
    differ = [w for w in which if _kernels_differ(w)]
    if differ:
        pytest.skip(f"this machine computes {', '.join(differ)} in plain float32 with other bits than the golden "
                    f"run ({platform.processor() or platform.machine()}: its kernels differ), and the quantized "
                    "bits follow them; regenerate with tools/compat_golden to compare here")


def _quantized(model: nn.Module, cfg: str, **kw) -> nn.Module:
    qi, qw, qo = (QUANTIZERS[n] for n in cfg.split("/"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a mapping that finds nothing warns
        return compat.replace_layers(model, qi, qw, qo, **kw)


@path_dependent
@pytest.mark.usefixtures("eager_kernels")
def test_resnet18_logits_are_bit_identical() -> None:
    _require_same_kernels("resnet18")
    g = MODELS["resnet18"]
    net = models.resnet18()
    _check_fingerprint(net, g["fingerprint"])
    with torch.no_grad():
        assert_bits(net(g["input"]), g["fp32"], "resnet18 fp32 (same kernels as the golden run)")
        for cfg in ("E4M3/E4M3/FP16", "INT8/INT8/FP16", "E2M1/E2M1/FP16"):
            y = _quantized(net, cfg)(g["input"])
            compat.detach(net)
            assert_bits(y, g[cfg], f"resnet18 {cfg}")


def _encoder_output(cfg: str, call: str, **kw) -> Tensor:
    """The golden encoder's output under compat's replace_layers(cfg, **kw), for one of the recorded calls."""
    e = MODELS["encoder"]
    call_kw = {"plain": {}, "causal": {"mask": e["causal_mask"]},
               "padding": {"src_key_padding_mask": e["key_padding_mask"]}}[call]
    enc = models.encoder()
    _check_fingerprint(enc, e["fingerprint"])
    with torch.no_grad():
        assert_bits(enc(e["input"], **call_kw), e[f"fp32/{call}"], "encoder fp32")
        y = _quantized(enc, cfg, **kw)(e["input"], **call_kw)
    compat.detach(enc)
    return y


@path_dependent
@pytest.mark.usefixtures("eager_kernels")
@pytest.mark.parametrize("cfg", ["E4M3/E4M3/FP16", "INT8/INT8/FP16"])
def test_transformer_encoder_and_bert_linear_layers_are_bit_identical(cfg: str) -> None:
    _require_same_kernels("encoder", "bert")
    # mapping={nn.Linear: ...}: the old tool replaced the Linear layers only
    y = _encoder_output(cfg, "plain", mapping={nn.Linear: compat.layers.Linear})
    assert_bits(y, MODELS["encoder"][f"linear-only/{cfg}/plain"], f"encoder {cfg}")
    b = MODELS["bert"]
    net = models.bert()
    _check_fingerprint(net, b["fingerprint"])
    with torch.no_grad():
        assert_bits(net(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).last_hidden_state,
                    b["fp32"], "bert fp32")
        y = _quantized(net, cfg, mapping=[nn.Linear])(input_ids=b["input_ids"],
                                                     attention_mask=b["attention_mask"]).last_hidden_state
    compat.detach(net)
    assert_bits(y, b[f"linear-only/{cfg}"], f"bert {cfg}")


@path_dependent
@pytest.mark.usefixtures("eager_kernels")
@pytest.mark.parametrize("cfg", ["E4M3/E4M3/FP16", "INT8/INT8/FP16"])
@pytest.mark.parametrize("call", ["plain", "causal", "padding"])
def test_transformer_encoder_default_mapping_is_bit_identical(cfg: str, call: str) -> None:
    _require_same_kernels("encoder")
    # the old default mapping replaced nn.MultiheadAttention: in-projection input and result, q after the
    # 1/sqrt(E) scaling, the scores with the mask added by baddbmm, probs, v, context, out_proj as a Linear
    e = MODELS["encoder"]
    y = _encoder_output(cfg, call)
    assert_bits(y, e[f"default/{cfg}/{call}"], f"encoder {cfg} {call}")
    # the attention internals are what made the difference: the Linear-only run is far from it
    assert float((e[f"default/{cfg}/{call}"] - e[f"linear-only/{cfg}/plain" if call == "plain" else f"fp32/{call}"])
                 .abs().max()) > 1e-3


@path_dependent
@pytest.mark.usefixtures("eager_kernels")
@pytest.mark.parametrize("cfg", ["E4M3/E4M3/FP16", "INT8/INT8/FP16"])
def test_bert_default_mapping_is_bit_identical(cfg: str) -> None:
    _require_same_kernels("bert")
    # the old BertSelfAttention: q, k, probs, v input-quantized, the scores before the scale and the mask and
    # the context output-quantized, query / key / value rebuilt as quantized Linears
    b = MODELS["bert"]
    net = models.bert()
    _check_fingerprint(net, b["fingerprint"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing left out, nothing to warn about
        net = compat.replace_layers(net, *(QUANTIZERS[n] for n in cfg.split("/")))
    with torch.no_grad():
        y = net(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).last_hidden_state
    points = compat.session_of(net).points
    compat.detach(net)
    assert_bits(y, b[f"default/{cfg}"], f"bert {cfg}")
    assert {k[1] for k in points if k[0] == "encoder.layer.0.attention.self"} == {
        "q", "k", "scores", "probs", "v", "context"}
    assert float((b[f"default/{cfg}"] - b[f"linear-only/{cfg}"]).abs().max()) > 1e-4


# ---------------------------------------------------------------------------
# calibration
# ---------------------------------------------------------------------------
def _amax_attrs(model: nn.Module, attr: str) -> dict[str, Tensor]:
    return {n: torch.as_tensor(getattr(m, attr)) for n, m in model.named_modules() if hasattr(m, attr)}


def _assert_amax(model: nn.Module, attr: str, golden: dict[str, Tensor], what: str) -> None:
    ours = _amax_attrs(model, attr)
    assert set(ours) == set(golden), what
    for name, amax in golden.items():
        assert_bits(ours[name].float(), amax.float(), f"{what} {name}.{attr}")


@pytest.mark.parametrize("cid", sorted(CALIB["inputs"]))
def test_calibrate_inputs_amax_is_bit_identical(cid: str) -> None:
    case = CALIB["inputs"][cid]
    net = models.calib_net()
    _check_fingerprint(net, CALIB["fingerprint"])
    calib = compat.calibrate_inputs(net, dataloader=CALIB["batches"], **case["kwargs"])
    _assert_amax(net, "amax_input", case["amax"], cid)
    for name, amax in case["amax"].items():  # the Calibration holds the same values
        assert calib.amax(name, "input") == amax.item()


@pytest.mark.parametrize("cid", sorted(CALIB["weights"]))
def test_calibrate_weights_amax_is_bit_identical(cid: str) -> None:
    case = CALIB["weights"][cid]
    net = models.calib_net()
    calib = compat.calibrate_weights(net, **case["kwargs"])
    _assert_amax(net, "amax_weight", case["amax"], cid)
    assert all(isinstance(m.amax_weight, np.ndarray) for _, m in net.named_modules() if hasattr(m, "amax_weight"))
    for name, amax in case["amax"].items():
        got = calib.amax(name, "weight")
        assert np.array_equal(np.asarray(got, dtype=np.float32).reshape(-1), amax.numpy().reshape(-1))


@path_dependent
@pytest.mark.parametrize("key", sorted(CALIB["logits"]))
def test_calibrated_model_in_either_order_is_bit_identical(key: str) -> None:
    # the golden data has no plain CalibNet output: resnet18's plain bits stand for the convolution kernels
    _require_same_kernels("resnet18")
    order, qi, qw, qo, method = key.split("/")
    case = CALIB["logits"][key]
    net = models.calib_net()
    if order == "replace-then-calibrate":
        compat.replace_layers(net, QUANTIZERS[qi], QUANTIZERS[qw], QUANTIZERS[qo])
    compat.calibrate_inputs(net, 8, CALIB["batches"], num_samples=2, method=method)
    compat.calibrate_weights(net, 8, False, method="max", perchannel=True)
    if order == "calibrate-then-replace":
        compat.replace_layers(net, QUANTIZERS[qi], QUANTIZERS[qw], QUANTIZERS[qo])
    with torch.no_grad():
        y = net(CALIB["batches"][3])
    compat.detach(net)
    _assert_amax(net, "amax_input", case["amax_input"], key)
    _assert_amax(net, "amax_weight", case["amax_weight"], key)
    assert_bits(y, case["logits"], key)
