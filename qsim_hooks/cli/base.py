"""What every subcommand of the command line shares: the parser, the errors, the argument types, stdout.

Errors are one line: :class:`Parser` turns argparse's usage errors into one line with exit code 2,
:class:`UsageError` is a bad invocation found while running (exit 2), :class:`CommandError` a failure
while running (exit 1); :func:`qsim_hooks.cli.main` writes them.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

from rich.console import Console

from .. import formats
from ..accumulate import as_accumulator
from ..config import ROLES

__all__ = ["PROG", "one_line", "Parser", "CommandError", "UsageError", "positive_int", "comma_list",
           "format_names", "format_or_none", "roles", "console"]

PROG = "qsim-hooks"


def one_line(message: str) -> str:
    return " ".join(str(message).split())


class Parser(argparse.ArgumentParser):
    """argparse, with errors as one line (no usage block) and exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {one_line(message)} (see '{self.prog} --help')\n")


class CommandError(Exception):
    """A failure to report as one line with exit code 1 (no traceback)."""


class UsageError(CommandError):
    """A bad invocation found only while running (a model name, a file it names): exit code 2."""


def positive_int(text: str) -> int:
    try:
        value = int(text.replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def comma_list(what: str, *, choices: Sequence[str] | None = None,
               check: Callable[[str], None] | None = None) -> Callable[[str], list[str]]:
    """An argparse type: ``"a, b,c"`` -> ``["a", "b", "c"]``, at least one item, each in ``choices`` and
    accepted by ``check`` (which raises ``ValueError``/``TypeError`` with the reason)."""
    expected = f"a comma-separated list of {', '.join(choices) if choices is not None else what}"

    def parse(text: str) -> list[str]:
        items = [x.strip() for x in text.split(",") if x.strip()]
        if not items or (choices is not None and any(x not in choices for x in items)):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        for x in items if check is not None else ():
            try:
                check(x)
            except (ValueError, TypeError) as exc:
                raise argparse.ArgumentTypeError(one_line(str(exc))) from None
        return items

    parse.__name__ = what  # argparse names the type in some messages
    return parse


#: ``"e4m3,int8"`` -> ``["e4m3", "int8"]``, every name checked against the format registry
format_names = comma_list("format names", check=formats.get)
#: ``"fp16,hopper_fp8,none"`` -> names of accumulators (``none``: exact sums), each checked
accumulator_names = comma_list("accumulator names", check=lambda x: x == "none" or as_accumulator(x, "accumulator"))


def accumulator_name(text: str) -> str:
    """One accumulator name (checked), or ``none`` (exact sums)."""
    if "," in text:
        raise argparse.ArgumentTypeError(f"expected one accumulator name (or 'none'), got {text!r}")
    return accumulator_names(text)[0]


#: roles of a layer (``input,weight``)
roles = comma_list("roles", choices=ROLES)


def format_or_none(text: str) -> str:
    """A format name checked against the registry, or ``none`` (full precision)."""
    if text.strip().lower() == "none":
        return "none"
    if "," in text:
        raise argparse.ArgumentTypeError(f"expected one format name (or 'none'), got {text!r}")
    return format_names(text)[0]


def console(*, width: int = 120) -> Console:
    """stdout; ``width`` columns when it is not a terminal (a pipe or file) and COLUMNS is unset."""
    if not sys.stdout.isatty() and "COLUMNS" not in os.environ:
        return Console(width=width)
    return Console()
