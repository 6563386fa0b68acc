"""``qsim-hooks search``, in process: the tables, the JSON (the same result as the library call), the config
file ``--config`` reads back, the PNG, bad input."""

from __future__ import annotations

import json
import textwrap

import pytest

import qsim_hooks as qh
from qsim_hooks import cli

MODEL_FILE = textwrap.dedent('''
    import torch
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 10)).eval()
    _gen = torch.Generator().manual_seed(0)
    batches = [torch.randn(8, 16, generator=_gen) for _ in range(2)]


    def metric(model, batches):  # agreement with the full-precision argmax (higher is better)
        with torch.no_grad():
            return float(sum((model(b).argmax(-1) == l).float().mean() for b, l in zip(batches, LABELS)))


    with torch.no_grad():
        LABELS = [model(b).argmax(-1) for b in batches]
''')


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    p = tmp_path_factory.mktemp("cli_search") / "two.py"
    p.write_text(MODEL_FILE)
    return p


def test_search_json_is_the_library_result(model_file, tmp_path, capsys):
    out = tmp_path / "res.json"
    assert cli.main(["search", "--model", str(model_file), "--candidates", "fp16,int8,mxfp4", "--budget", "6",
                     "--json", "--result", str(out)]) == 0
    data = json.loads(capsys.readouterr().out)
    assert json.loads(out.read_text()) == data
    ns: dict = {}
    exec(MODEL_FILE, ns)  # the same model and batches, seeded
    ref = qh.search(ns["model"], ns["batches"], candidates=["fp16", "int8", "mxfp4"], budget=6)
    assert data["chosen"]["choice"] == {k or "<model>": v for k, v in ref.choice.items()}
    assert data["chosen"]["cost_exact"] == str(ref.best.cost)


def test_search_tables(model_file, capsys):
    assert cli.main(["search", "--model", str(model_file), "--candidates", "e4m3,int8/int4", "--budget", "7",
                     "--cost", "bits"]) == 0
    text = capsys.readouterr().out
    assert "predicted vs measured" in text and "int8/int4" in text


@pytest.mark.parametrize("suffix", [".toml", ".json"])
def test_out_is_the_config_that_config_reads(model_file, tmp_path, capsys, suffix):
    cfg = tmp_path / f"cfg{suffix}"
    png = tmp_path / "front.png"
    assert cli.main(["search", "--model", str(model_file), "--candidates", "fp16,int8,mxfp4", "--budget", "6",
                     "--score", "kl", "--out", str(cfg), "--plot", str(png)]) == 0
    text = capsys.readouterr().out
    assert "Pareto front" in text and "KL nats" in text and f"written: {cfg}" in text
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    front = json.loads((tmp_path / "cfg.front.json").read_text())
    ns: dict = {}
    exec(MODEL_FILE, ns)
    ref = qh.search(ns["model"], ns["batches"], candidates=["fp16", "int8", "mxfp4"], budget=6, score="kl")
    assert front["chosen"]["choice"] == ref.choice and front["score"] == "kl"
    assert qh.plan(ns["model"], qh.QuantConfig.load(cfg)) == qh.plan(ns["model"], ref.config)
    # --config reads the file back: report under it measures what the search measured
    assert cli.main(["report", "--model", str(model_file), "--config", str(cfg), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)["summary"]
    assert summary["output_sqnr_db"] == pytest.approx(ref.measured_sqnr_db, abs=1e-9)


def test_score_metric_is_the_model_files(model_file, capsys):
    assert cli.main(["search", "--model", str(model_file), "--candidates", "int8,mxfp4", "--budget", "6",
                     "--score", "metric", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["score"] == "metric" and data["score_full"] == 2.0 and data["higher_is_better"]


@pytest.mark.parametrize("argv, code, needle", [
    (["--candidates", "fp16,nosuch", "--budget", "6"], 2, "nosuch"),
    (["--budget", "6", "--estimate", "fisher"], 2, "defines no loss(model, batch)"),
    (["--budget", "6", "--score", "snr"], 2, "invalid choice: 'snr'"),
    (["--budget", "6", "--out", "cfg.yaml"], 2, "must end in .toml or .json"),
    (["--budget", "1"], 1, "feasible range"),
    (["--budget", "nan"], 2, "finite"),
    ([], 2, "--budget is required"),
])
def test_search_bad_input(model_file, capsys, argv, code, needle):
    try:
        rc = cli.main(["search", "--model", str(model_file), *argv])
    except SystemExit as exc:  # argparse's own errors
        rc = exc.code
    assert rc == code
    assert needle in capsys.readouterr().err
