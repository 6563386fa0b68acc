"""The qsim-hooks command line: every subcommand end to end in a subprocess, output that parses,
bad invocations that exit non-zero with one line on stderr and no traceback."""

import csv
import io
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from qsim_hooks import cli

SAMPLES = "4096"


def run_cli(*args, check_rc=None):
    env = {k: v for k, v in os.environ.items() if k != "QSIM_HOOKS_DEBUG"}
    env["COLUMNS"] = "120"
    proc = subprocess.run([sys.executable, "-m", "qsim_hooks", *args], capture_output=True, text=True,
                          env=env, timeout=300)
    if check_rc is not None:
        assert proc.returncode == check_rc, proc.stderr
    return proc



def assert_one_line_error(proc, code=2):
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("qsim-hooks") and "error:" in lines[0]
    assert proc.stdout == ""
    return lines[0]


# ---------------------------------------------------------------------------
# subcommands, end to end
# ---------------------------------------------------------------------------
@pytest.mark.slow
def test_formats_table():
    proc = run_cli("formats", "--samples", SAMPLES, check_rc=0)
    for name, mx in (("e4m3", "448"), ("e5m2", "57344"), ("e2m1", "6"), ("int8", "127")):
        line = next(ln for ln in proc.stdout.splitlines() if ln.split()[:1] == [name])
        assert mx in line.split()
    assert "SQNR" in proc.stdout


@pytest.mark.slow
def test_formats_json_parses():
    from qsim_hooks import formats

    proc = run_cli("formats", "--json", "--samples", SAMPLES, check_rc=0)
    rows = json.loads(proc.stdout)  # strict JSON: no bare Infinity
    assert [r["name"] for r in rows] == formats.names()
    by = {r["name"]: r for r in rows}
    assert by["e4m3"]["max"] == 448.0 and by["e4m3"]["bits"] == 8
    assert by["e5m2"]["min_subnormal"] == 2.0**-16
    assert by["fp32"]["sqnr_db"] == "inf"
    assert 30 < by["e4m3"]["sqnr_db"] < 33


@pytest.mark.slow
def test_formats_csv_parses_with_names():
    proc = run_cli("formats", "--csv", "--names", "e4m3, int8,e3m4", "--samples", SAMPLES, check_rc=0)
    rows = list(csv.DictReader(io.StringIO(proc.stdout)))
    assert [r["name"] for r in rows] == ["e4m3", "int8", "e3m4"]
    assert list(rows[0]) == ["name", "bits", "max", "min_subnormal", "spacing_at_1", "granularity",
                             "sqnr_db"]
    assert float(rows[2]["max"]) == 15.5
    assert int(rows[1]["bits"]) == 8
    assert all(math.isfinite(float(r["sqnr_db"])) for r in rows)


def test_help_and_version():
    proc = run_cli("--help", check_rc=0)
    for name in cli.COMMANDS:
        assert name in proc.stdout
    proc = run_cli("formats", "--help", check_rc=0)
    assert "--json" in proc.stdout and "--names" in proc.stdout
    from qsim_hooks import __version__

    assert run_cli("--version", check_rc=0).stdout.strip() == f"qsim-hooks {__version__}"


def test_console_script_is_installed():
    script = Path(sys.executable).parent / "qsim-hooks"
    if not script.exists():
        pytest.skip("qsim-hooks script not installed in this environment")
    proc = subprocess.run([str(script), "formats", "--names", "e2m1", "--json", "--samples", "64"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)[0]["max"] == 6.0


# ---------------------------------------------------------------------------
# bad invocations
# ---------------------------------------------------------------------------
def test_unknown_format_name_in_a_subprocess():
    line = assert_one_line_error(run_cli("formats", "--names", "e4m3,e4m4x"))
    assert "e4m4x" in line and "--names" in line


def test_unknown_command_in_a_subprocess():
    line = assert_one_line_error(run_cli("nosuchcommand"))
    assert "nosuchcommand" in line


BAD = {
    "unknown-format": (["formats", "--names", "fp7"], "fp7"),
    "format-out-of-range": (["formats", "--names", "e9m2"], "exp_bits"),
    "empty-names": (["formats", "--names", ","], "--names"),
    "zero-samples": (["formats", "--samples", "0"], "--samples"),
    "text-samples": (["formats", "--samples", "many"], "--samples"),
    "json-and-csv": (["formats", "--json", "--csv"], "--csv"),
    "unknown-option": (["formats", "--bogus"], "--bogus"),
    "no-model": (["report"], "--model"),
    "removed-demo-command": (["demo"], "'demo'"),
    "no-command": ([], "no command"),
}


@pytest.mark.parametrize("argv,needle", list(BAD.values()), ids=list(BAD))
def test_bad_invocation_one_line_exit_2(argv, needle, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("qsim-hooks") and needle in lines[0]


def test_failure_while_running_is_one_line_exit_1(monkeypatch, capsys):
    from qsim_hooks import stats

    def boom(*args, **kwargs):
        raise RuntimeError("something broke\nwith a second line")

    monkeypatch.delenv("QSIM_HOOKS_DEBUG", raising=False)
    monkeypatch.setattr(stats, "format_rows", boom)
    assert cli.main(["formats"]) == 1
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "RuntimeError: something broke with a second line" in lines[0]

    monkeypatch.setenv("QSIM_HOOKS_DEBUG", "1")  # the traceback, on request
    with pytest.raises(RuntimeError):
        cli.main(["formats"])


def test_every_command_has_arguments_and_a_runner(capsys):
    parser = cli.build_parser()
    for name, cmd in cli.COMMANDS.items():
        assert callable(cmd.add_arguments) and callable(cmd.run) and cmd.help
        argv = [name] if name in ("formats", "presets") else [name, "--model", "model.py"]  # model commands need one
        assert parser.parse_args(argv).command == name
        with pytest.raises(SystemExit) as exc:
            parser.parse_args([name, "--help"])
        assert exc.value.code == 0
        text = "".join(capsys.readouterr().out.split())  # argparse wraps lines: compare without white space
        assert text.startswith(f"usage:qsim-hooks{name}") and "".join(cmd.help.split()) in text
