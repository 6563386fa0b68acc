"""End to end: calibrate a torchvision CNN and a small transformer, evaluate with static scales."""

import pytest
import torch

import qsim_hooks as qh
from qsim_hooks.config import ATTENTION_POINTS

from ..core.model_check import snapshot, verify_unchanged


def _batches(shape, n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*shape, generator=g) for _ in range(n)]


def test_resnet18_calibrate_then_evaluate_with_static_scales():
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    snap = snapshot(model)
    data = _batches((2, 3, 32, 32), 2)
    cfg = qh.QuantConfig(input="int8", weight="int8", rules=[qh.Rule(weight_scaling="channel"),
                                                                qh.Rule(match="fc", input="int4")])
    calib = qh.calibrate(model, cfg, data, method={"weight": "max", "default": "mse"})
    verify_unchanged(model, snap)
    n_layers = sum(isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)) for m in model.modules())
    assert len(calib) == 2 * n_layers and not calib.skipped
    assert calib[("conv1", "weight", "weight")].shape == (64, 1, 1, 1)
    x = _batches((2, 3, 32, 32), 1, seed=7)[0]
    with torch.no_grad():
        ref = model(x)
        with qh.quantized(model, cfg, stats=True, calibration=calib) as qs:
            y = model(x)
        with qh.quantized(model, cfg) as qd:
            y_dyn = model(x)
    verify_unchanged(model, snap)
    rows = qs.stats()
    assert all(r["static_amax"] is not None for r in rows)
    assert len(qd.points) == len(qs.points)
    assert torch.isfinite(y).all() and not torch.equal(y, y_dyn)
    assert qh.stats.sqnr_db(ref, y) > 15.0


def test_small_bert_every_point_attention_included_is_calibrated():
    tf = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg_bert = tf.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                             intermediate_size=64, max_position_embeddings=32, attn_implementation="eager")
    model = tf.BertModel(cfg_bert).eval()
    snap = snapshot(model)
    g = torch.Generator().manual_seed(1)
    data = [{"input_ids": torch.randint(0, 100, (2, 12), generator=g),
             "attention_mask": torch.ones(2, 12, dtype=torch.long)} for _ in range(3)]
    cfg = qh.QuantConfig(input="int8", weight="int8", output="int8")
    calib = qh.calibrate(model, cfg, data, method="percentile", percentile=99.9)
    verify_unchanged(model, snap)
    with qh.quantized(model, cfg) as s:
        keys = set(s.points)
    assert set(calib.keys()) == keys  # every point of the plan, whatever its name
    # the attention internals are points of the plan like any other: calibrated without naming them
    assert {k[1] for k in calib.keys()} == {"input", "weight", "output", *ATTENTION_POINTS}
    x = data[0]
    with torch.no_grad():
        ref = model(**x).last_hidden_state
        with qh.quantized(model, cfg, stats=True, calibration=calib) as qs:
            y = model(**x).last_hidden_state
    verify_unchanged(model, snap)
    assert all(r["static_amax"] is not None for r in qs.stats())
    assert qh.stats.sqnr_db(ref, y) > 10.0
