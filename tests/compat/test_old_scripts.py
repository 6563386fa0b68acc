"""INT-FP-QSim's README snippets and its examples' call sequences, with only the imports changed.

Each test is the old code (int-fp-qsim/README.md, int_fp_qsim/README.md, examples/*/eval_*.py) on a tiny
random model, ``int_fp_qsim.<module>`` imports replaced by ``qsim_hooks.compat``; the only other edits are
the ones a CPU machine needs (``.cuda()`` dropped) and smaller models. Each checks that the script's model
is quantized (the old layer computation by hand, or a changed output) and that detaching restores it.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from qsim_hooks import compat

from ..core.model_check import snapshot, verify_unchanged

pytestmark = pytest.mark.usefixtures("eager_kernels")  # no first-use compilation of the fused kernels


def _resnet():
    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=10)


def test_readme_quickstart():
    from qsim_hooks.compat import BF16, E4M3, replace_layers

    model = torchvision.models.resnet18(num_classes=10)
    snap = snapshot(model)
    # Quantize inputs and weights to E4M3 and outputs in BF16
    replace_layers(model, input_quantizer=E4M3, weight_quantizer=E4M3, output_quantizer=BF16)
    assert "ParametrizedConv2d" in repr(model)  # print(model) shows what is instrumented

    inputs = torch.randn(1, 3, 64, 64)
    model.eval()
    with torch.no_grad():
        y = model(inputs)
        conv = model.conv1
        first = BF16(F.conv2d(E4M3(inputs), E4M3(conv.parametrizations.weight.original), None, 2, 3))
        assert torch.equal(conv(inputs), first)
    compat.detach(model)
    model.train()
    verify_unchanged(model, snap)
    with torch.no_grad():
        assert not torch.equal(model.eval()(inputs), y)


def test_readme_custom_qtorch_format(qtorch):
    from qsim_hooks.compat import replace_layers

    format_e3m4 = qtorch.FloatingPoint(exp=3, man=4)
    format_e5m2 = qtorch.FloatingPoint(exp=5, man=2)
    # A custom FP format that uses E3M4 in forward pass and E5M2 in backward
    quant_func = qtorch.quantizer(forward_number=format_e3m4, forward_rounding="nearest",
                                  backward_number=format_e5m2, backward_rounding="nearest")
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3))
    replace_layers(model, input_quantizer=quant_func, weight_quantizer=quant_func, output_quantizer=quant_func)
    x = torch.randn(4, 8)
    y = model(x)
    w0 = model[0].parametrizations.weight.original
    w2 = model[2].parametrizations.weight.original
    h = quant_func(F.linear(quant_func(x), quant_func(w0), model[0].bias)).relu()
    assert torch.equal(y, quant_func(F.linear(quant_func(h), quant_func(w2), model[2].bias)))
    y.sum().backward()  # E5M2 gradients
    assert w0.grad is not None and bool(torch.isfinite(w0.grad).all())
    compat.detach(model)


def test_readme_static_quantization():
    from qsim_hooks.compat import FP16, INT4, INT8, calibrate_inputs, calibrate_weights, replace_layers

    def do_static_calibration(model, dataloader, num_bits, method, percentile, num_samples=5):
        # [OPTIONAL] Function that tells the model how to process the inputs.
        def batch_process_func(model, inputs):
            model(inputs[0])  # the README: inputs[0].cuda()

        calibrate_inputs(model, num_bits, dataloader, method=method, batch_process_func=batch_process_func,
                         percentile=percentile, num_samples=num_samples)
        calibrate_weights(model, num_bits, False, method="max", perchannel=True)

    model = _resnet().eval()
    g = torch.Generator().manual_seed(1)
    train_loader = [(torch.randn(2, 3, 32, 32, generator=g), torch.tensor([0, 1])) for _ in range(3)]
    do_static_calibration(model, train_loader, num_bits=8, method="percentile", percentile=99.99, num_samples=1)
    replace_layers(model, input_quantizer=INT8, weight_quantizer=INT4, output_quantizer=FP16)
    # the scales are attached as amax_input and amax_weight, and the layers use them
    points = compat.session_of(model).points
    assert float(points[("conv1", "input", "input")].amax) == float(model.conv1.amax_input)
    assert torch.equal(points[("fc", "weight", "weight")].amax, torch.as_tensor(model.fc.amax_weight))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        w = model.conv1.parametrizations.weight.original
        ref = FP16(F.conv2d(INT8(x, static_scale=model.conv1.amax_input),
                            INT4(w, static_scale=model.conv1.amax_weight), None, 2, 3))
        assert torch.equal(model.conv1(x), ref)
        model(x)
    compat.detach(model)


def test_readme_quantization_aware_training():
    from qsim_hooks.compat import FP16, INT8, replace_layers

    model = _resnet()
    ids = {n: id(p) for n, p in model.named_parameters()}
    replace_layers(model, input_quantizer=INT8, weight_quantizer=INT8, output_quantizer=FP16)
    # Proceed with training...
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x, target = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    before = model.fc.parametrizations.weight.original.detach().clone()
    for _ in range(2):
        opt.zero_grad()
        F.cross_entropy(model(x), target).backward()
        opt.step()
    assert not torch.equal(model.fc.parametrizations.weight.original, before)
    compat.detach(model)
    assert {n: id(p) for n, p in model.named_parameters()} == ids  # the optimizer's Parameters, trained


def test_examples_fp8_eval_call_sequence():
    # CodeGen, Graphormer, Maskformer, OPT: quantize_model(model) ignores the return value, then
    # model.eval(), print(model) and Maskformer's parameter count
    from qsim_hooks.compat import E4M3, FP16, replace_layers

    def quantize_model(model):
        replace_layers(model, input_quantizer=E4M3, weight_quantizer=E4M3, output_quantizer=FP16)
        return model

    def count(model):
        layers_req_grad = tot_layers = params_req_grad = tot_params = 0
        for param in model.named_parameters():
            if param[1].requires_grad:
                layers_req_grad += 1
                params_req_grad += param[1].nelement()
            tot_layers += 1
            tot_params += param[1].nelement()
        return layers_req_grad, tot_layers, params_req_grad, tot_params

    model = _resnet()
    counts = count(model)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        plain = model.eval()(x)
    model = quantize_model(model)
    repr(model)
    model = model.eval()
    assert count(model) == counts
    with torch.no_grad():
        assert not torch.equal(model(x), plain)
    compat.detach(model)


def test_stable_diffusion_example_call_sequence():
    # eval_stablediff.py: replace_layers on each part of the pipeline, printing each
    from qsim_hooks.compat import E4M3, FP16, replace_layers

    torch.manual_seed(0)
    sd_pipeline = {"vae": nn.Sequential(nn.Conv2d(3, 4, 3), nn.ConvTranspose2d(4, 3, 3)),
                   "text_encoder": nn.Sequential(nn.Embedding(10, 8), nn.Linear(8, 8)),
                   "unet": nn.Sequential(nn.Conv2d(3, 3, 1), nn.SiLU(), nn.Conv2d(3, 3, 1)),
                   "safety_checker": nn.Sequential(nn.Linear(8, 2))}
    snaps = {k: snapshot(m) for k, m in sd_pipeline.items()}
    for part in ["vae", "text_encoder", "unet", "safety_checker"]:
        module = sd_pipeline[part]
        if not hasattr(module, "named_modules"):
            raise ValueError(f"{part} does not have torch modules")
        replace_layers(module, input_quantizer=E4M3, weight_quantizer=E4M3, output_quantizer=FP16)
        repr(module)
    assert all(compat.session_of(m) is not None for m in sd_pipeline.values())
    with torch.no_grad():
        sd_pipeline["vae"](torch.randn(1, 3, 8, 8))
        sd_pipeline["text_encoder"](torch.tensor([[1, 2]]))
    for k, m in sd_pipeline.items():
        compat.detach(m)
        verify_unchanged(m, snaps[k])


def test_imagebind_example_mapping():
    # eval_imagebind.py extends a deep copy of the default mapping with its own MultiheadAttention subclass
    import qsim_hooks.compat.attention as qattn
    import qsim_hooks.compat.layers as qnn
    from qsim_hooks.compat import DEFAULT_MAPPING, E4M3, FP16, replace_layers

    class IbMultiheadAttention(nn.MultiheadAttention):  # stands for ImageBind's models.transformer class
        pass

    torch.manual_seed(0)
    model = nn.ModuleDict({"attn": IbMultiheadAttention(8, 2), "head": nn.Linear(8, 4)})

    def quantize_model(model):
        mapping = copy.deepcopy(DEFAULT_MAPPING)
        additional_layers = {
            IbMultiheadAttention: qattn.ImageBindMha,
            torch.nn.modules.linear.NonDynamicallyQuantizableLinear: qnn.Linear,
        }
        mapping.update(additional_layers)
        replace_layers(model, input_quantizer=E4M3, weight_quantizer=E4M3, output_quantizer=FP16, mapping=mapping)
        return model

    quantize_model(model)
    points = compat.session_of(model).points
    # ImageBindMha replaced the attention (its in-projection weight and its out_proj, a quantized Linear)
    assert {k[0] for k in points} == {"attn", "attn.out_proj", "head"}
    x = torch.randn(3, 1, 8)
    with torch.no_grad():
        model["head"](model["attn"](x, x, x, need_weights=False)[0])
    compat.detach(model)


def test_opt_example_static_calibration_sequence():
    # eval_opt.py's do_static_calibration with its batch_process_func(model, inputs) -> model(**inputs)
    from transformers import OPTConfig, OPTForCausalLM

    from qsim_hooks.compat import FP16, INT4, INT8, calibrate_inputs, calibrate_weights, replace_layers

    def batch_process_func(model, inputs):
        ip = {k: v for k, v in inputs.items()}  # eval_opt.py: v.cuda()
        model(**ip)

    def do_static_calibration(model, dataloader, num_bits, method, percentile, num_samples=5, calib_inputs=True):
        if calib_inputs:
            calibrate_inputs(model, num_bits, dataloader, method=method, batch_process_func=batch_process_func,
                             percentile=percentile, num_samples=num_samples)
        calibrate_weights(model, 4, False, method="max", perchannel=True)

    torch.manual_seed(0)
    cfg = OPTConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, ffn_dim=32, num_attention_heads=2,
                    max_position_embeddings=32, word_embed_proj_dim=16)
    model = OPTForCausalLM(cfg).eval()
    g = torch.Generator().manual_seed(2)
    loader = [{"input_ids": torch.randint(0, 50, (2, 6), generator=g)} for _ in range(3)]
    do_static_calibration(model, loader, num_bits=8, method="max", percentile=99.99, num_samples=2)
    replace_layers(model, input_quantizer=INT8, weight_quantizer=INT4, output_quantizer=FP16)
    points = compat.session_of(model).points
    fc1 = "model.decoder.layers.0.fc1"
    assert float(points[(fc1, "input", "input")].amax) == float(model.get_submodule(fc1).amax_input)
    assert points[(fc1, "weight", "weight")].amax.shape == (32, 1)
    with torch.no_grad():
        model(**loader[2])
    compat.detach(model)
