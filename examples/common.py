"""What every example shares: the command line, the simulation, the full-precision-vs-simulated run, metrics.

An example builds a :class:`Task` (the model to instrument, a metric that evaluates it, a probe batch)
either from a local checkpoint and data set (``--checkpoint PATH --data PATH``) or, with ``--smoke``,
from a tiny random-initialised configuration and stand-in data it writes itself; :func:`run` then

1. optionally calibrates static scales (``--calibrate METHOD``, :func:`qsim_hooks.calibrate`),
2. evaluates the metric in full precision, then inside ``qsim_hooks.quantized`` (statistics on),
3. compares the model's output on the probe batches (:func:`qsim_hooks.compare`),
4. prints the per-point report (worst SQNR first) and the full-precision-vs-simulated table,

and returns the figures as a dict (tests assert on it; ``--json FILE`` writes it). The smoke mode goes
through the same data readers and metric code as the real evaluation, so neither rots. The metrics
(:mod:`examples.metrics`) and the smoke mode's stand-in files (:mod:`examples.standins`) are
re-exported here.

The default simulation is INT-FP-QSim's setting: E4M3 inputs and weights, FP16 outputs (attention
modules also get q, k, probs, v in E4M3 and scores, context in FP16).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .metrics import IoU, clip_score, perplexity, roc_auc, run_program
from .standins import read_lines, train_tokenizer, write_image_folder, write_json

__all__ = ["offline", "make_parser", "parse_args", "build_config", "describe_config", "Task", "run", "evaluate",
           "console", "workdir", "device_of", "HelpFormatter", "DEFAULTS", "METHODS",
           # re-exported from examples.metrics and examples.standins
           "perplexity", "run_program", "IoU", "clip_score", "roc_auc", "write_image_folder", "train_tokenizer",
           "read_lines", "write_json"]

#: INT-FP-QSim's default setting
DEFAULTS = {"input": "e4m3", "weight": "e4m3", "output": "fp16"}
METHODS = ("max", "percentile", "entropy", "mse")


def offline() -> None:
    """No network, no progress bars, quiet libraries: set before transformers/diffusers are imported."""
    for k, v in {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
                 "HF_HUB_DISABLE_PROGRESS_BARS": "1", "HF_HUB_DISABLE_TELEMETRY": "1",
                 "TOKENIZERS_PARALLELISM": "false", "TRANSFORMERS_VERBOSITY": "error",
                 "DIFFUSERS_VERBOSITY": "error", "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1"}.items():
        os.environ.setdefault(k, v)
    for name in ("transformers", "diffusers"):
        mod = sys.modules.get(name)
        if mod is not None:  # already imported (tests): quiet them through their own switch
            try:
                mod.utils.logging.set_verbosity_error()
                mod.utils.logging.disable_progress_bar()
            except AttributeError:
                pass


offline()


# ---------------------------------------------------------------------------
# The command line
# ---------------------------------------------------------------------------
def _format_arg(text: str) -> str:
    from qsim_hooks import formats

    if text.strip().lower() == "none":
        return "none"
    try:
        formats.get(text)
    except (ValueError, TypeError) as exc:
        raise argparse.ArgumentTypeError(" ".join(str(exc).split())) from None
    return text.strip().lower()


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return v


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a default only where there is one to show (not None/False) and the help does not say it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default in (None, False, argparse.SUPPRESS) or "default" in text:
            return text
        return super()._get_help_string(action)


def make_parser(prog: str, description: str, *, checkpoint: str, data: str) -> argparse.ArgumentParser:
    """The arguments every example takes; an example adds its own to the returned parser."""
    p = argparse.ArgumentParser(prog=prog, description=description, formatter_class=HelpFormatter)
    g = p.add_argument_group("what to run")
    g.add_argument("--smoke", action="store_true",
                   help="a tiny random-initialised model on stand-in data written to a temporary folder "
                        "(offline, seconds; what CI runs)")
    g.add_argument("--checkpoint", metavar="PATH", help=checkpoint)
    g.add_argument("--data", metavar="PATH", help=data)
    g.add_argument("--limit", type=_positive_int, default=None, metavar="N",
                   help="evaluate at most N items of the data set")
    g.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    g.add_argument("--seed", type=int, default=0, help="seed of random weights, stand-in data and sampling")
    g.add_argument("--threads", type=_positive_int, default=None, metavar="N",
                   help="torch CPU threads (default: torch's choice; 1 in smoke mode, tiny tensors gain nothing)")
    g.add_argument("--workdir", metavar="DIR", default=None,
                   help="smoke mode: write the stand-in data here and keep it (default: a temporary folder)")
    s = p.add_argument_group("the simulation (default: INT-FP-QSim's E4M3 inputs and weights, FP16 outputs)")
    for role in ("input", "weight", "output"):
        s.add_argument(f"--{role}", type=_format_arg, default=DEFAULTS[role], metavar="FORMAT",
                       help=f"format of every layer's {role} ('none': full precision)")
    for role in ("input", "weight", "output"):
        s.add_argument(f"--{role}-scaling", choices=("tensor", "channel", "block"), default=None,
                       help=f"scale the {role} format (floats are plain casts unless scaled)")
    s.add_argument("--calibrate", choices=METHODS, default=None, metavar="METHOD",
                   help=f"static calibration before evaluating: one of {', '.join(METHODS)} "
                        "(points with a scaled format: integers, or floats given --*-scaling)")
    s.add_argument("--calib-batches", type=_positive_int, default=4, metavar="N",
                   help="batches the calibration sees")
    s.add_argument("--percentile", type=float, default=99.99, help="for --calibrate percentile")
    o = p.add_argument_group("output")
    o.add_argument("--top", type=_positive_int, default=15, metavar="N",
                   help="rows of the per-point report (worst SQNR first)")
    o.add_argument("--json", metavar="FILE", default=None, help="also write the figures to FILE as JSON")
    return p


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse and check: ``--smoke``, or a checkpoint and a data path (both must exist)."""
    args = parser.parse_args(argv)
    if args.smoke:
        if args.checkpoint or args.data:
            parser.error("--smoke builds its own tiny model and data: leave out --checkpoint and --data")
    else:
        if not (args.checkpoint and args.data):
            parser.error("give --checkpoint PATH and --data PATH (local files; nothing is downloaded), "
                         "or --smoke for a tiny random model on stand-in data")
        for name in ("checkpoint", "data"):
            if not Path(getattr(args, name)).exists():
                parser.error(f"--{name} {getattr(args, name)}: no such file or directory")
    if not 0.0 < args.percentile <= 100.0:
        parser.error(f"--percentile {args.percentile}: must be in (0, 100]")
    threads = args.threads or (1 if args.smoke else None)
    if threads:
        import torch

        torch.set_num_threads(threads)
    if args.smoke and "QSIM_HOOKS_BACKEND" not in os.environ:
        # tiny tensors: compiling the fused kernels (seconds each) would cost more than it saves
        from qsim_hooks import formats

        formats.set_backend("eager")
    return args


def device_of(args: argparse.Namespace) -> Any:
    import torch

    if args.device:
        return torch.device(args.device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def build_config(args: argparse.Namespace, rules: Sequence[Any] = ()) -> Any:
    """The QuantConfig of the command line (+ an example's own rules, applied after)."""
    import qsim_hooks as qh

    roles = {r: (None if getattr(args, r) == "none" else getattr(args, r)) for r in ("input", "weight", "output")}
    scaling = {f"{r}_scaling": getattr(args, f"{r}_scaling") for r in ("input", "weight", "output")
               if getattr(args, f"{r}_scaling") is not None and roles[r] is not None}
    all_rules = [qh.Rule(name="--*-scaling", **scaling)] if scaling else []
    return qh.QuantConfig(**roles, rules=[*all_rules, *rules])


def describe_config(cfg: Any) -> str:
    def name(f: Any) -> str:
        return "full precision" if f is None else f.name

    text = f"inputs {name(cfg.input)}, weights {name(cfg.weight)}, outputs {name(cfg.output)}"
    if cfg.rules:
        text += "; rules: " + ", ".join(r.name or f"rule[{i}]" for i, r in enumerate(cfg.rules))
    return text


def console() -> Any:
    """stdout; 160 columns when it is not a terminal (a pipe, a file, a test) and COLUMNS is unset."""
    from rich.console import Console

    if not sys.stdout.isatty() and "COLUMNS" not in os.environ:
        return Console(width=160)
    return Console()


class workdir:
    """Context manager: ``--workdir`` (kept) or a temporary folder (removed) for stand-in data."""

    def __init__(self, args: argparse.Namespace, name: str) -> None:
        self.keep = args.workdir
        self.name = name
        self._tmp: tempfile.TemporaryDirectory | None = None

    def __enter__(self) -> Path:
        if self.keep:
            p = Path(self.keep)
            p.mkdir(parents=True, exist_ok=True)
            return p
        self._tmp = tempfile.TemporaryDirectory(prefix=f"qsim-{self.name}-")
        return Path(self._tmp.name)

    def __exit__(self, *exc: Any) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()


# ---------------------------------------------------------------------------
# The full-precision-vs-simulated run
# ---------------------------------------------------------------------------
@dataclass
class Task:
    """One evaluation, as :func:`run` needs it.

    Attributes:
        name: short name (``"opt"``), used in titles and the JSON.
        title: one line: the model and the data.
        model: the module the session instruments (for a pipeline, an ``nn.ModuleDict`` of its parts).
        metric_name: e.g. ``"perplexity"``.
        metric: runs the whole evaluation on ``model`` as it is (instrumented or not) -> the figure.
        higher_is_better: the metric's direction.
        probe: batches for :func:`qsim_hooks.compare` (output SQNR, max |error|, top-1 agreement).
        forward, output, top1: how a probe batch is fed and which output is compared (``qh.compare``).
        calibration_data: batches for ``--calibrate`` (default: ``probe``), fed by ``forward``.
        notes: lines printed under the title (what is a stand-in, what was left out).
        extra: more figures measured once (e.g. the code-execution harness check) -> ``(lines to print,
            {json key: value})``.
        rules: the example's own ``qh.Rule`` list, applied after the command line's.
    """

    name: str
    title: str
    model: Any
    metric_name: str
    metric: Callable[[], float]
    higher_is_better: bool
    probe: Sequence[Any]
    forward: Callable[[Any, Any], Any] | None = None
    output: Callable[[Any], Any] | None = None
    top1: bool | None = None
    calibration_data: Sequence[Any] | None = None
    notes: list[str] = field(default_factory=list)
    extra: Callable[[], tuple[list[str], dict[str, Any]]] | None = None
    rules: Sequence[Any] = ()


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        return f"{v:.4f}" if abs(v) < 1000 else f"{v:.1f}"
    return str(v)


def run(task: Task, args: argparse.Namespace) -> dict[str, Any]:
    """Calibrate (optional), evaluate full precision and simulated, compare, print; return the figures."""
    import torch

    import qsim_hooks as qh
    from qsim_hooks import report

    con = console()
    cfg = build_config(args, task.rules)
    mode = "smoke: tiny random-initialised model, stand-in data" if args.smoke else "evaluation"
    report.render_heading(f"{task.name}: {task.title}",
                          [f"mode: {mode}", f"simulation: {describe_config(cfg)}", *task.notes], con)

    calib = None
    calib_line = None
    if args.calibrate:
        data = list(task.calibration_data if task.calibration_data is not None else task.probe)
        calib = qh.calibrate(task.model, cfg, data, num_batches=args.calib_batches, method=args.calibrate,
                             percentile=args.percentile, forward=task.forward, progress=False)
        calib_line = (f"static calibration ({args.calibrate}"
                      f"{f' {args.percentile}' if args.calibrate == 'percentile' else ''}): "
                      f"{len(calib)} points calibrated on {min(len(data), args.calib_batches)} batches")
        if len(calib) == 0:
            calib_line += (" - none of the formats takes a scale (plain casts); use int formats or "
                           "--input-scaling/--weight-scaling tensor")

    t0 = time.perf_counter()
    with torch.no_grad():
        full = float(task.metric())
    t_full = time.perf_counter() - t0
    t0 = time.perf_counter()
    with qh.quantized(task.model, cfg, stats=True, calibration=calib) as qs, torch.no_grad():
        sim = float(task.metric())
    t_sim = time.perf_counter() - t0
    rows = qs.stats()
    cmp = qh.compare(task.model, cfg, batches=list(task.probe), forward=task.forward, output=task.output,
                     calibration=calib, stats=False, top1=task.top1)
    extra_lines, extra = task.extra() if task.extra is not None else ([], {})

    report.render_stats(rows, con, sort="sqnr", top=args.top,
                        title=f"{task.name}: the {min(args.top, len(rows))} of {len(rows)} quantization points "
                              "with the worst SQNR (statistics over the simulated evaluation)")
    diff = sim - full
    arrow = "higher is better" if task.higher_is_better else "lower is better"
    table_rows = [{"figure": f"{task.metric_name} ({arrow})", "full": _fmt(full), "sim": _fmt(sim),
                   "change": f"{diff:+.4f}" if math.isfinite(diff) else str(diff),
                   "time": f"{t_full:.1f} s / {t_sim:.1f} s"}]
    report.print_table(report.build_table(table_rows, (
        report.Column("figure", "figure", justify="left", style="bold"),
        report.Column("full", "full precision"),
        report.Column("sim", "simulated"),
        report.Column("change", "change"),
        report.Column("time", "time fp / sim"),
    ), title=f"{task.name}: full precision vs simulated"), con)
    lines = [f"probe ({len(task.probe)} batch{'es' if len(task.probe) != 1 else ''}): {report.compare_line(cmp)}"]
    if calib_line:
        lines.append(calib_line)
    lines += extra_lines
    for line in lines:
        con.print(line, markup=False, highlight=False)
    con.print()

    result = {"example": task.name, "mode": "smoke" if args.smoke else "evaluation",
              "config": describe_config(cfg), "metric": task.metric_name, "higher_is_better": task.higher_is_better,
              "metric_full": full, "metric_sim": sim, "seconds_full": t_full, "seconds_sim": t_sim,
              "output_sqnr_db": cmp.output_sqnr_db, "max_abs_error": cmp.max_abs_error,
              "top1_agreement": cmp.top1_agreement, "points": len(rows),
              "calibrated_points": None if calib is None else len(calib),
              "worst_points": [{k: r.get(k) for k in ("module", "point", "format", "sqnr_db")}
                               for r in report.select_stats(rows, sort="sqnr", top=5)], **extra}
    if args.json:
        Path(args.json).write_text(report.to_json(result))
    return result


def evaluate(args: argparse.Namespace, name: str, write_smoke: Callable[[Path, int], tuple[Path, Path]],
             build_task: Callable[[Path, Path, argparse.Namespace], Task]) -> dict[str, Any]:
    """:func:`run` on ``--checkpoint`` and ``--data``, or with ``--smoke`` on the stand-ins that
    ``write_smoke(folder, seed) -> (checkpoint, data)`` writes into the work folder first."""
    if args.smoke:
        with workdir(args, name) as root:
            ckpt, data = write_smoke(root, args.seed)
            return run(build_task(ckpt, data, args), args)
    return run(build_task(Path(args.checkpoint), Path(args.data), args), args)
