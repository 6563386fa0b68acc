"""The report, sweep and sensitivity commands: end to end in a subprocess with output that parses,
and bad invocations (model name, config file, format, model file) that exit non-zero with one line."""

import csv
import io
import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from qsim_hooks import cli, formats

#: the model file the README's command-line examples use (a small CNN on synthetic images)
SMALL_CNN = str(Path(__file__).resolve().parents[1] / "examples" / "small_cnn.py")
MODEL_FILE = textwrap.dedent('''
    """A model built to have one fragile layer: fc2's input has a channel stuck at 1000 that fc2 ignores."""
    import torch
    from torch import nn


    class Fragile(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1 = nn.Linear(16, 32)
            self.fc2 = nn.Linear(32, 32)
            self.fc3 = nn.Linear(32, 10)
            with torch.no_grad():
                self.fc1.weight[0] = 0.0
                self.fc1.bias[0] = 1000.0
                self.fc2.weight[:, 0] = 0.0

        def forward(self, x):
            return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


    torch.manual_seed(0)
    model = Fragile().eval()
    _gen = torch.Generator().manual_seed(0)
    batches = [torch.randn(32, 16, generator=_gen) for _ in range(2)]
    with torch.no_grad():
        _labels = [model(b).argmax(1) for b in batches]


    def metric(model, batches):
        """Top-1 accuracy against the full-precision model's own predictions."""
        return sum(float((model(b).argmax(1) == y).float().mean()) for b, y in zip(batches, _labels)) / len(batches)
''')

CONFIG_TOML = textwrap.dedent('''
    input = "int4"
    weight = "int8"

    [[rules]]
    match = "fc3"
    enabled = false
    name = "fc3-full-precision"
''')


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    (d / "fragile.py").write_text(MODEL_FILE)
    (d / "cfg.toml").write_text(CONFIG_TOML)
    return d


def run_cli(*args):
    env = {k: v for k, v in os.environ.items() if k != "QSIM_HOOKS_DEBUG"}
    env.update(COLUMNS="120", QSIM_HOOKS_BACKEND="eager")  # small tensors: compiling would cost more than it saves
    return subprocess.run([sys.executable, "-m", "qsim_hooks", *args], capture_output=True, text=True, env=env,
                          timeout=300)


def ok(proc):
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


# ---------------------------------------------------------------------------
# end to end, in a subprocess
# ---------------------------------------------------------------------------
@pytest.mark.slow
def test_report_small_cnn_json():
    data = json.loads(ok(run_cli("report", "--model", SMALL_CNN, "--json")))  # its two batches of 8
    assert data["model"] == "small_cnn" and "e4m3" in data["config"]
    s = data["summary"]
    assert 20 < s["output_sqnr_db"] < 80 and s["batches"] == 2 and s["top1_rows"] == 16
    points = data["points"]
    assert len(points) == 18 and {p["point"] for p in points} == {"input", "weight", "output"}
    assert points[0]["module"] == "stem.0" and points[-1]["module"] == "head.fc"
    assert all(p["calls"] == 2 for p in points if p["point"] != "weight")
    assert all(math.isfinite(p["sqnr_db"]) for p in points)


@pytest.mark.slow
def test_report_model_file_with_toml_config_as_grouped_csv(files):
    out = ok(run_cli("report", "--model", str(files / "fragile.py"), "--config", str(files / "cfg.toml"),
                     "--csv", "--group", "1", "--sort", "sqnr"))
    rows = list(csv.DictReader(io.StringIO(out)))
    assert {r["module"] for r in rows} == {"fc1", "fc2"}  # fc3 switched off by the config's rule
    sq = [float(r["sqnr_db"]) for r in rows]
    assert sq == sorted(sq) and len(rows) == 4
    # the outlier (exactly on the grid, so the point's own SQNR stays high) flushes every other value
    by = {(r["module"], r["point"]): r for r in rows}
    fc2 = by[("fc2", "input")]
    assert float(fc2["flushed"]) == max(float(r["flushed"]) for r in rows) > 0.4
    assert float(fc2["amax"]) == 1000.0 and fc2["points"] == "1" and fc2["calls"] == "2"


@pytest.mark.slow
def test_sweep_model_file_json_with_metric_and_plot(files, tmp_path):
    pytest.importorskip("matplotlib")
    plot = tmp_path / "sweep.png"
    data = json.loads(ok(run_cli("sweep", "--model", str(files / "fragile.py"), "--formats", "fp32,e4m3,int4",
                                 "--roles", "input,weight", "--json", "--plot", str(plot))))
    rows = data["rows"]
    assert [r["format"] for r in rows] == ["fp32", "e4m3", "int4"]
    assert rows[0]["output_sqnr_db"] == "inf" and rows[0]["metric"] == 1.0
    assert all(r["metric_full"] == 1.0 and r["roles"] == "input,weight" for r in rows)
    assert rows[2]["output_sqnr_db"] < rows[1]["output_sqnr_db"] and rows[2]["metric"] < 1.0
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_sensitivity_model_file_csv_ranks_the_fragile_layer_first(files):
    out = ok(run_cli("sensitivity", "--model", str(files / "fragile.py"), "--input", "int4", "--weight", "int8",
                     "--csv"))
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [r["layer"] for r in rows][0] == "fc2" and [r["rank"] for r in rows] == ["1", "2", "3"]
    assert float(rows[0]["output_sqnr_db"]) < float(rows[1]["output_sqnr_db"])


def test_unknown_model_name_in_a_subprocess():
    proc = run_cli("report", "--model", "resnet19")
    assert proc.returncode == 2 and proc.stdout == "" and "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("qsim-hooks") and "resnet19" in lines[0]
    assert "resnet18" in lines[0]  # the closest names


# ---------------------------------------------------------------------------
# in-process: tables, and every kind of bad invocation
# ---------------------------------------------------------------------------
@pytest.fixture
def eager():
    before = formats.get_backend()
    formats.set_backend("eager")
    yield
    formats.set_backend(before)


def test_report_table_of_a_torchvision_model(eager, capsys):
    assert cli.main(["report", "--model", "resnet18", "--size", "32", "--batch", "2", "--weight", "int4",
                     "--sort", "sqnr", "--top", "3"]) == 0
    out = capsys.readouterr().out
    assert "resnet18" in out and "output SQNR" in out and "int4" in out
    table = out[out.index("Quantization points"):]
    assert sum(" weight " in ln for ln in table.splitlines()) == 3


def test_sweep_and_sensitivity_tables(eager, capsys, files):
    assert cli.main(["sweep", "--model", str(files / "fragile.py"), "--formats", "int8,int4"]) == 0
    out = capsys.readouterr().out
    assert "int8" in out and "metric" in out and "full precision: 1" in out
    assert cli.main(["sensitivity", "--model", SMALL_CNN, "--mode", "all-but-one", "--depth", "1", "--top", "2"]) == 0
    out = capsys.readouterr().out
    assert "all quantized but one" in out and "gain dB" in out


def test_report_histograms_as_json(eager, capsys, tmp_path):
    pytest.importorskip("matplotlib")
    assert cli.main(["report", "--model", SMALL_CNN, "--json", "--input", "int8", "--weight", "e4m3",
                     "--histogram", "blocks.0.conv1:input",
                     "--histogram", "head.fc", "--plot-dir", str(tmp_path / "h")]) == 0
    data = json.loads(capsys.readouterr().out)
    names = sorted(os.path.basename(p) for p in data["histograms"])
    assert names == ["blocks.0.conv1_input.png", "head.fc_input.png", "head.fc_output.png", "head.fc_weight.png"]
    for p in data["histograms"]:
        with open(p, "rb") as fh:
            assert fh.read(8) == b"\x89PNG\r\n\x1a\n"


def test_report_with_a_calibration_file(eager, capsys, files, tmp_path):
    import qsim_hooks as qh
    from qsim_hooks.modelsrc import load_model

    src = load_model(str(files / "fragile.py"))
    cfg = qh.QuantConfig(input="int4", weight="int8")
    cal = qh.calibrate(src.model, cfg, src.batches, method="percentile", percentile=99.0, progress=False)
    cal.save(tmp_path / "cal.json")
    argv = ["report", "--model", str(files / "fragile.py"), "--input", "int4", "--weight", "int8", "--json"]
    assert cli.main([*argv, "--calibration", str(tmp_path / "cal.json")]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["calibration"] == str(tmp_path / "cal.json")
    by = {(p["module"], p["point"]): p for p in data["points"]}
    assert by[("fc1", "input")]["static_amax"] == [pytest.approx(cal.amax("fc1", "input"))]
    with qh.quantized(src.model, cfg, calibration=cal, stats=True) as qs:  # the same as the library gives
        for b in src.batches:
            src.model(b)
    assert by[("fc1", "input")]["sqnr_db"] == pytest.approx(
        next(r["sqnr_db"] for r in qs.stats() if (r["module"], r["point"]) == ("fc1", "input")))
    (tmp_path / "other.json").write_text(json.dumps({**json.loads((tmp_path / "cal.json").read_text()),
                                                     "points": [{**json.loads((tmp_path / "cal.json").read_text())
                                                                 ["points"][0], "module": "nope"}]}))
    assert cli.main([*argv, "--calibration", str(tmp_path / "other.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--calibration" in err[0] and "nope" in err[0]


def _write(name, text):
    """A builder: the path of a file ``name`` with ``text``, written in the test's folder."""
    def build(d):
        (d / name).write_text(text)
        return str(d / name)
    return build


def _path(name):
    return lambda d: str(d / name)


# case -> (argv, with builders for files; expected exit code; text the one error line must hold)
BAD = {
    "malformed-toml": (["report", "--config", _write("a.toml", 'input = "e4m3\n')], 2, "malformed TOML"),
    "unknown-key": (["report", "--config", _write("b.toml", 'wieght = "int4"\n')], 2, "wieght"),
    "unknown-format-in-config": (["sensitivity", "--config", _write("c.json", '{"weight": "int3x"}')], 2, "int3x"),
    "malformed-json": (["sweep", "--config", _write("d.json", '{"weight": }')], 2, "malformed JSON"),
    "config-suffix": (["report", "--config", _write("e.yaml", "weight: int4\n")], 2, ".toml or .json"),
    "config-missing": (["report", "--config", _path("nope.toml")], 2, "not found"),
    "model-file-missing": (["report", "--model", _path("nope.py")], 2, "not found"),
    "model-file-no-batches": (["report", "--model", _write("nb.py", "import torch\nmodel = torch.nn.Linear(2, 2)\n")],
                              2, "batches"),
    "model-file-raises": (["sweep", "--model", _write("boom.py", "raise RuntimeError('boom')\n")], 1, "boom"),
    "unknown-model": (["sensitivity", "--model", "not_a_model"], 2, "not_a_model"),
    "unknown-format-flag": (["report", "--weight", "e4m4x"], 2, "e4m4x"),
    "two-formats-for-one-role": (["report", "--input", "int8,int4"], 2, "one format"),
    "unknown-sweep-format": (["sweep", "--formats", "int8,fp7"], 2, "fp7"),
    "bad-role": (["sweep", "--roles", "bias"], 2, "--roles"),
    "bad-mode": (["sensitivity", "--mode", "two"], 2, "--mode"),
    "json-and-csv": (["report", "--json", "--csv"], 2, "--csv"),
    "zero-top": (["report", "--top", "0"], 2, "--top"),
    "calibration-missing": (["report", "--calibration", _path("nope.json")], 2, "not found"),
    "calibration-malformed": (["sweep", "--calibration", _write("cal.json", "{")], 2, "--calibration"),
    "histogram-of-no-point": (["report", "--input", "none", "--weight", "int4", "--histogram", "head.fc:input"], 2,
                              "head.fc:input"),
    "model-file-not-python": (["report", "--model", _write("m.txt", "model = 1\n")], 2, "must be a Python file"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_invocation_is_one_line(case, tmp_path, capsys, monkeypatch, eager):
    monkeypatch.delenv("QSIM_HOOKS_DEBUG", raising=False)
    args, code, needle = BAD[case]
    argv = [a(tmp_path) if callable(a) else a for a in args]
    if "--model" not in argv:  # the case is about something else: a model that works
        argv += ["--model", SMALL_CNN]
    try:
        rc = cli.main(argv)
    except SystemExit as exc:  # argparse's own errors
        rc = exc.code
    out, err = capsys.readouterr()
    assert rc == code, err
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("qsim-hooks") and "error:" in lines[0], err
    assert needle in lines[0]


def test_a_model_name_without_torchvision_says_what_to_install(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torchvision", None)  # import torchvision raises ImportError
    monkeypatch.delenv("QSIM_HOOKS_DEBUG", raising=False)
    assert cli.main(["report", "--model", "resnet18"]) == 2
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert out == "" and len(lines) == 1 and lines[0].startswith("qsim-hooks: error: --model:")
    assert "qsim-hooks[vision]" in lines[0] and "pip install -e '.[vision]'" in lines[0]
    assert cli.main(["report", "--model", SMALL_CNN, "--json"]) == 0  # a model file needs no torchvision
    assert json.loads(capsys.readouterr().out)["model"] == "small_cnn"
