"""Run INT-FP-QSim itself and write its outputs as golden data for tests/compat.

Usage (the old tool is not installed in CI; this script is run by hand when the golden data must change)::

    tools/compat_golden/setup.sh                          # builds .venv-intfpqsim once
    .venv-intfpqsim/bin/python tools/compat_golden/make_golden.py

It imports the old tool (``int_fp_qsim``, patched copy in .venv-intfpqsim) and never qsim_hooks, and
writes into tests/compat/golden/:

* ``quantizers.pt`` - inputs, keyword arguments, outputs and gradients of every old quantizer;
* ``models.pt`` - logits of resnet18, a 2-layer nn.TransformerEncoder and a tiny BERT under
  ``replace_layers`` (random weights from recorded seeds; the models are rebuilt from the seeds in the tests,
  a fingerprint of their weights is stored to prove it);
* ``calibration.pt`` - ``calibrate_inputs`` / ``calibrate_weights`` amax (max, percentile, entropy, mse)
  and the logits of the calibrated model in both orders (calibrate then replace, replace then calibrate);
* ``manifest.json`` - what each entry holds, how it was made (call, seeds, shapes), and the environment.

Everything runs on the CPU with one thread (the old tool's E1M2/E2M1 use ``log2``/``pow``, whose last bit
depends on the vectorised code path, hence on the thread count and the ISA: both are recorded).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import pathlib
import platform
import sys
from typing import Any

import numpy as np
import torch
from torch import nn

try:
    import int_fp_qsim
    import int_fp_qsim.attention as qattn
    import pytorch_quantization
    from int_fp_qsim import formats as old
    from int_fp_qsim.replace import DEFAULT_MAPPING, replace_layers
    from int_fp_qsim.static_calib import calibrate_inputs, calibrate_weights
except ImportError as exc:  # pragma: no cover - a usage error
    sys.exit(f"make_golden.py needs the old tool: run tools/compat_golden/setup.sh, then "
             f".venv-intfpqsim/bin/python {sys.argv[0]} ({exc})")

ROOT = pathlib.Path(__file__).resolve().parents[2]
OUT = ROOT / "tests" / "compat" / "golden"
sys.path.insert(0, str(ROOT))
from tests.compat.models import bert as _bert  # noqa: E402  (plain torch models, shared with the tests)
from tests.compat.models import calib_net as _calib_net  # noqa: E402
from tests.compat.models import encoder as _encoder  # noqa: E402
from tests.compat.models import fingerprint  # noqa: E402
from tests.compat.models import resnet18 as _resnet18  # noqa: E402

assert "qsim_hooks" not in sys.modules, "the oracle must not import qsim_hooks"

torch.set_num_threads(1)
QUANTIZERS = {"INT8": old.INT8, "INT4": old.INT4, "E4M3": old.E4M3, "FP16": old.FP16, "BF16": old.BF16,
              "E1M2": old.E1M2, "E2M1": old.E2M1}
LINEAR_ONLY = {nn.Linear: int_fp_qsim.layers.Linear}  # a mapping without the attention classes


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------------------
# quantizers
# ---------------------------------------------------------------------------
def _inputs() -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    g = _gen(1)
    specials = torch.tensor([0.0, -0.0, 1.0, -1.0, 0.3, -2.7, float("nan"), float("inf"), -float("inf"), 5.0])
    finite_edges = torch.cat([
        torch.arange(-8, 8) + 0.5,  # ties of a unit grid (INT4 with amax 7)
        torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, -0.25, -5.0]),  # ties of the E2M1 grid
        torch.tensor([0.0, -0.0, 7.0, 7.0000005, 6.9999995, -7.0, 448.0, 464.0, 480.0, 500.0, 65504.0, 65520.0,
                      131008.0, 2.0**-6, 2.0**-9, 2.0**-10, 2.0**-10 - 2.0**-34, 2.0**-14, 2.0**-24, 2.0**-25,
                      3 * 2.0**-26, 1e-30, 1e-38, 3e38, -3e38, 1e-5, -1e-5]),
    ])
    x = {
        "randn": torch.randn(2000, generator=g) * 2.5,
        "wide": torch.sign(torch.randn(2000, generator=g)) * 2.0 ** (torch.rand(2000, generator=g) * 42 - 30),
        "positive": torch.randn(2000, generator=g).relu() * 3.0,
        "weight": torch.randn(8, 4, 3, 3, generator=g) * 0.2,
        "matrix": torch.randn(64, 48, generator=g),
        "n101": torch.randn(101, generator=g),
        "edges": finite_edges,
        "specials": specials,
        "small": torch.randn(256, generator=g) * 1.5,  # gradients
    }
    x["specials_finite"] = specials[torch.isfinite(specials)]
    x["weight_zero_channel"] = x["weight"].clone()
    x["weight_zero_channel"][3] = 0.0
    x["randn_f16"] = x["randn"][:1000].half()
    x["randn_bf16"] = x["randn"][:1000].bfloat16()
    x["randn_t"] = x["matrix"].t()  # a non-contiguous input
    desc = {
        "randn": "torch.randn(2000, generator=manual_seed(1)) * 2.5",
        "wide": "sign(randn) * 2**uniform(-30, 12), 2000 values",
        "positive": "relu(randn(2000)) * 3",
        "weight": "randn(8, 4, 3, 3) * 0.2 (a conv weight)",
        "matrix": "randn(64, 48)",
        "n101": "randn(101) (percentile 99 lands on an integer index)",
        "edges": "ties of the INT4 and E2M1 grids, format maxima, subnormals, float32 extremes",
        "specials": "0, -0, NaN, +Inf, -Inf and finite values",
        "specials_finite": "the finite values of specials",
        "small": "randn(256) * 1.5, for gradients",
        "weight_zero_channel": "weight with channel 3 all zero",
        "randn_f16": "randn[:1000] as float16",
        "randn_bf16": "randn[:1000] as bfloat16",
        "randn_t": "matrix.t() (non-contiguous)",
    }
    return x, desc


def _quantizer_cases(x: dict[str, torch.Tensor]) -> list[tuple[str, str, str, dict[str, Any]]]:
    """(case id, quantizer, input, kwargs) for every case."""
    t = lambda v: torch.tensor(v, dtype=torch.float32)  # the old tool takes tensors, not Python floats
    w_amax = x["weight"].abs().amax(dim=(1, 2, 3), keepdim=True)
    cases: list[tuple[str, str, str, dict[str, Any]]] = []
    for q in ("INT8", "INT4"):
        for inp in ("randn", "wide", "edges", "randn_f16", "randn_bf16", "randn_t", "weight"):
            cases.append((f"{q}-dyn-{inp}", q, inp, {}))
        for s in (1.0, 2.5, 0.37, 7.0, 100.0, 2.0**-24, 1.5 * 2.0**-24, 3e-8):
            cases.append((f"{q}-static-{s:g}-randn", q, "randn", {"static_scale": t(s)}))
        cases.append((f"{q}-static-7-edges", q, "edges", {"static_scale": t(7.0)}))
        cases.append((f"{q}-static-list-randn", q, "randn", {"static_scale": [1.5]}))
        cases.append((f"{q}-static-channel-weight", q, "weight", {"static_scale": w_amax * 0.8}))
        zero = w_amax.clone()
        zero[3] = 0.0
        cases.append((f"{q}-static-channel-zero-weight", q, "weight_zero_channel", {"static_scale": zero}))
        cases.append((f"{q}-static-numpy-weight", q, "weight", {"static_scale": (w_amax * 0.6).numpy()}))
        for p in (99.0, 99.99, 50.0, 100.0):
            cases.append((f"{q}-pct{p:g}-randn", q, "randn", {"calibration": "percentile", "percentile": p}))
        cases.append((f"{q}-pct99-n101", q, "n101", {"calibration": "percentile", "percentile": 99.0}))
        cases.append((f"{q}-pct99-f16", q, "randn_f16", {"calibration": "percentile", "percentile": 99.0}))
        cases.append((f"{q}-unsigned-dyn", q, "positive", {"unsigned": True}))
        cases.append((f"{q}-unsigned-static", q, "positive", {"unsigned": True, "static_scale": t(2.0)}))
        for axis in (0, 1):
            cases.append((f"{q}-dyn-axis{axis}-matrix", q, "matrix", {"per_channel_axis": axis}))
        cases.append((f"{q}-dyn-specials", q, "specials", {}))
        cases.append((f"{q}-dyn-specials_finite", q, "specials_finite", {}))
        cases.append((f"{q}-static-specials", q, "specials", {"static_scale": t(2.0)}))
        cases.append((f"{q}-static-inf-randn", q, "randn", {"static_scale": t(float("inf"))}))
        cases.append((f"{q}-unsigned-negative", q, "randn", {"unsigned": True}))
    for q in ("E4M3", "FP16", "BF16"):
        for inp in ("randn", "wide", "edges", "specials", "randn_t", "weight"):
            cases.append((f"{q}-{inp}", q, inp, {}))
    for q in ("E4M3", "FP16", "BF16"):
        cases.append((f"{q}-randn_f16", q, "randn_f16", {}))
    cases.append(("BF16-randn_bf16", "BF16", "randn_bf16", {}))
    for q in ("E1M2", "E2M1"):
        for inp in ("randn", "wide", "edges", "randn_f16", "randn_bf16", "randn_t", "weight", "specials"):
            cases.append((f"{q}-dyn-{inp}", q, inp, {}))
        for s in (0.5, 6.0, 3.5, 1e-3, 1e-9, 100.0):
            cases.append((f"{q}-static-{s:g}-randn", q, "randn", {"static_scale": t(s)}))
        cases.append((f"{q}-static-6-edges", q, "edges", {"static_scale": t(6.0)}))
        cases.append((f"{q}-static-channel-weight", q, "weight", {"static_scale": w_amax * 0.8}))
        cases.append((f"{q}-static-1d-axis0-weight", q, "weight", {"static_scale": w_amax.flatten() * 0.5}))
        a48 = x["matrix"].abs().amax(dim=0) * 0.7
        cases.append((f"{q}-static-1d-axis1-matrix", q, "matrix", {"static_scale": a48, "per_channel_axis": 1}))
        cases.append((f"{q}-static-numpy-weight", q, "weight", {"static_scale": (w_amax * 0.6).numpy()}))
        for p in (99.0, 50.0):
            cases.append((f"{q}-pct{p:g}-randn", q, "randn", {"calibration": "percentile", "percentile": p}))
        cases.append((f"{q}-dyn-axis1-matrix", q, "matrix", {"per_channel_axis": 1}))
        cases.append((f"{q}-static-specials", q, "specials", {"static_scale": t(2.0)}))
        cases.append((f"{q}-dyn-specials_finite", q, "specials_finite", {}))
    return cases


def _grad_cases() -> list[tuple[str, str, dict[str, Any]]]:
    t = lambda v: torch.tensor(v, dtype=torch.float32)
    return [("INT8-static-1", "INT8", {"static_scale": t(1.0)}), ("INT4-dyn", "INT4", {}),
            ("E4M3", "E4M3", {}), ("FP16", "FP16", {}), ("BF16", "BF16", {}),
            ("E2M1-static-1", "E2M1", {"static_scale": t(1.0)}), ("E1M2-dyn", "E1M2", {})]


def _storable(kw: dict[str, Any]) -> dict[str, Any]:
    """numpy arrays as {"numpy": tensor} (torch.load(weights_only=True) takes tensors, not arrays)."""
    return {k: {"numpy": torch.from_numpy(v)} if isinstance(v, np.ndarray) else v for k, v in kw.items()}


def _plain(v: Any) -> Any:
    """A JSON description of a keyword argument."""
    if isinstance(v, torch.Tensor):
        return {"tensor": list(v.shape), "dtype": str(v.dtype)} if v.dim() else {"tensor": [], "value": v.item()}
    if isinstance(v, np.ndarray):
        return {"numpy": list(v.shape), "dtype": str(v.dtype)}
    return v


def make_quantizers() -> tuple[dict[str, Any], dict[str, Any]]:
    x, desc = _inputs()
    data: dict[str, Any] = {"inputs": x, "cases": {}, "grads": {}}
    manifest: dict[str, Any] = {"inputs": desc, "cases": {}, "grads": {}}
    for cid, qname, inp, kw in _quantizer_cases(x):
        xin = x[inp].clone()
        try:
            y = QUANTIZERS[qname](xin, **kw)
            err = None
        except Exception as exc:  # what the old tool raised is golden data too
            y, err = None, f"{type(exc).__name__}: {exc}"
        data["cases"][cid] = {"quantizer": qname, "input": inp, "kwargs": _storable(kw), "output": y, "error": err}
        manifest["cases"][cid] = {"quantizer": qname, "input": inp, "kwargs": {k: _plain(v) for k, v in kw.items()},
                                  "output": None if y is None else {"shape": list(y.shape), "dtype": str(y.dtype)},
                                  "error": err}
    g = _gen(2)
    upstream = torch.randn(256, generator=g)
    data["grad_upstream"] = upstream
    for cid, qname, kw in _grad_cases():
        xg = x["small"].clone().requires_grad_()
        QUANTIZERS[qname](xg, **kw).backward(upstream)
        data["grads"][cid] = {"quantizer": qname, "kwargs": kw, "grad": xg.grad.clone()}
        manifest["grads"][cid] = {"quantizer": qname, "kwargs": {k: _plain(v) for k, v in kw.items()},
                                  "how": "x = inputs['small'].requires_grad_(); q(x, **kwargs).backward(grad_upstream)"}
    return data, manifest


# ---------------------------------------------------------------------------
# models
# ---------------------------------------------------------------------------
def _adapt_bert_attention(model: nn.Module) -> int:
    """Let the old BertSelfAttention.forward take transformers 5's call and give its two return values."""
    n = 0
    for m in model.modules():
        if isinstance(m, qattn.BertSelfAttention):
            old_forward = m.forward

            def forward(hidden_states, attention_mask=None, cache=None, _f=old_forward, **kwargs):
                if attention_mask is not None and attention_mask.dtype == torch.bool:
                    attention_mask = torch.zeros(attention_mask.shape, dtype=hidden_states.dtype).masked_fill(
                        ~attention_mask, torch.finfo(hidden_states.dtype).min)
                return _f(hidden_states, attention_mask=attention_mask)[0], None

            m.forward = forward
            n += 1
    return n


QCONFIGS = {"E4M3/E4M3/FP16": ("E4M3", "E4M3", "FP16"), "INT8/INT8/FP16": ("INT8", "INT8", "FP16"),
            "E2M1/E2M1/FP16": ("E2M1", "E2M1", "FP16")}


def _replaced(build, cfg: str, mapping: Any = None) -> nn.Module:
    model = build()
    qi, qw, qo = (QUANTIZERS[n] for n in QCONFIGS[cfg])
    model = replace_layers(model, qi, qw, qo, mapping=mapping)
    return model.eval()


def make_models() -> tuple[dict[str, Any], dict[str, Any]]:
    data: dict[str, Any] = {}
    man: dict[str, Any] = {}
    # resnet18: random weights, batch 2 at 64x64
    x = torch.randn(2, 3, 64, 64, generator=_gen(3))
    net = _resnet18()
    entry = {"input": x, "fingerprint": fingerprint(net)}
    with torch.no_grad():
        entry["fp32"] = net(x)
        for cfg in QCONFIGS:
            entry[cfg] = _replaced(_resnet18, cfg)(x)
    data["resnet18"] = entry
    man["resnet18"] = {"model": "torch.manual_seed(0); torchvision.models.resnet18().eval() (random weights)",
                       "input": "torch.randn(2, 3, 64, 64, generator=manual_seed(3))",
                       "outputs": ["fp32"] + list(QCONFIGS),
                       "how": "replace_layers(model, qi, qw, qo) with the default mapping; logits under no_grad"}

    # 2-layer TransformerEncoder (sequence first: the old MultiheadAttention runs, no fast path)
    src = torch.randn(5, 2, 16, generator=_gen(4))
    causal = nn.Transformer.generate_square_subsequent_mask(5)
    pad = torch.tensor([[False] * 5, [False, False, False, True, True]])
    enc = _encoder()
    entry = {"input": src, "causal_mask": causal, "key_padding_mask": pad,
             "fingerprint": fingerprint(enc)}
    calls = {"plain": {}, "causal": {"mask": causal}, "padding": {"src_key_padding_mask": pad}}
    with torch.no_grad():
        for call, kw in calls.items():
            entry[f"fp32/{call}"] = enc(src, **kw)
        for cfg in ("E4M3/E4M3/FP16", "INT8/INT8/FP16"):
            for call, kw in calls.items():
                entry[f"default/{cfg}/{call}"] = _replaced(_encoder, cfg)(src, **kw)
            entry[f"linear-only/{cfg}/plain"] = _replaced(_encoder, cfg, LINEAR_ONLY)(src)
    data["encoder"] = entry
    man["encoder"] = {
        "model": "torch.manual_seed(0); nn.TransformerEncoder(nn.TransformerEncoderLayer(d_model=16, nhead=2, "
                 "dim_feedforward=32, dropout=0.0), num_layers=2, enable_nested_tensor=False).eval()",
        "input": "torch.randn(5, 2, 16, generator=manual_seed(4)) (seq, batch, feature)",
        "calls": {"plain": "model(src)", "causal": "model(src, mask=generate_square_subsequent_mask(5))",
                  "padding": "model(src, src_key_padding_mask=[[F]*5, [F, F, F, T, T]])"},
        "outputs": sorted(k for k in entry if "/" in k),
        "attention": "default/* replace nn.MultiheadAttention (the old default mapping): attention parity data; "
                     "linear-only/* use mapping={nn.Linear: int_fp_qsim.layers.Linear} (out_proj, a "
                     "NonDynamicallyQuantizableLinear, is not replaced then)"}

    # tiny BERT (eager attention), the old BertSelfAttention behind an adapter for transformers 5
    ids = torch.randint(0, 99, (2, 7), generator=_gen(5))
    mask = torch.tensor([[1] * 7, [1] * 5 + [0] * 2])
    bert = _bert()
    entry = {"input_ids": ids, "attention_mask": mask, "fingerprint": fingerprint(bert)}
    with torch.no_grad():
        entry["fp32"] = bert(input_ids=ids, attention_mask=mask).last_hidden_state
        for cfg in ("E4M3/E4M3/FP16", "INT8/INT8/FP16"):
            m = _replaced(_bert, cfg)
            adapted = _adapt_bert_attention(m)
            assert adapted == 2, adapted
            entry[f"default/{cfg}"] = m(input_ids=ids, attention_mask=mask).last_hidden_state
            m = _replaced(_bert, cfg, LINEAR_ONLY)
            entry[f"linear-only/{cfg}"] = m(input_ids=ids, attention_mask=mask).last_hidden_state
    data["bert"] = entry
    man["bert"] = {
        "model": "torch.manual_seed(0); BertModel(BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, "
                 "num_attention_heads=2, intermediate_size=37, max_position_embeddings=64, "
                 "attn_implementation='eager')).eval()",
        "input": "input_ids = torch.randint(0, 99, (2, 7), generator=manual_seed(5)); attention_mask "
                 "[[1]*7, [1]*5 + [0]*2]; outputs are last_hidden_state",
        "outputs": ["fp32"] + sorted(k for k in entry if "/" in k),
        "attention": "default/* replace BertSelfAttention (old default mapping) behind an adapter: transformers 5 "
                     "calls self.self(hidden_states, attention_mask=..., cache=...) and unpacks two values; the "
                     "adapter calls the old forward(hidden_states, attention_mask=mask) and returns (context, None) "
                     "(a bool mask would be made additive with finfo.min; transformers passed "
                     f"{_bert_mask_kind()}). linear-only/* use mapping={{nn.Linear: ...}}"}
    return data, man


def _bert_mask_kind() -> str:
    seen = []
    bert = _bert()
    hook = bert.encoder.layer[0].attention.self.register_forward_pre_hook(
        lambda m, a, kw: seen.append(kw.get("attention_mask")), with_kwargs=True)
    with torch.no_grad():
        bert(input_ids=torch.zeros(2, 7, dtype=torch.long), attention_mask=torch.tensor([[1] * 7, [1] * 5 + [0] * 2]))
    hook.remove()
    m = seen[0]
    return "None" if m is None else f"a {m.dtype} mask of shape {list(m.shape)}"


# ---------------------------------------------------------------------------
# calibration
# ---------------------------------------------------------------------------
@contextlib.contextmanager
def _cuda_is_a_noop():
    """TensorRT's mse calibration calls .cuda(); on a CPU-only machine make it the identity."""
    saved = torch.Tensor.cuda
    torch.Tensor.cuda = lambda self, *a, **k: self
    try:
        yield
    finally:
        torch.Tensor.cuda = saved


def _quiet(fn, *args, **kwargs):
    with contextlib.redirect_stdout(None), _cuda_is_a_noop():
        return fn(*args, **kwargs)


def _amax_of(model: nn.Module, attr: str) -> dict[str, torch.Tensor]:
    out = {}
    for name, m in model.named_modules():
        v = getattr(m, attr, None)
        if v is not None:
            out[name] = torch.as_tensor(v).clone()
    return out


def make_calibration() -> tuple[dict[str, Any], dict[str, Any]]:
    g = _gen(6)
    batches = [torch.randn(2, 3, 8, 8, generator=g) for _ in range(4)]
    batches[2] = batches[2] * 3.0  # a later batch with a larger range: TensorRT's histogram grows
    data: dict[str, Any] = {"batches": batches, "inputs": {}, "weights": {}, "logits": {}}
    man: dict[str, Any] = {"batches": "4 x torch.randn(2, 3, 8, 8, generator=manual_seed(6)), batch 2 times 3",
                           "model": "tests/compat/models.py calib_net(): torch.manual_seed(0); CalibNet().eval() "
                                    "(conv, convt, conv1d, fc)", "inputs": {}, "weights": {}, "logits": {}}
    net = _calib_net()
    data["fingerprint"] = fingerprint(net)
    input_cases = {"max-8": dict(num_bits=8, method="max"),
                   "percentile-8": dict(num_bits=8, method="percentile"),
                   "percentile99-8": dict(num_bits=8, method="percentile", percentile=99.0),
                   "entropy-8": dict(num_bits=8, method="entropy"),
                   "mse-8": dict(num_bits=8, method="mse"),
                   "mse-4": dict(num_bits=4, method="mse"),
                   "entropy-4-unsigned": dict(num_bits=4, method="entropy", unsigned=True),
                   "max-8-3samples": dict(num_bits=8, method="max", num_samples=3)}
    for cid, kw in input_cases.items():
        m = _calib_net()
        kw = {"num_samples": 4, **kw}
        _quiet(calibrate_inputs, m, dataloader=batches, **kw)
        data["inputs"][cid] = {"kwargs": kw, "amax": _amax_of(m, "amax_input")}
        man["inputs"][cid] = f"calibrate_inputs(model, dataloader=batches, **{kw})"
    weight_cases = {f"{method}-{bits}-{'channel' if pc else 'tensor'}": dict(num_bits=bits, unsigned=False,
                                                                             method=method, perchannel=pc)
                    for method in ("max", "percentile", "mse") for bits in (8, 4) for pc in (False, True)}
    weight_cases["percentile99-8-channel-bins256"] = dict(num_bits=8, unsigned=False, method="percentile",
                                                          perchannel=True, percentile=99.0, num_bins=256)
    for cid, kw in weight_cases.items():
        m = _calib_net()
        _quiet(calibrate_weights, m, **kw)
        data["weights"][cid] = {"kwargs": kw, "amax": _amax_of(m, "amax_weight")}
        man["weights"][cid] = f"calibrate_weights(model, **{kw})"
    # the calibrated models' logits, in the old README's order and in the replace-first order
    x = batches[3]
    for order in ("calibrate-then-replace", "replace-then-calibrate"):
        for qw, method in (("INT8", "percentile"), ("INT4", "max"), ("E2M1", "max")):
            m = _calib_net()
            if order == "replace-then-calibrate":
                m = replace_layers(m, old.INT8, QUANTIZERS[qw], old.FP16)
            _quiet(calibrate_inputs, m, 8, batches, num_samples=2, method=method)
            _quiet(calibrate_weights, m, 8, False, method="max", perchannel=True)
            if order == "calibrate-then-replace":
                m = replace_layers(m, old.INT8, QUANTIZERS[qw], old.FP16)
            with torch.no_grad():
                y = m(x)
            key = f"{order}/INT8/{qw}/FP16/{method}"
            data["logits"][key] = {"logits": y, "amax_input": _amax_of(m, "amax_input"),
                                   "amax_weight": _amax_of(m, "amax_weight")}
            man["logits"][key] = (f"{order}: calibrate_inputs(model, 8, batches, num_samples=2, method={method!r}); "
                                  "calibrate_weights(model, 8, False, method='max', perchannel=True); "
                                  f"replace_layers(model, INT8, {qw}, FP16); logits of model(batches[3])")
    return data, man


# ---------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=pathlib.Path, default=OUT, help=f"output folder (default {OUT})")
    out = parser.parse_args().out
    out.mkdir(parents=True, exist_ok=True)
    manifest: dict[str, Any] = {
        "generator": "tools/compat_golden/make_golden.py (run under .venv-intfpqsim)",
        "old_tool": "lightmatter-ai/INT-FP-QSim at commit 79a6530, with the three import patches of "
                    "tools/compat_golden/setup.sh; pytorch-quantization " + pytorch_quantization.__version__,
        "environment": {"torch": torch.__version__, "numpy": np.__version__, "python": platform.python_version(),
                        "cpu_capability": torch.backends.cpu.get_cpu_capability(), "threads": 1,
                        "machine": platform.machine()},
        "default_mapping": sorted(f"{t.__module__}.{t.__qualname__}" for t in DEFAULT_MAPPING),
        "files": {},
    }
    for fname, make in (("quantizers.pt", make_quantizers), ("models.pt", make_models),
                        ("calibration.pt", make_calibration)):
        data, man = make()
        torch.save(data, out / fname)
        manifest["files"][fname] = man
        print(f"wrote {fname}: {(out / fname).stat().st_size / 1024:.0f} KiB")
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1, default=str) + "\n")
    total = sum(p.stat().st_size for p in out.iterdir())
    print(f"golden data: {total / 1024:.0f} KiB in {out}")
    assert total < 2 * 1024 * 1024, "golden data must stay under 2 MB"


if __name__ == "__main__":
    main()
