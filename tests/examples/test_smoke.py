"""Every model-family example's smoke mode: a tiny random model on stand-in data, through the same readers,
metric code and report as the real evaluation. Run in-process (one import of transformers/diffusers for all),
plus the scripts themselves in subprocesses; the model must be unchanged after each run."""

from __future__ import annotations

import importlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from examples import common
from tests.core.model_check import snapshot, verify_unchanged

ROOT = Path(__file__).resolve().parents[2]
FAMILIES = ("opt", "codegen", "maskformer", "stable_diffusion", "imagebind", "graphormer", "resnet50")
METRICS = {"opt": "perplexity", "codegen": "pass@1", "maskformer": "mIoU", "stable_diffusion": "CLIP score",
           "imagebind": "top-1", "graphormer": "accuracy", "resnet50": "top-1"}


@pytest.fixture
def checked_run(monkeypatch):
    """common.run, with the task's model snapshotted before and verified after."""
    original = common.run
    seen = {}

    def run(task, args):
        snap = snapshot(task.model)
        out = original(task, args)
        # values compared here: model_check's bit comparison cannot view a 0-dim tensor (MhaCLIP's logit_scale)
        verify_unchanged(task.model, snap, values=False)
        now = task.model.state_dict()
        assert list(now) == snap["sd_keys"]
        for k, v in snap["sd"].items():
            assert v.dtype == now[k].dtype and torch.equal(v, now[k]), f"state_dict[{k!r}] changed"
        seen["task"] = task
        return out

    monkeypatch.setattr(common, "run", run)
    return seen


def _main(name: str):
    return importlib.import_module(f"examples.{name}.run").main


@pytest.mark.parametrize("name", FAMILIES)
def test_smoke(name, tmp_path, capsys, checked_run):
    argv = ["--smoke", "--top", "3", "--json", str(tmp_path / "out.json"), "--workdir", str(tmp_path / "work")]
    if name == "graphormer":
        argv.append("--no-delegate")  # this environment's transformers; the delegation has its own test
    res = _main(name)(argv)
    out = capsys.readouterr().out
    assert res["example"] == name and res["mode"] == "smoke" and res["metric"] == METRICS[name]
    assert math.isfinite(res["metric_full"]) and math.isfinite(res["metric_sim"])
    assert res["points"] > 0 and 0 < res["output_sqnr_db"] < 80
    assert "inputs e4m3, weights e4m3, outputs fp16" in res["config"]  # INT-FP-QSim's default setting
    assert json.loads((tmp_path / "out.json").read_text())["metric_sim"] == pytest.approx(res["metric_sim"])
    # the report and the full-precision-vs-simulated table were printed
    assert "worst SQNR" in out and "full precision vs simulated" in out and "output SQNR" in out
    assert "task" in checked_run  # the model was verified unchanged
    assert any((tmp_path / "work").iterdir())  # the stand-in data and checkpoint were written


def test_smoke_metrics_are_in_range(tmp_path):
    """Figures a random model can still pin down: a perplexity above 1, rates in [0, 1]."""
    opt = _main("opt")(["--smoke", "--top", "1"])
    assert opt["metric_full"] > 1 and opt["metric_sim"] > 1
    assert 0.5 < opt["top1_agreement"] <= 1  # next-token agreement of the probe
    code = _main("codegen")(["--smoke", "--top", "1"])
    assert code["harness_passed"] == code["harness_total"] == 2  # the executor runs and scores programs
    assert 0 <= code["metric_full"] <= 1
    mf = _main("maskformer")(["--smoke", "--top", "1"])
    assert 0 <= mf["metric_sim"] <= 1 and 0 <= mf["pixel_accuracy_sim"] <= 1
    sd = _main("stable_diffusion")(["--smoke", "--top", "1"])
    assert 0 < sd["metric_full"] <= 100


def test_smoke_with_calibration_and_overrides(checked_run):
    res = _main("resnet50")(["--smoke", "--top", "2", "--input", "int8", "--weight", "int4", "--output", "none",
                             "--weight-scaling", "channel", "--calibrate", "percentile", "--percentile", "99.9"])
    assert res["config"].startswith("inputs int8, weights int4, outputs full precision")
    assert res["calibrated_points"] > 0
    task = checked_run["task"]
    assert task.calibration_data  # the calibration saw the example's own batches


def test_smoke_calibration_of_cast_formats_says_so(capsys):
    res = _main("imagebind")(["--smoke", "--top", "1", "--calibrate", "max"])
    assert res["calibrated_points"] == 0
    assert "plain casts" in capsys.readouterr().out


def test_graphormer_without_second_environment_says_so(capsys):
    res = _main("graphormer")(["--smoke", "--top", "1", "--no-delegate"])
    out = capsys.readouterr().out
    if res["model_part"] == "graphormer":  # running in .venv-tf457 itself: the real model part ran
        assert "MODEL PART NOT RUN" not in out and "GraphormerForGraphClassification" in out
    else:
        assert "MODEL PART NOT RUN" in out and "tools/graphormer_env.sh" in out
        assert res["model_part"].startswith("stand-in")
    assert 0 <= res["roc_auc_sim"] <= 1


@pytest.mark.skipif(not (ROOT / ".venv-tf457" / "bin" / "python").exists(),
                    reason=".venv-tf457 (transformers 4.57, tools/graphormer_env.sh) is not built here")
def test_graphormer_delegates_to_the_second_environment(tmp_path):
    out = tmp_path / "g.json"
    proc = subprocess.run([sys.executable, str(ROOT / "examples/graphormer/run.py"), "--smoke", "--top", "2",
                           "--json", str(out)], capture_output=True, text=True, timeout=600, cwd=ROOT,
                          env={**os.environ, "COLUMNS": "200"})
    assert proc.returncode == 0, proc.stderr
    res = json.loads(out.read_text())
    assert res["model_part"] == "graphormer"
    assert "GraphormerForGraphClassification" in proc.stdout and "self_attn" in proc.stdout


@pytest.mark.parametrize("cmd", [["examples/opt/run.py", "--smoke"], ["-m", "examples.resnet50.run", "--smoke"]],
                         ids=["script", "module"])
def test_runs_as_a_script(cmd):
    env = {**os.environ, "COLUMNS": "140"}
    proc = subprocess.run([sys.executable, *cmd, "--top", "2"], capture_output=True, text=True, timeout=600,
                          cwd=ROOT, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "full precision vs simulated" in proc.stdout


@pytest.mark.parametrize("argv, message", [
    ([], "--checkpoint PATH and --data PATH"),
    (["--checkpoint", "/nonexistent/ckpt", "--data", "/nonexistent/data"], "no such file"),
    (["--smoke", "--checkpoint", "x"], "leave out --checkpoint"),
    (["--smoke", "--input", "fp7"], "fp7"),
    (["--smoke", "--calibrate", "median"], "--calibrate"),
], ids=["nothing", "missing-paths", "smoke-and-checkpoint", "bad-format", "bad-method"])
def test_bad_arguments(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        _main("opt")(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_codegen_asks_before_executing_model_code(tmp_path, capsys):
    data = tmp_path / "he.jsonl"
    data.write_text("{}\n")
    with pytest.raises(SystemExit):
        _main("codegen")(["--checkpoint", str(tmp_path), "--data", str(data)])
    assert "--allow-code-execution" in capsys.readouterr().err
