"""The ``qsim-hooks`` command line (also ``python -m qsim_hooks``).

Each subcommand is a :class:`Command` in :data:`COMMANDS`: a help line, a
function that adds its arguments to an argparse parser, and a function that
runs it and returns an exit code. Adding a subcommand is adding one entry.

* :mod:`.formats` - ``formats``, the table of the named formats;
* :mod:`.presets` - ``presets``, the named recipes of ``--preset``;
* :mod:`.commands` - ``report``, ``sweep``, ``sensitivity`` on a model file or a
  torchvision name (:mod:`.models`: their shared options; :mod:`.histograms`: ``report --histogram``);
* :mod:`.search` - ``search``, mixed precision within a budget;
* :mod:`.base` - the parser, the errors and the argument types they share.

Data comes from :mod:`qsim_hooks.stats` and :mod:`qsim_hooks.analysis`, text
from :mod:`qsim_hooks.report`; this package only parses arguments and routes
output. Exit codes follow argparse: 0 success, 2 a bad invocation (unknown
option, unknown format name, bad value, a model name or a model/config file
that cannot be used, a config rule that matches nothing), 1 a failure while
running (the user's model file raising included, whatever it raises). Every
error is one line on stderr; set ``QSIM_HOOKS_DEBUG=1`` to get the traceback
of an unexpected one. PyTorch's "No CUDA runtime is found" log line (printed
when the compiler loads on a machine without a GPU) is not the user's business
here: :func:`main` drops that one record while it runs, and nothing else.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from .. import __version__
from . import commands, formats, presets, search
from .base import PROG, CommandError, Parser, UsageError, one_line

__all__ = ["main", "build_parser", "Command", "COMMANDS", "CommandError", "UsageError", "PROG"]


@dataclass(frozen=True)
class Command:
    """A subcommand: its help line, how it adds arguments, how it runs (returns the exit code)."""

    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


COMMANDS: dict[str, Command] = {
    "formats": Command(formats.HELP, formats.add_arguments, formats.run),
    "presets": Command(presets.HELP, presets.add_arguments, presets.run),
    "report": Command("a model (a torchvision name or your .py file) simulated under a config: output SQNR "
                      "against full precision, then one row per quantization point", commands.report_arguments,
                      commands.report_run),
    "sweep": Command("a list of formats: output SQNR (and your metric) per format, optionally as a PNG plot",
                     commands.sweep_arguments, commands.sweep_run),
    "sensitivity": Command("which layers must stay in higher precision: each layer quantized alone (or all but "
                           "one), ranked by output SQNR", commands.sensitivity_arguments, commands.sensitivity_run),
    "search": Command(search.HELP, search.search_arguments, search.search_run),
}


EPILOG = """first steps (nothing is downloaded; model names need the [vision] extra):
  qsim-hooks report --model resnet18 --size 64     # E4M3/E4M3/FP16, per point
  qsim-hooks report --model resnet18 --preset w8a8-int --sort sqnr --top 10
  qsim-hooks sweep --model resnet18 --size 64 --formats e4m3,int8,mxfp4,nvfp4
  qsim-hooks sensitivity --model examples/small_cnn.py --weight int4
  qsim-hooks presets                               # the recipes --preset takes
  qsim-hooks formats --names e4m3,int8,mxfp4       # what each format holds
--model also takes your own .py file: see 'qsim-hooks report --help'."""


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog=PROG, description="Simulate low-precision number formats on PyTorch models.",
                    epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    for name, cmd in COMMANDS.items():
        p = sub.add_parser(name, help=cmd.help, description=cmd.help)
        cmd.add_arguments(p)
    return parser


def _fail(message: str, code: int = 1) -> int:
    sys.stderr.write(f"{PROG}: error: {one_line(message)}\n")
    return code


class _NoCudaNotice(logging.Filter):
    """Drops PyTorch's "No CUDA runtime is found, using CUDA_HOME=..." record and lets every other one pass."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("No CUDA runtime is found")


@contextmanager
def _quiet_cuda_notice() -> Iterator[None]:
    logger = logging.getLogger("torch.utils.cpp_extension")
    f = _NoCudaNotice()
    logger.addFilter(f)
    try:
        yield
    finally:
        logger.removeFilter(f)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (the console script exits with it)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.error(f"no command given; choose one of: {', '.join(COMMANDS)}")
    with _quiet_cuda_notice():
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    try:
        return COMMANDS[args.command].run(args)
    except KeyboardInterrupt:
        return _fail("interrupted", 130)
    except BrokenPipeError:
        # the reader went away (| head): stop quietly, and keep Python from complaining at exit
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    except UsageError as exc:
        if os.environ.get("QSIM_HOOKS_DEBUG"):
            raise
        return _fail(str(exc), 2)
    except (CommandError, ValueError, TypeError) as exc:
        if os.environ.get("QSIM_HOOKS_DEBUG"):
            raise
        return _fail(str(exc))
    except BaseException as exc:  # the one place that turns crashes (SystemExit from a model file too) into one line
        if os.environ.get("QSIM_HOOKS_DEBUG"):
            raise
        return _fail(f"{type(exc).__name__}: {exc} (set QSIM_HOOKS_DEBUG=1 for the traceback)")
