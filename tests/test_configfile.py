"""Config files and presets: every QuantConfig field survives to_dict -> from_dict and save -> load (TOML and
JSON), bad files name the key and what is allowed, presets are plain configs, and the command line's
``--preset`` / ``--calibrate`` / ``presets`` use them."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import qsim_hooks as qh
from qsim_hooks import cli
from qsim_hooks.formats import BlockFormat, FloatFormat, GradSpec, IntFormat, Scaling
from qsim_hooks.presets import PRESETS

#: one config per format family, each with a format that is no registered name (so it is written as a table)
FAMILIES = {
    "named": qh.QuantConfig(input="e4m3", weight="int8", output="bf16"),
    "float": qh.QuantConfig(input=FloatFormat(3, 4, bias=5, specials="fn", subnormals=False, rounding="stochastic",
                                              scaling=Scaling(granularity="channel", axis=1)),
                            weight=FloatFormat(5, 2, overflow="special", grad=GradSpec("ste", "bf16")),
                            output=None),
    "int": qh.QuantConfig(weight=IntFormat(4, signed=False, narrow=False, rounding="toward_zero",
                                           scaling=Scaling(granularity="block", block_size=64)),
                          input=IntFormat(6, scaling=Scaling(mode="static", method="percentile", percentile=99.5))),
    "block": qh.QuantConfig(weight=BlockFormat(element="e2m1", block_size=16, scale=FloatFormat(4, 3, specials="fn"),
                                               tensor_scale=True),
                            input=BlockFormat(element="int8", block_size=8, axis=0),
                            output="mxfp4"),
    "scaled globally": qh.QuantConfig(input="e4m3", weight="int4", input_scaling="tensor",
                                      weight_scaling=Scaling(granularity="block", block_size=128),
                                      output_scaling={"granularity": "channel"}),
    "calibrated": qh.QuantConfig(input=IntFormat(8, scaling=Scaling(amax=3.5)),
                                 weight=FloatFormat(4, 3, specials="fn", scaling=Scaling(mode="static", amax=0.25)),
                                 input_scaling=Scaling(mode="static", method="percentile", percentile=99.9)),
    "rules": qh.QuantConfig(
        input="int8", weight="e4m3", strict=False, seed=7, attention=r"MyAttn.*",
        rules=(qh.Rule(match="layer4.*", weight="int4", weight_scaling="channel", name="last block"),
               qh.Rule(match=("re:.*fc$", "head"), output=None, enabled=True),
               qh.Rule(types=(nn.Conv2d, nn.Linear), input="mxfp8_e4m3"),
               qh.Rule(match="attn", attention=True, scores="bf16", probs=None, q="e5m2"),
               qh.Rule(match="skip.*", enabled=False))),
    "no attention": qh.QuantConfig(weight="int8", attention=None, layers={nn.Linear: ("weight",)}),
}


def _equal(a: qh.QuantConfig, b: qh.QuantConfig) -> None:
    assert a == b
    assert a.to_dict() == b.to_dict()


@pytest.mark.parametrize("name", list(FAMILIES))
def test_to_dict_from_dict_round_trip(name):
    cfg = FAMILIES[name]
    data = cfg.to_dict()
    json.dumps(data)  # plain data only
    _equal(qh.QuantConfig.from_dict(data), cfg)


@pytest.mark.parametrize("suffix", [".toml", ".json"])
@pytest.mark.parametrize("name", list(FAMILIES))
def test_save_load_round_trip(name, suffix, tmp_path):
    cfg = FAMILIES[name]
    path = cfg.save(tmp_path / f"cfg{suffix}")
    _equal(qh.QuantConfig.load(path), cfg)


def test_a_loaded_config_simulates_exactly_as_the_original(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    x = torch.randn(4, 8)
    cfg = qh.QuantConfig(input=IntFormat(4, rounding="nearest_away"), weight=BlockFormat(element="e2m1",
                         block_size=4), rules=(qh.Rule(match="2", output="e5m2"),))
    loaded = qh.QuantConfig.load(cfg.save(tmp_path / "c.toml"))
    with torch.no_grad(), qh.quantized(model, cfg):
        want = model(x)
    with torch.no_grad(), qh.quantized(model, loaded):
        got = model(x)
    assert torch.equal(got, want) and not torch.equal(got, model(x))


def test_the_toml_reads_as_written(tmp_path):
    text = FAMILIES["rules"].save(tmp_path / "c.toml").read_text()
    assert 'input = "int8"' in text and "[[rules]]" in text and 'match = "layer4.*"' in text
    assert 'types = ["torch.nn.modules.conv.Conv2d", "torch.nn.modules.linear.Linear"]' in text
    assert "strict = false" in text and "seed = 7" in text


@pytest.mark.parametrize("data, key, allowed", [
    ({"inputs": "int8"}, "inputs", "input"),
    ({"rules": [{"mtach": "x"}]}, "mtach", "match"),
    ({"input": {"kind": "float", "exp": 4}}, "exp", "exp_bits"),
    ({"input": {"kind": "posit"}}, "posit", "float"),
    ({"weight_scaling": "row"}, "row", "channel"),
    ({"input": "fp9"}, "fp9", "e4m3"),
    ({"input": "e9m9"}, "exp_bits=9", "1..8"),
    ({"preset": "fp9"}, "fp9", "w8a8-int"),
    ({"rules": [{"types": "torch.nn.NoSuchLayer"}]}, "NoSuchLayer", "import"),
])
def test_bad_files_name_the_key_and_what_is_allowed(data, key, allowed, tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError) as info:
        qh.QuantConfig.load(path)
    msg = str(info.value)
    assert str(path) in msg and key in msg and allowed in msg, msg


def test_malformed_files_and_suffixes(tmp_path):
    (tmp_path / "a.toml").write_text("input = \n")
    with pytest.raises(ValueError, match="malformed TOML"):
        qh.QuantConfig.load(tmp_path / "a.toml")
    with pytest.raises(ValueError, match=r"\.toml or \.json"):
        qh.QuantConfig().save(tmp_path / "a.yaml")
    with pytest.raises(FileNotFoundError, match="nope.json"):
        qh.QuantConfig.load(tmp_path / "nope.json")


def test_what_is_code_is_refused_by_name():
    class Local(nn.Linear):
        pass

    with pytest.raises(ValueError, match=r"rules\[0\].types.*Local"):
        qh.QuantConfig(rules=(qh.Rule(types=Local, weight="int8"),)).to_dict()
    with pytest.raises(ValueError, match="QuantConfig.weight.*register"):
        qh.QuantConfig(weight=lambda t: t.round()).to_dict()


@pytest.mark.parametrize("name", list(PRESETS))
def test_each_preset_is_a_config_that_runs(name):
    cfg = qh.QuantConfig.preset(name)
    _equal(qh.QuantConfig.from_dict(cfg.to_dict()), cfg)
    assert qh.QuantConfig.preset(name.upper().replace("-", "_")) == cfg  # case and _/- do not matter
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 256), nn.ReLU(), nn.Linear(256, 4)).eval()
    x = torch.randn(2, 32)
    with torch.no_grad():
        ref = model(x)
        with qh.quantized(model, cfg):
            sim = model(x)
    assert not torch.equal(sim, ref) and torch.isfinite(sim).all()
    assert ((sim - ref).norm() / ref.norm()) < 0.5  # a recipe, not noise


def test_presets_say_what_they_set():
    assert qh.QuantConfig.preset("w8a8-int") == qh.QuantConfig(input="int8", weight="int8", weight_scaling="channel")
    w4 = qh.QuantConfig.preset("w4a16-int", output="fp16")
    assert w4.weight_scaling == Scaling(granularity="block", block_size=128) and w4.output.name == "fp16"
    assert qh.QuantConfig.preset("int-fp-qsim-default") == qh.QuantConfig(input="e4m3", weight="e4m3", output="fp16")
    on_top = qh.QuantConfig.from_dict({"preset": "fp8", "output": "bf16", "rules": [{"match": "0", "enabled": False}]})
    assert on_top.input_scaling == Scaling() and on_top.output.name == "bf16" and len(on_top.rules) == 1


def test_the_presets_command_lists_them_in_80_columns(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    assert cli.main(["presets"]) == 0
    out = capsys.readouterr().out
    assert all(len(line) <= 80 for line in out.splitlines())
    assert all(name in out for name in PRESETS)
    assert cli.main(["presets", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert qh.QuantConfig.from_dict(data["nvfp4"]["config"]) == qh.QuantConfig.preset("nvfp4")


MODEL = """
import torch
from torch import nn
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)).eval()
batches = [torch.randn(4, 8, generator=torch.Generator().manual_seed(i)) for i in range(2)]
"""


@pytest.fixture
def model_file(tmp_path, monkeypatch):
    monkeypatch.setenv("QSIM_HOOKS_BACKEND", "eager")
    p = tmp_path / "m.py"
    p.write_text(MODEL)
    return p


def test_cli_preset_and_save_config(model_file, tmp_path, capsys):
    saved = tmp_path / "used.toml"
    assert cli.main(["report", "--model", str(model_file), "--preset", "w4a8-int", "--weight", "int8",
                     "--save-config", str(saved), "--json", "--no-progress"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert qh.QuantConfig.load(saved) == qh.QuantConfig.preset("w4a8-int", weight="int8")
    formats = {(p["module"], p["point"]): p["format"] for p in out["points"]}
    assert formats[("0", "weight")].startswith("int8") and formats[("0", "input")].startswith("int8")
    with pytest.raises(SystemExit) as info:
        cli.main(["report", "--model", str(model_file), "--preset", "fp9"])
    assert info.value.code == 2 and "fp9" in capsys.readouterr().err


def test_cli_calibrate_gives_the_python_calibration(model_file, capsys):
    assert cli.main(["report", "--model", str(model_file), "--preset", "w8a8-int", "--calibrate", "max",
                     "--json", "--no-progress"]) == 0
    got = json.loads(capsys.readouterr().out)
    ns: dict = {}
    exec(MODEL, ns)
    cfg = qh.QuantConfig.preset("w8a8-int")
    cal = qh.calibrate(ns["model"], cfg, ns["batches"], method="max", progress=False)
    want = qh.compare(ns["model"], cfg, batches=ns["batches"], calibration=cal, progress=False)
    assert got["summary"]["output_sqnr_db"] == pytest.approx(want.output_sqnr_db, rel=1e-6)
    dyn = qh.compare(ns["model"], cfg, batches=ns["batches"], progress=False)
    assert dyn.output_sqnr_db != pytest.approx(want.output_sqnr_db, rel=1e-6)  # the scales were static
