"""The ``qsim-hooks`` command line (also ``python -m qsim_hooks``).

Each subcommand is a :class:`Command` in :data:`COMMANDS`: a help line, a
function that adds its arguments to an argparse parser, and a function that
runs it and returns an exit code. Adding a subcommand is adding one entry.

Data comes from :mod:`qsim_hooks.stats`, text from :mod:`qsim_hooks.report`;
this module only parses arguments and routes output. Exit codes follow
argparse: 0 success, 2 a bad invocation (unknown option, unknown format name,
bad value), 1 a failure while running. Every error is one line on stderr;
set ``QSIM_HOOKS_DEBUG=1`` to get the traceback of an unexpected one.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NoReturn

from rich.console import Console

__all__ = ["main", "build_parser", "Command", "COMMANDS"]

PROG = "qsim-hooks"


def _one_line(message: str) -> str:
    return " ".join(str(message).split())


class _Parser(argparse.ArgumentParser):
    """argparse, with errors as one line (no usage block) and exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {_one_line(message)} (see '{self.prog} --help')\n")


class CommandError(Exception):
    """A failure to report as one line with exit code 1 (no traceback)."""


# ---------------------------------------------------------------------------
# Argument types
# ---------------------------------------------------------------------------
def _positive_int(text: str) -> int:
    try:
        value = int(text.replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _format_names(text: str) -> list[str]:
    """``"e4m3,int8"`` -> ``["e4m3", "int8"]``, every name checked against the registry."""
    from . import formats

    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list of format names, got {text!r}")
    for name in names:
        try:
            formats.get(name)
        except (ValueError, TypeError) as exc:
            raise argparse.ArgumentTypeError(_one_line(str(exc))) from None
    return names


def _add_sample_arguments(p: argparse.ArgumentParser) -> None:
    from .stats import DEFAULT_SAMPLES

    p.add_argument("--samples", type=_positive_int, default=DEFAULT_SAMPLES, metavar="N",
                   help=f"N(0,1) samples the SQNR is measured on (default {DEFAULT_SAMPLES}; from "
                        "262144 on, the fused kernel is compiled first, which takes a while once)")
    p.add_argument("--seed", type=int, default=0, help="seed of the samples (default 0)")


def _console() -> Console:
    """stdout; 120 columns when it is not a terminal (a pipe or file) and COLUMNS is unset."""
    if not sys.stdout.isatty() and "COLUMNS" not in os.environ:
        return Console(width=120)
    return Console()


def _sqnr_caption(samples: int, seed: int) -> str:
    return (f"SQNR: each format applied to {samples} samples of N(0,1) (seed {seed}). "
            "Scaled formats (scaling other than 'cast'): max and steps in units of the scale.")


# ---------------------------------------------------------------------------
# formats
# ---------------------------------------------------------------------------
def _formats_arguments(p: argparse.ArgumentParser) -> None:
    out = p.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="write the rows as JSON")
    out.add_argument("--csv", action="store_true", help="write the rows as CSV")
    p.add_argument("--names", type=_format_names, default=None, metavar="A,B,C",
                   help="comma-separated format names (default: every named format); "
                        "any 'eXmY' or 'intN' works too")
    _add_sample_arguments(p)


def _formats_run(args: argparse.Namespace) -> int:
    from . import report, stats

    rows = stats.format_rows(args.names, samples=args.samples, seed=args.seed)
    if args.json:
        sys.stdout.write(report.to_json(rows))
    elif args.csv:
        sys.stdout.write(report.to_csv(rows, stats.FORMAT_ROW_KEYS))
    else:
        report.render_formats_table(rows, _console(), caption=_sqnr_caption(args.samples, args.seed))
    return 0


# ---------------------------------------------------------------------------
# demo
# ---------------------------------------------------------------------------
def _demo_arguments(p: argparse.ArgumentParser) -> None:
    _add_sample_arguments(p)
    p.add_argument("--no-model", action="store_true", help="only the formats table, no model run")


def _demo_run(args: argparse.Namespace) -> int:
    import torch

    from . import __version__, report, stats

    console = _console()
    report.render_heading(
        f"qsim-hooks {__version__}: the named number formats",
        [f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads",
         "Each format fake-quantizes N(0,1) data (quantize, then dequantize); higher SQNR, less noise."],
        console)
    rows = stats.format_rows(samples=args.samples, seed=args.seed)
    report.render_formats_table(rows, console, caption=_sqnr_caption(args.samples, args.seed))
    if not args.no_model:
        _demo_model(console, args.seed)
    return 0


def _demo_model(console: Console, seed: int) -> None:
    """A small torchvision model through a session: the per-point report and the output SQNR."""
    import torch
    import torchvision

    from . import QuantConfig, Rule, quantized, report, stats

    torch.manual_seed(seed)
    model = torchvision.models.resnet18(num_classes=10).eval()
    x = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(seed))
    cfg = QuantConfig(input="e4m3", weight="e4m3", output="fp16",  # INT-FP-QSim's default setting
                      rules=[Rule(match="layer4.*", weight="int4", weight_scaling="channel", name="layer4-int4"),
                             Rule(match="fc", enabled=False, name="fc-fp32")])
    with torch.no_grad():
        full = model(x)
        with quantized(model, cfg, stats=True) as qs:
            sim = model(x)
    report.render_heading(
        "resnet18 (random weights, 4 x 3 x 64 x 64 N(0,1) batch): E4M3 inputs/weights, FP16 outputs, "
        "INT4 per-channel weights in layer4, fc in full precision",
        [f"output SQNR vs full precision: {stats.sqnr_db(full, sim):.2f} dB; "
         f"{len(qs.points)} quantization points; the 12 with the worst SQNR:"], console)
    report.render_stats(qs.stats(), console, sort="sqnr", top=12,
                        title="resnet18: quantization points, worst SQNR first")


# ---------------------------------------------------------------------------
# The command table and main
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Command:
    """A subcommand: its help line, how it adds arguments, how it runs (returns the exit code)."""

    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


COMMANDS: dict[str, Command] = {
    "formats": Command("table of the named formats: bits, max, smallest subnormal, spacing at 1.0, "
                       "SQNR on N(0,1)", _formats_arguments, _formats_run),
    "demo": Command("the demo: the formats table with SQNR on N(0,1) data, then a small resnet18 through a "
                    "session with its per-point report", _demo_arguments, _demo_run),
}


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = _Parser(prog=PROG, description="Simulate low-precision number formats on PyTorch models.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    for name, cmd in COMMANDS.items():
        p = sub.add_parser(name, help=cmd.help, description=cmd.help)
        cmd.add_arguments(p)
    return parser


def _fail(message: str, code: int = 1) -> int:
    sys.stderr.write(f"{PROG}: error: {_one_line(message)}\n")
    return code


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (the console script exits with it)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.error(f"no command given; choose one of: {', '.join(COMMANDS)}")
    try:
        return COMMANDS[args.command].run(args)
    except KeyboardInterrupt:
        return _fail("interrupted", 130)
    except BrokenPipeError:
        # the reader went away (| head): stop quietly, and keep Python from complaining at exit
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    except (CommandError, ValueError, TypeError) as exc:
        if os.environ.get("QSIM_HOOKS_DEBUG"):
            raise
        return _fail(str(exc))
    except Exception as exc:  # noqa: BLE001 - the one place that turns crashes into one line
        if os.environ.get("QSIM_HOOKS_DEBUG"):
            raise
        return _fail(f"{type(exc).__name__}: {exc} (set QSIM_HOOKS_DEBUG=1 for the traceback)")
