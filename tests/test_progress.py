"""qsim_hooks.progress.track: the items pass through in order; a bar is drawn only where asked and seen,
on stderr, and removed on every way out of the loop. Every long-running function (compare, sweep,
sensitivity, calibrate, capture, the command line, the digits example's training, the examples' steps and
the demo's LM training) draws one (a spy on rich's Progress counts what it showed), and nothing is written
off a terminal."""

import io
import json
import sys
from pathlib import Path

import pytest
import torch
from rich.console import Console
from torch import nn

import qsim_hooks as qh
from qsim_hooks import progress
from qsim_hooks.progress import track


class _TTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def _terminal() -> tuple[Console, io.StringIO]:
    buf = io.StringIO()
    return Console(file=buf, force_terminal=True, width=80), buf


def test_a_terminal_gets_a_transient_bar_with_the_count():
    con, buf = _terminal()
    with track([3, 1, 2], "working", console=con) as it:
        assert list(it) == [3, 1, 2]
    text = buf.getvalue()
    assert "working" in text and "0/3" in text and "3/3" in text  # drawn at the start, finished at the end
    assert text.endswith("\x1b[2K")  # and erased: the line is cleared when the block ends


def test_without_a_length_the_bar_counts_up():
    con, buf = _terminal()
    with track(iter("ab"), "gen", console=con) as it:
        assert list(it) == ["a", "b"]
    assert "2/?" in buf.getvalue()
    con, buf = _terminal()
    with track(iter("ab"), "given", total=2, console=con) as it:
        list(it)
    assert "2/2" in buf.getvalue()


def test_no_bar_where_nobody_watches_or_when_switched_off():
    pipe = io.StringIO()
    with track([1, 2], "piped", console=Console(file=pipe)) as it:  # enabled=None: not a terminal
        assert list(it) == [1, 2]
    assert pipe.getvalue() == ""
    con, buf = _terminal()
    items = [1, 2]
    with track(items, "off", enabled=False, console=con) as it:
        assert list(it) == items
    assert buf.getvalue() == ""
    forced = io.StringIO()
    with track([1], "forced", enabled=True, console=Console(file=forced)) as it:
        assert list(it) == [1]
    assert "forced" not in forced.getvalue()  # rich cannot draw a transient bar into a file


def test_the_default_console_is_stderr_not_stdout(monkeypatch, capsys):
    fake = _TTY()
    monkeypatch.setattr(sys, "stderr", fake)
    with track([1, 2], "on stderr") as it:
        assert list(it) == [1, 2]
    assert "on stderr" in fake.getvalue() and "2/2" in fake.getvalue()
    assert capsys.readouterr().out == ""


def test_the_bar_stops_on_an_exception_and_on_a_break():
    con, buf = _terminal()
    with pytest.raises(RuntimeError, match="boom"):
        with track([1, 2, 3], "failing", console=con) as it:
            for x in it:
                if x == 2:
                    raise RuntimeError("boom")
    with track([1, 2, 3], "breaking", console=con) as it:
        for x in it:
            if x == 2:
                break
    # rich allows one live display per console: a bar left running would make this one raise
    with track([1], "after", console=con) as it:
        assert list(it) == [1]
    text = buf.getvalue()
    assert "1/3" in text and "after" in text
    assert text.count("\x1b[?25h") == 3  # the cursor was given back after each of the three bars


# ---------------------------------------------------------------------------
# every long-running function draws a bar (a spy on rich's Progress), and nothing off a terminal
# ---------------------------------------------------------------------------

@pytest.fixture
def spy(monkeypatch):
    """Every Progress made: ``[(description, total, completed when removed or stopped), ...]`` per bar."""
    bars = []

    class Recording(progress.Progress):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.seen = {}
            bars.append(self.seen)

        def add_task(self, description, total=None, **kwargs):
            tid = super().add_task(description, total=total, **kwargs)
            self.seen[tid] = [description, total, 0]
            return tid

        def advance(self, task_id, advance=1):
            self.seen[task_id][2] += advance
            super().advance(task_id, advance)

    monkeypatch.setattr(progress, "Progress", Recording)
    return bars


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3)).eval()


BATCHES = [torch.randn(4, 8, generator=torch.Generator().manual_seed(i)) for i in range(3)]
CFG = qh.QuantConfig(input="int8", weight="int4")
LONG = {
    "compare": lambda p: qh.compare(_net(), CFG, batches=BATCHES, progress=p),
    "sweep": lambda p: qh.sweep(_net(), CFG, ["int8", "e4m3"], batches=BATCHES, progress=p),
    "sensitivity": lambda p: qh.sensitivity(_net(), CFG, batches=BATCHES, progress=p),
    "calibrate": lambda p: qh.calibrate(_net(), CFG, BATCHES, progress=p),
    "calibrate-loop": lambda p: qh.calibrate(_net(), CFG, forward_loop=lambda m: [m(b) for b in BATCHES],
                                             progress=p),
    "capture": lambda p: qh.capture(_net(), CFG, batches=BATCHES, points=["0:input"], progress=p),
}
#: what the bars counted: (description, total, steps done) of every line, per bar
EXPECTED = {
    "compare": [[("full precision", 3, 3)], [("simulated", 3, 3)]],
    "sweep": [[("sweep", 2, 2), ("simulated", 3, 3), ("simulated", 3, 3)]],  # the batches nest in the sweep's bar
    "sensitivity": [[("sensitivity (one)", 2, 2), ("simulated", 3, 3), ("simulated", 3, 3)]],
    "calibrate": [[("calibrating", 3, 3)]],
    "calibrate-loop": [[("calibrating", None, 3)]],  # counts the model's calls
    "capture": [[("capturing", 3, 3)]],
}


@pytest.mark.parametrize("name", list(LONG))
def test_each_long_function_draws_a_bar_when_asked(name, spy, eager_kernels):
    LONG[name](True)
    got = [[tuple(v) for v in bar.values()] for bar in spy]
    if name in ("sweep", "sensitivity"):  # the full-precision reference ran first, with a bar of its own
        assert got[0] == [("full precision", 3, 3)]
        got = got[1:]
    assert got == EXPECTED[name]


@pytest.mark.parametrize("name", list(LONG))
def test_off_a_terminal_nothing_is_written(name, spy, capfd, eager_kernels):
    LONG[name](None)  # the default: a bar only when stderr is a terminal (here it is captured)
    out, err = capfd.readouterr()
    assert out == "" and err == "" and spy == []
    LONG[name](False)
    assert spy == []


def test_the_command_line_draws_bars_on_a_terminal_and_not_with_no_progress(spy, monkeypatch, capsys):
    from qsim_hooks import cli

    model = Path(__file__).resolve().parents[1] / "examples" / "small_cnn.py"
    monkeypatch.setenv("QSIM_HOOKS_BACKEND", "eager")
    fake = _TTY()
    monkeypatch.setattr(sys, "stderr", fake)
    assert cli.main(["sensitivity", "--model", str(model), "--json"]) == 0
    assert [v[0] for bar in spy for v in bar.values()][:2] == ["full precision", "sensitivity (one)"]
    assert json.loads(capsys.readouterr().out)["mode"] == "one"  # stdout stays data
    spy.clear()
    assert cli.main(["sensitivity", "--model", str(model), "--json", "--no-progress"]) == 0
    assert spy == []


def test_the_digits_example_trains_with_a_bar(spy, monkeypatch):
    from examples.digits_cnn import digits

    monkeypatch.setattr(sys, "stderr", _TTY())
    m = digits.make_model(0)
    x, y = torch.randn(40, 1, 8, 8), torch.randint(0, 10, (40,))
    digits.train(m, x, y, epochs=3, lr=1e-3, batch_size=16, seed=0)
    assert [tuple(v) for bar in spy for v in bar.values()] == [("training", 3, 3)]


def test_the_examples_steps_are_the_librarys_bar_with_the_running_step_under_it(spy, monkeypatch, capfd):
    from examples._shared import steps

    monkeypatch.setattr(sys, "stderr", _TTY())
    with steps("evaluation", 3) as step:
        for label in ("int8", "e4m3", "report"):
            step(label)
    assert [[tuple(v) for v in bar.values()] for bar in spy] == [
        [("evaluation", 3, 3), ("int8", None, 0), ("e4m3", None, 0), ("report", None, 0)]]
    spy.clear()
    monkeypatch.undo()  # stderr captured again: not a terminal, so no bar and nothing written
    with steps("evaluation", 2) as step:
        step("a")
        step("b")
    with steps("evaluation", 2, enabled=False) as step:
        step("a")
    assert spy == [] and capfd.readouterr() == ("", "")


def test_the_demos_lm_training_shows_a_bar_on_a_terminal_and_nothing_off_it(spy, monkeypatch, capfd):
    pytest.importorskip("transformers")
    import dataclasses

    from examples.tiny_lm import train as T

    spec = dataclasses.replace(T.SMOKE_SPEC, steps=3)
    ids = torch.randint(0, 256, (400,), generator=torch.Generator().manual_seed(0))
    monkeypatch.setattr(sys, "stderr", _TTY())
    T.train(T.build_model(spec), ids, spec)
    bar, = spy
    assert list(bar.values())[0] == ["training the tiny LM", 3, 3]
    spy.clear()
    monkeypatch.undo()
    T.train(T.build_model(spec), ids, spec)
    assert spy == [] and capfd.readouterr() == ("", "")
