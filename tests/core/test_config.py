"""Plan resolution: layer discovery, rule precedence, scaling overrides, errors."""

import pytest
import torch
from torch import nn

import qsim_hooks as qh
from qsim_hooks.config import ROLES, UNSET


class MyLinear(nn.Linear):
    pass


class Gate(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(4, 4))

    def forward(self, x):
        return x @ self.w.t()


def _model():
    return nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.ReLU(), nn.ConvTranspose2d(4, 2, 2), nn.Flatten(),
        MyLinear(2 * 8 * 8, 8), nn.Sequential(nn.Linear(8, 8), nn.LayerNorm(8)),
        nn.Conv1d(1, 1, 1), nn.Conv3d(1, 1, 1), nn.ConvTranspose1d(1, 1, 1), nn.ConvTranspose3d(1, 1, 1),
    )


def _entries(plan, module):
    return {e.point: e for e in plan.for_module(module)}


def test_default_layers_found_including_subclasses():
    p = qh.plan(_model(), qh.QuantConfig(input="int8", weight="int4", output="fp16"))
    mods = {e.module for e in p}
    assert mods == {"0", "2", "4", "5.0", "6", "7", "8", "9"}
    e = _entries(p, "4")
    assert e["weight"].module_type == "MyLinear"
    assert e["input"].format.name == "int8" and e["weight"].format.name == "int4"
    assert e["output"].format.name == "fp16" and e["input"].decided_by == "cfg"
    assert "5.1" not in mods  # LayerNorm is not a registered layer


def test_bias_is_not_quantized_and_weight_axes():
    cfg = qh.QuantConfig(weight="int8", rules=[qh.Rule(weight_scaling="channel")])
    p = qh.plan(_model(), cfg)
    assert [e.tensor for e in p if e.module == "0" and e.point == "weight"] == ["weight"]
    assert _entries(p, "0")["weight"].format.scaling.axis == 0
    assert _entries(p, "2")["weight"].format.scaling.axis == 1  # ConvTranspose: out channels on axis 1
    assert _entries(p, "8")["weight"].format.scaling.axis == 1
    assert _entries(p, "4")["weight"].format.scaling.axis == 0
    assert _entries(p, "4")["weight"].decided_by == "cfg+rule[0]"


def test_block_axis_is_the_reduction_axis():
    cfg = qh.QuantConfig(weight="int8", input="int8",
                         rules=[qh.Rule(weight_scaling="block", input_scaling="block")])
    p = qh.plan(_model(), cfg)
    assert _entries(p, "4")["weight"].format.scaling.axis == 1
    assert _entries(p, "2")["weight"].format.scaling.axis == 0
    assert _entries(p, "0")["input"].format.scaling.axis == 1  # NCHW channels
    assert _entries(p, "4")["input"].format.scaling.axis == -1


def test_last_matching_rule_wins_per_field():
    cfg = qh.QuantConfig(input="int8", weight="int8", rules=[
        qh.Rule(match="5.*", weight="e4m3", name="a"),
        qh.Rule(types=nn.Linear, weight="int4", name="b"),
        qh.Rule(match="re:5\\.\\d", input=None, name="c"),
    ])
    p = qh.plan(_model(), cfg)
    e = _entries(p, "5.0")
    assert e["weight"].format.name == "int4" and e["weight"].decided_by == "b"
    assert e["input"].format is None and e["input"].decided_by == "c"
    assert _entries(p, "4")["weight"].format.name == "int4"  # MyLinear is a Linear subclass
    assert _entries(p, "0")["weight"].format.name == "int8"


def test_enabled_false_switches_layer_off_and_later_rule_can_reenable():
    cfg = qh.QuantConfig(input="int8", weight="int8", output="fp16", rules=[
        qh.Rule(match="*", enabled=False), qh.Rule(match="4", enabled=True)])
    p = qh.plan(_model(), cfg)
    assert all(e.format is None for e in p if e.module != "4")
    assert all(e.format is not None for e in p if e.module == "4")


def test_rule_types_add_candidates_for_activations():
    m = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
    p = qh.plan(m, qh.QuantConfig(rules=[qh.Rule(types=nn.LayerNorm, output="bf16")]))
    e = _entries(p, "1")
    assert e["output"].format.name == "bf16" and "weight" not in e


def test_weight_on_unregistered_type_is_an_error_then_register_layer_works():
    m = nn.Sequential(Gate())
    with pytest.raises(ValueError, match="register_layer"):
        qh.plan(m, qh.QuantConfig(rules=[qh.Rule(types=Gate, weight="int8")]))
    p = qh.plan(m, qh.QuantConfig(weight="int8", layers={Gate: ("w",)}))
    assert [(e.point, e.tensor) for e in p if e.format is not None] == [("weight", "w")]
    handle = qh.register_layer(Gate, weights="w", weight_channel_axis=1, activation_axis=0)
    try:
        p = qh.plan(m, qh.QuantConfig(weight="int8", input="int8", rules=[qh.Rule(weight_scaling="channel")]))
        e = _entries(p, "0")
        assert e["weight"].tensor == "w" and e["weight"].format.scaling.axis == 1 and e["input"].axis == 0
        # a config's own layers= wins over the registration
        p = qh.plan(m, qh.QuantConfig(weight="int8", rules=[qh.Rule(weight_scaling="channel")],
                                      layers={Gate: qh.LayerSpec(("w",))}))
        assert _entries(p, "0")["weight"].format.scaling.axis == 0
    finally:
        handle.remove()
    handle.remove()  # safe twice
    with pytest.raises(ValueError, match="register_layer"):  # unregistered again
        qh.plan(m, qh.QuantConfig(rules=[qh.Rule(types=Gate, weight="int8")]))
    with pytest.raises(TypeError, match="nn.Module subclass"):
        qh.register_layer(int)


def test_unmatched_rule_is_error_or_warning():
    with pytest.raises(ValueError, match="'nope'.*matches no layer"):
        qh.plan(_model(), qh.QuantConfig(rules=[qh.Rule(match="enc.*", name="nope")]))
    with pytest.warns(UserWarning, match="matches no layer"):
        qh.plan(_model(), qh.QuantConfig(rules=[qh.Rule(match="enc.*")], strict=False))


@pytest.mark.parametrize("kwargs, exc, msg", [
    ({"input": "int99"}, ValueError, "IntFormat.bits=99"),
    ({"weight": "e4m9x"}, ValueError, "unknown format"),
    ({"output": 3}, TypeError, "QuantConfig.output"),
    ({"rules": [3]}, TypeError, "rules\\[0\\]"),
    ({"layers": {int: "w"}}, TypeError, "layers keys"),
], ids=["bits", "name", "type", "rule", "layers"])
def test_bad_config(kwargs, exc, msg):
    with pytest.raises(exc, match=msg):
        qh.QuantConfig(**kwargs)


def test_bad_rule_fields():
    with pytest.raises(ValueError, match="bad regular expression"):
        qh.Rule(match="re:(")
    with pytest.raises(ValueError, match="input_scaling"):
        qh.Rule(input_scaling="row")
    with pytest.raises(TypeError, match="Rule.types"):
        qh.Rule(types=int)


def test_from_dict_and_plan_is_printable():
    cfg = qh.QuantConfig.from_dict({"input": "int8", "weight": "e4m3", "output": "none",
                                    "rules": [{"match": "4", "weight": "int4", "weight_scaling": "channel"}]})
    assert cfg.output is None and cfg.rules[0].weight.name == "int4"
    text = str(qh.plan(_model(), cfg))
    assert "decided_by" in text and "rule[0]" in text
    lines = str(qh.plan(nn.Sequential(nn.Linear(2, 2)), qh.QuantConfig(weight="int8"))).splitlines()
    assert [ln.split() for ln in lines] == [
        ["module", "type", "point", "tensor", "format", "granularity", "decided_by"],
        ["0", "Linear", "input", "input", "-", "-", "cfg"],
        ["0", "Linear", "weight", "weight", "int8", "tensor", "dyn-max", "cfg"],
        ["0", "Linear", "output", "output", "-", "-", "cfg"]]
    col = lines[0].index("point")  # aligned columns
    assert [ln.index(pt) for ln, pt in zip(lines[1:], ROLES)] == [col] * 3
    assert str(qh.plan(nn.Sequential(nn.ReLU()), qh.QuantConfig())) == "(empty plan: no layer to instrument)"
    with pytest.raises(ValueError, match="unknown keys"):
        qh.QuantConfig.from_dict({"inputs": "int8"})
    assert UNSET is not None and not UNSET


def test_model_and_cfg_type_errors():
    with pytest.raises(TypeError, match="torch.nn.Module"):
        qh.plan("model", qh.QuantConfig())
    with pytest.raises(TypeError, match="QuantConfig"):
        qh.plan(nn.Linear(2, 2), {"input": "int8"})
