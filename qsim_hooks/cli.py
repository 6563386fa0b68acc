"""The ``qsim-hooks`` command line (also ``python -m qsim_hooks``).

Each subcommand is a :class:`Command` in :data:`COMMANDS`: a help line, a
function that adds its arguments to an argparse parser, and a function that
runs it and returns an exit code. Adding a subcommand is adding one entry.

Data comes from :mod:`qsim_hooks.stats`, text from :mod:`qsim_hooks.report`;
this module only parses arguments and routes output. Exit codes follow
argparse: 0 success, 2 a bad invocation (unknown option, unknown format name,
bad value, a model name or a model/config file that cannot be used), 1 a
failure while running (the user's model file raising included). Every error is one line on stderr;
set ``QSIM_HOOKS_DEBUG=1`` to get the traceback of an unexpected one.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

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
DEMO_EVALUATIONS = ("digits", "sentences")


def _demo_evaluations(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    bad = [n for n in names if n not in DEMO_EVALUATIONS]
    if bad:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list of {', '.join(DEMO_EVALUATIONS)}, "
                                         f"got {text!r}")
    return names


def _demo_arguments(p: argparse.ArgumentParser) -> None:
    _add_sample_arguments(p)
    p.add_argument("--no-model", action="store_true", help="only the formats table, no model run")
    p.add_argument("--skip", type=_demo_evaluations, default=[], metavar="NAME[,NAME]",
                   help="leave out evaluations: digits (the CNN trained on scikit-learn's digits), sentences "
                        "(all-MiniLM-L6-v2 embeddings)")


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
        _demo_models(console, args.seed, [n for n in DEMO_EVALUATIONS if n not in args.skip])
    return 0


def _demo_models(console: Console, seed: int, which: list[str]) -> None:
    """The real-weight evaluations of :mod:`qsim_hooks.demos` (examples/digits_cnn, examples/sentence_embeddings)."""
    import dataclasses

    if not console.is_terminal and "COLUMNS" not in os.environ:
        console = Console(width=160)  # a pipe or a file: room for the per-point tables' module names
    if "digits" in which:
        from .demos import digits

        digits.render(digits.run(dataclasses.replace(digits.Settings(), seed=seed)), console)
    if "sentences" in which:
        from .demos import sentences

        try:
            result = sentences.run()
        except sentences.ModelUnavailable as exc:
            console.print(f"all-MiniLM-L6-v2 evaluation skipped: {exc}", markup=False, highlight=False)
            return
        sentences.render(result, console)


# ---------------------------------------------------------------------------
# report, sweep, sensitivity: a model, a config, an analysis
# ---------------------------------------------------------------------------
class UsageError(CommandError):
    """A bad invocation found only while running (a model name, a file it names): exit code 2."""


#: the simulation of ``report`` and ``sensitivity`` when no config is given (INT-FP-QSim's default)
DEFAULT_SIMULATION = {"input": "e4m3", "weight": "e4m3", "output": "fp16"}


def _format_or_none(text: str) -> str:
    """A format name checked against the registry, or ``none`` (full precision)."""
    if text.strip().lower() == "none":
        return "none"
    if "," in text:
        raise argparse.ArgumentTypeError(f"expected one format name (or 'none'), got {text!r}")
    return _format_names(text)[0]


def _roles(text: str) -> list[str]:
    from .config import ROLES

    roles = [r.strip() for r in text.split(",") if r.strip()]
    bad = [r for r in roles if r not in ROLES]
    if bad or not roles:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list of {', '.join(ROLES)}, got {text!r}")
    return roles


def _points(text: str) -> list[str]:
    pts = [p.strip() for p in text.split(",") if p.strip()]
    if not pts:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list of points, got {text!r}")
    return pts


def _model_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model", default="demo", metavar="NAME|FILE.py",
                   help="'demo' (default: a small built-in CNN on synthetic input), a torchvision classification "
                        "model name (e.g. resnet18; random weights, synthetic N(0,1) images), or a Python file "
                        "that defines model (or build_model()) and batches (or get_batches()), and optionally "
                        "metric(model, batches) -> float, forward(model, batch), output(model_output) -> tensor")
    g.add_argument("--batch", type=_positive_int, default=8, metavar="N",
                   help="synthetic batch size for demo/torchvision models (default 8)")
    g.add_argument("--size", type=_positive_int, default=None, metavar="PIXELS",
                   help="synthetic image size (default 32 for demo, 224 for torchvision models)")
    g.add_argument("--batches", type=_positive_int, default=1, metavar="N",
                   help="number of synthetic batches (default 1); statistics merge exactly over all")
    g.add_argument("--seed", type=int, default=0, help="seed of the random weights and synthetic data (default 0)")


def _config_arguments(p: argparse.ArgumentParser, default: str) -> None:
    """``--config`` and the role flags; ``default`` says what applies when neither is given."""
    g = p.add_argument_group("simulation")
    g.add_argument("--config", metavar="FILE", default=None,
                   help="a .toml or .json file with the keys of QuantConfig.from_dict: input, weight, output "
                        "(format names or 'none'), rules (a list of tables: match, input, weight, output, "
                        "*_scaling, enabled, name), strict, seed")
    for role in ("input", "weight", "output"):
        g.add_argument(f"--{role}", type=_format_or_none, default=None, metavar="FORMAT",
                       help=f"the {role} format of every layer (or 'none'); overrides the config file's "
                            f"(neither given: {default})")
    g.add_argument("--calibration", metavar="FILE.json", default=None,
                   help="static scales: a calibration saved by qsim_hooks.Calibration.save (made with "
                        "qsim_hooks.calibrate for this model and config); points it lacks keep dynamic scales")


def _output_arguments(p: argparse.ArgumentParser) -> None:
    out = p.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="write the result as JSON on stdout")
    out.add_argument("--csv", action="store_true", help="write the rows as CSV on stdout")


def _load_model(args: argparse.Namespace) -> Any:
    from .modelsrc import ModelFileError, SourceError, load_model

    try:
        return load_model(args.model, batch=args.batch, size=args.size, batches=args.batches, seed=args.seed)
    except SourceError as exc:
        raise UsageError(f"--model: {exc}") from None
    except ModelFileError as exc:
        raise CommandError(f"{exc} (set QSIM_HOOKS_DEBUG=1 for the traceback)") from exc


def _build_config(args: argparse.Namespace, default: dict[str, Any] | None) -> Any:
    import dataclasses

    from .config import QuantConfig
    from .modelsrc import SourceError, load_config

    flags = {r: (None if v == "none" else v) for r in ("input", "weight", "output")
             if (v := getattr(args, r)) is not None}
    if args.config is not None:
        try:
            cfg = load_config(args.config)
        except SourceError as exc:
            raise UsageError(f"--config: {exc}") from None
        return dataclasses.replace(cfg, **flags) if flags else cfg
    if flags or default is None:
        return QuantConfig(**flags)
    return QuantConfig(**default)


def _load_calibration(args: argparse.Namespace, model: Any) -> Any:
    """The ``--calibration`` file, checked against the model; ``None`` without the option."""
    if args.calibration is None:
        return None
    from .calibration import Calibration

    try:
        return Calibration.load(args.calibration, model)
    except FileNotFoundError:
        raise UsageError(f"--calibration: file {args.calibration!r} not found") from None
    except (OSError, ValueError, TypeError) as exc:
        raise UsageError(f"--calibration: {exc}") from None


def _describe_config(cfg: Any) -> str:
    def name(f: Any) -> str:
        return "full precision" if f is None else f.name

    text = f"input {name(cfg.input)}, weight {name(cfg.weight)}, output {name(cfg.output)}"
    if cfg.rules:
        text += f"; {len(cfg.rules)} rule{'s' if len(cfg.rules) > 1 else ''}: " + ", ".join(
            r.name or f"rule[{i}]" for i, r in enumerate(cfg.rules))
    return text


def _report_arguments(p: argparse.ArgumentParser) -> None:
    _model_arguments(p)
    _config_arguments(p, "e4m3 inputs and weights, fp16 outputs")
    g = p.add_argument_group("the table")
    g.add_argument("--sort", choices=("model", "sqnr"), default="model",
                   help="row order: model order (default) or worst SQNR first")
    g.add_argument("--top", type=_positive_int, default=None, metavar="N", help="only the first N rows")
    g.add_argument("--group", type=_positive_int, default=None, metavar="DEPTH",
                   help="merge the points of each module-name prefix of DEPTH components (2: layer1.0.*), "
                        "SQNR from the summed powers")
    g.add_argument("--point", type=_points, default=None, metavar="P,Q",
                   help="only these points (input, weight, output, q, k, scores, probs, v, context)")
    h = p.add_argument_group("histograms")
    h.add_argument("--histogram", action="append", default=None, metavar="MODULE[:POINT]",
                   help="also draw the |x| distribution this point saw (or every point of this module), with "
                        "the format's limits marked, to a PNG (needs matplotlib); repeatable")
    h.add_argument("--plot-dir", default=".", metavar="DIR",
                   help="folder for the histogram PNGs (default: the current folder)")
    _output_arguments(p)


def _check_matplotlib(option: str) -> None:
    from .plots import _matplotlib

    try:
        _matplotlib()
    except ImportError as exc:
        raise UsageError(f"{option}: {exc}") from None


def _histograms(src: Any, cfg: Any, cal: Any, points: list[str], folder: str) -> list[str]:
    """Capture ``points`` on the simulated model and write one PNG each; returns the paths."""
    import re as _re
    from pathlib import Path

    from . import analysis
    from .plots import histogram

    cap = analysis.capture(src.model, cfg, batches=src.batches, points=points, forward=src.forward,
                           calibration=cal)
    paths = []
    for c in cap.values():
        stem = _re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{c.module or 'model'}_{c.tensor}")
        paths.append(str(histogram(c, Path(folder) / f"{stem}.png")))
    return paths


def _report_run(args: argparse.Namespace) -> int:
    from . import analysis, report

    if args.histogram:
        _check_matplotlib("--histogram")
    src = _load_model(args)
    cfg = _build_config(args, DEFAULT_SIMULATION)
    cal = _load_calibration(args, src.model)
    if args.histogram:  # a name that is no point of this model is a bad invocation: say so before any run
        from .session import plan

        try:
            analysis.select_points([(e.module, e.point, e.tensor) for e in plan(src.model, cfg).active()],
                                   args.histogram)
        except ValueError as exc:
            raise UsageError(f"--histogram: {exc}") from None
    res = analysis.compare(src.model, cfg, batches=src.batches, forward=src.forward, output=src.output,
                           metric=src.metric, calibration=cal, stats=True)
    options = {"sort": args.sort, "top": args.top, "point": args.point, "group": args.group}
    rows = report.select_stats(res.stats, **options)
    pngs = _histograms(src, cfg, cal, args.histogram, args.plot_dir) if args.histogram else []
    if args.json:
        sys.stdout.write(report.to_json({"model": src.name, "description": src.description,
                                         "config": _describe_config(cfg), "calibration": args.calibration,
                                         "summary": res.as_dict(stats=False), "points": rows,
                                         "histograms": pngs}))
    elif args.csv:
        keys = list(report.STATS_EXPORT_KEYS)
        if args.group is not None:
            keys = [k for k in keys if k != "decided_by"] + ["points"]
        sys.stdout.write(report.to_csv(rows, keys))
    else:
        console = _console()
        lines = [src.description, f"simulation: {_describe_config(cfg)}"]
        if cal is not None:
            lines.append(f"calibration: {args.calibration} ({cal.method}, {len(cal)} points with a static amax)")
        report.render_heading(f"qsim-hooks report: {src.name}", lines, console)
        report.render_compare(res, console, **options)
        for path in pngs:
            console.print(f"histogram written to {path}", markup=False, highlight=False)
    return 0


def _sweep_arguments(p: argparse.ArgumentParser) -> None:
    _model_arguments(p)
    _config_arguments(p, "full precision")
    g = p.add_argument_group("the sweep")
    g.add_argument("--formats", type=_format_names, default="fp16,bf16,e4m3,e5m2,int8,mxfp4,int4",
                   metavar="A,B,C", help="comma-separated format names (default fp16,bf16,e4m3,e5m2,int8,mxfp4,int4)")
    g.add_argument("--roles", type=_roles, default=["input", "weight"], metavar="R,S",
                   help="the roles each format is given (default input,weight; roles not listed keep the "
                        "config's formats, full precision without one)")
    g.add_argument("--plot", metavar="FILE.png", default=None,
                   help="also draw output SQNR per format to a PNG (needs matplotlib)")
    _output_arguments(p)


def _sweep_run(args: argparse.Namespace) -> int:
    from . import analysis, report

    if args.plot is not None:
        _check_matplotlib("--plot")
    src = _load_model(args)
    cfg = _build_config(args, None)
    cal = _load_calibration(args, src.model)
    rows = analysis.sweep(src.model, cfg, args.formats, batches=src.batches, roles=args.roles,
                          forward=src.forward, output=src.output, metric=src.metric, calibration=cal)
    if args.json:
        sys.stdout.write(report.to_json({"model": src.name, "description": src.description,
                                         "config": _describe_config(cfg), "rows": rows}))
    elif args.csv:
        sys.stdout.write(report.to_csv(rows))
    else:
        console = _console()
        report.render_heading(f"qsim-hooks sweep: {src.name}",
                              [src.description, f"each format on: {', '.join(args.roles)}; "
                                                f"the rest: {_describe_config(cfg)}"], console)
        report.render_sweep(rows, console)
    if args.plot is not None:
        from .plots import sweep_plot

        path = sweep_plot(rows, args.plot, title=f"{src.name}: output SQNR per format ({', '.join(args.roles)})")
        if not (args.json or args.csv):
            _console().print(f"plot written to {path}", markup=False, highlight=False)
    return 0


def _sensitivity_arguments(p: argparse.ArgumentParser) -> None:
    _model_arguments(p)
    _config_arguments(p, "e4m3 inputs and weights, fp16 outputs")
    g = p.add_argument_group("the ranking")
    g.add_argument("--mode", choices=("one", "all-but-one"), default="one",
                   help="'one' (default): each layer quantized alone, the rest in full precision, lowest "
                        "output SQNR first; 'all-but-one': everything quantized but that layer, the largest "
                        "recovery first")
    g.add_argument("--depth", type=_positive_int, default=None, metavar="N",
                   help="rank module-name prefixes of N components (blocks) instead of single layers")
    g.add_argument("--top", type=_positive_int, default=None, metavar="N", help="only the first N rows")
    _output_arguments(p)


def _sensitivity_run(args: argparse.Namespace) -> int:
    from . import analysis, report

    src = _load_model(args)
    cfg = _build_config(args, DEFAULT_SIMULATION)
    cal = _load_calibration(args, src.model)
    rows = analysis.sensitivity(src.model, cfg, batches=src.batches, mode=args.mode,
                                granularity="layer" if args.depth is None else args.depth,
                                forward=src.forward, output=src.output, calibration=cal, progress=True)
    rows = rows[:args.top] if args.top is not None else rows
    if args.json:
        sys.stdout.write(report.to_json({"model": src.name, "description": src.description,
                                         "config": _describe_config(cfg), "mode": args.mode, "rows": rows}))
    elif args.csv:
        sys.stdout.write(report.to_csv(rows))
    else:
        console = _console()
        report.render_heading(f"qsim-hooks sensitivity: {src.name}",
                              [src.description, f"simulation: {_describe_config(cfg)}"], console)
        report.render_sensitivity(rows, console)
    return 0


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
    "demo": Command("the demo: the formats table with SQNR on N(0,1) data, then two evaluations with real weights "
                    "and data (a CNN trained on scikit-learn's digits: post-training and QAT accuracy per format; "
                    "all-MiniLM-L6-v2 embeddings per format) with their per-point reports", _demo_arguments,
                    _demo_run),
    "report": Command("a model (demo, a torchvision name or your .py file) simulated under a config: output SQNR "
                      "against full precision, then one row per quantization point", _report_arguments, _report_run),
    "sweep": Command("a list of formats: output SQNR (and your metric) per format, optionally as a PNG plot",
                     _sweep_arguments, _sweep_run),
    "sensitivity": Command("which layers must stay in higher precision: each layer quantized alone (or all but "
                           "one), ranked by output SQNR", _sensitivity_arguments, _sensitivity_run),
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
    except UsageError as exc:
        if os.environ.get("QSIM_HOOKS_DEBUG"):
            raise
        return _fail(str(exc), 2)
    except (CommandError, ValueError, TypeError) as exc:
        if os.environ.get("QSIM_HOOKS_DEBUG"):
            raise
        return _fail(str(exc))
    except Exception as exc:  # noqa: BLE001 - the one place that turns crashes into one line
        if os.environ.get("QSIM_HOOKS_DEBUG"):
            raise
        return _fail(f"{type(exc).__name__}: {exc} (set QSIM_HOOKS_DEBUG=1 for the traceback)")
