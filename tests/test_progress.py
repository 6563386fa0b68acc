"""qsim_hooks.progress.track: the items pass through in order; a bar is drawn only where asked and seen,
on stderr, and removed on every way out of the loop."""

import io
import sys

import pytest
from rich.console import Console

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
