"""``qsim-hooks report``, ``sweep`` and ``sensitivity``: a model, a config, one analysis, its output.

Each command is a pair (``*_arguments`` adds its options, ``*_run`` runs it and returns the exit code);
the data comes from :mod:`qsim_hooks.analysis`, the text from :mod:`qsim_hooks.report`. Progress bars go
to stderr when it is a terminal (``--no-progress``: never); stdout carries the tables, JSON or CSV.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from .. import analysis, report
from ..config import ATTENTION_POINTS, ROLES
from ..modelsrc import ModelSource
from ..plots import sweep_plot
from ..propagation import ROW_KEYS
from ..rows import select_points
from ..session import plan
from .base import UsageError, accumulator_names, comma_list, console, format_names, positive_int, roles
from .histograms import check_matplotlib, write_histograms
from .models import (
    DEFAULT_SIMULATION,
    build_config,
    calibrator,
    check_config,
    config_arguments,
    describe_config,
    load_source,
    model_arguments,
    output_arguments,
)

__all__ = ["report_arguments", "report_run", "sweep_arguments", "sweep_run", "sensitivity_arguments",
           "sensitivity_run"]

_DEFAULT_TEXT = "e4m3 inputs and weights, fp16 outputs"
POINT_KINDS = (*ROLES, *ATTENTION_POINTS)
points = comma_list("point kinds", choices=POINT_KINDS)


def _write(args: argparse.Namespace, src: ModelSource, cfg: Any, data: dict[str, Any], rows: list[Any],
           csv_keys: list[str] | None = None) -> bool:
    """``--json`` (the header fields and ``data``) or ``--csv`` (the rows); False when neither was asked."""
    if args.json:
        sys.stdout.write(report.to_json({"model": src.name, "description": src.description,
                                         "config": describe_config(cfg), **data}))
    elif args.csv:
        sys.stdout.write(report.to_csv(rows, csv_keys))
    return bool(args.json or args.csv)


def _progress(args: argparse.Namespace) -> bool | None:
    return None if args.progress else False


def _calibration_line(args: argparse.Namespace, cal: Any) -> list[str]:
    if cal is None:
        return []
    source = args.calibration or f"--calibrate {args.calibrate} on the model's batches"
    return [f"calibration: {source} ({cal.method}, {len(cal)} points with a static amax)"]


# ---------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------
def report_arguments(p: argparse.ArgumentParser) -> None:
    model_arguments(p)
    config_arguments(p, _DEFAULT_TEXT)
    g = p.add_argument_group("the table")
    g.add_argument("--sort", choices=("model", "sqnr"), default="model",
                   help="row order: model order (default) or worst SQNR first")
    g.add_argument("--top", type=positive_int, default=None, metavar="N", help="only the first N rows")
    g.add_argument("--group", type=positive_int, default=None, metavar="DEPTH",
                   help="merge the points of each module-name prefix of DEPTH components (2: layer1.0.*), "
                        "SQNR from the summed powers")
    g.add_argument("--point", type=points, default=None, metavar="P,Q",
                   help=f"only these point kinds ({', '.join(POINT_KINDS)})")
    g.add_argument("--coverage", action="store_true",
                   help="also the GEMM coverage table: every distinct GEMM call, the point that covered each operand "
                        "(the coverage line is always printed; --json: the rows under \"coverage\")")
    g.add_argument("--propagated", action="store_true",
                   help="also where the error starts: per layer, in execution order, the SQNR of its output "
                        "against full precision (accumulated) and the SQNR it adds itself (its output vs its "
                        "full-precision function of the input it got); about one more forward per layer and "
                        "batch (--json: the rows under \"per_layer\"; --csv: these rows instead of the points)")
    h = p.add_argument_group("histograms")
    h.add_argument("--histogram", action="append", default=None, metavar="MODULE[:POINT]",
                   help="also draw the |x| distribution this point saw (or every point of this module), with "
                        "the format's limits marked, to a PNG (needs matplotlib); repeatable")
    h.add_argument("--plot-dir", default=".", metavar="DIR",
                   help="folder for the histogram PNGs (default: the current folder)")
    output_arguments(p)


def report_run(args: argparse.Namespace) -> int:
    if args.histogram:
        check_matplotlib("--histogram")
    src = load_source(args)
    cfg = build_config(args, DEFAULT_SIMULATION)
    check_config(args, src, cfg)
    active = [(e.module, e.point, e.tensor) for e in plan(src.model, cfg).active()]
    if args.point is not None and not any(k[1] in args.point for k in active):
        have = ", ".join(dict.fromkeys(k[1] for k in active)) or "none"
        raise UsageError(f"--point {','.join(args.point)}: this model has no such quantization point under this "
                         f"config; it has: {have}")
    if args.histogram:  # a name that is no point of this model is a bad invocation: say so before any run
        try:
            select_points(active, args.histogram)
        except ValueError as exc:
            raise UsageError(f"--histogram: {exc}") from None
    cal = calibrator(args, src)(cfg)
    res = analysis.compare(src.model, cfg, batches=src.batches, forward=src.forward, output=src.output,
                           metric=src.metric, calibration=cal, stats=True, per_layer=args.propagated,
                           progress=_progress(args))
    options = {"sort": args.sort, "top": args.top, "point": args.point, "group": args.group}
    rows = report.select_stats(res.stats, **options)
    pngs = write_histograms(src, cfg, cal, args.histogram, args.plot_dir) if args.histogram else []
    keys = list(report.STATS_EXPORT_KEYS)
    if args.group is not None:
        keys = [k for k in keys if k != "decided_by"] + ["points"]
    data = {"calibration": args.calibration or args.calibrate, "summary": res.as_dict(stats=False),
            "points": rows, "histograms": pngs}
    if args.coverage:
        data["coverage"] = res.coverage_rows
    if res.per_layer is not None:
        data["per_layer"], data["per_layer_notes"] = res.per_layer.rows, res.per_layer.notes
        if args.csv:
            rows, keys = res.per_layer.rows, list(ROW_KEYS)
    if not _write(args, src, cfg, data, rows, keys):
        con = console()
        lines = [src.description, f"simulation: {describe_config(cfg)}", *_calibration_line(args, cal)]
        report.render_heading(f"qsim-hooks report: {src.name}", lines, con)
        res.render(con, coverage=args.coverage, **options)
        for path in pngs:
            con.print(f"histogram written to {path}", markup=False, highlight=False)
    return 0


# ---------------------------------------------------------------------------
# sweep
# ---------------------------------------------------------------------------
_SWEEP_FORMATS = "fp16,bf16,e4m3,e5m2,int8,mxfp4,int4"


def sweep_arguments(p: argparse.ArgumentParser) -> None:
    model_arguments(p)
    config_arguments(p, "full precision")
    g = p.add_argument_group("the sweep")
    g.add_argument("--formats", type=format_names, default=_SWEEP_FORMATS, metavar="A,B,C",
                   help=f"comma-separated format names (default {_SWEEP_FORMATS})")
    g.add_argument("--roles", type=roles, default=["input", "weight"], metavar="R,S",
                   help="the roles each format is given (default input,weight; roles not listed keep the "
                        "config's formats, full precision without one)")
    g.add_argument("--accumulators", type=accumulator_names, default=None, metavar="A,B",
                   help="also sweep these accumulators (fp32, fp16, bf16, hopper_fp8, int24, ...; 'none': exact "
                        "sums): each format runs once per accumulator")
    g.add_argument("--plot", metavar="FILE.png", default=None,
                   help="also draw output SQNR per format to a PNG (needs matplotlib)")
    output_arguments(p)


def sweep_run(args: argparse.Namespace) -> int:
    if args.plot is not None:
        check_matplotlib("--plot")
    src = load_source(args)
    cfg = build_config(args, None)
    check_config(args, src, cfg)
    rows = analysis.sweep(src.model, cfg, args.formats, batches=src.batches, roles=args.roles,
                          forward=src.forward, output=src.output, metric=src.metric,
                          calibration=calibrator(args, src), progress=_progress(args),
                          accumulators=None if args.accumulators is None else
                          [None if a == "none" else a for a in args.accumulators])
    if not _write(args, src, cfg, {"rows": rows.rows}, rows.rows):
        con = console()
        rest = tuple(r for r in ROLES if r not in args.roles)
        lines = [src.description, f"each format on: {', '.join(args.roles)}"
                 + (f"; the rest: {describe_config(cfg, rest)}" if rest or cfg.rules else "")]
        if args.calibrate:
            lines.append(f"static scales: --calibrate {args.calibrate} for each format, on the model's batches")
        report.render_heading(f"qsim-hooks sweep: {src.name}", lines, con)
        rows.render(con)
    if args.plot is not None:
        path = sweep_plot(rows, args.plot, title=f"{src.name}: output SQNR per format ({', '.join(args.roles)})")
        if not (args.json or args.csv):
            console().print(f"plot written to {path}", markup=False, highlight=False)
    return 0


# ---------------------------------------------------------------------------
# sensitivity
# ---------------------------------------------------------------------------
def sensitivity_arguments(p: argparse.ArgumentParser) -> None:
    model_arguments(p)
    config_arguments(p, _DEFAULT_TEXT)
    g = p.add_argument_group("the ranking")
    g.add_argument("--mode", choices=analysis.SENSITIVITY_MODES, default="one",
                   help="'one' (default): each layer quantized alone, the rest in full precision, lowest "
                        "output SQNR first; 'all-but-one': everything quantized but that layer, the largest "
                        "recovery first")
    g.add_argument("--depth", type=positive_int, default=None, metavar="N",
                   help="rank module-name prefixes of N components (blocks) instead of single layers")
    g.add_argument("--top", type=positive_int, default=None, metavar="N", help="only the first N rows")
    output_arguments(p)


def sensitivity_run(args: argparse.Namespace) -> int:
    src = load_source(args)
    cfg = build_config(args, DEFAULT_SIMULATION)
    check_config(args, src, cfg)
    cal = calibrator(args, src)(cfg)  # a point's scale does not depend on which other layers are quantized
    res = analysis.sensitivity(src.model, cfg, batches=src.batches, mode=args.mode,
                               granularity="layer" if args.depth is None else args.depth,
                               forward=src.forward, output=src.output, metric=src.metric, calibration=cal,
                               progress=_progress(args))
    rows = res.rows[:args.top] if args.top is not None else res.rows
    if not _write(args, src, cfg, {"mode": args.mode, "rows": rows}, rows):
        con = console()
        report.render_heading(f"qsim-hooks sensitivity: {src.name}",
                              [src.description, f"simulation: {describe_config(cfg)}",
                               *_calibration_line(args, cal)], con)
        report.render_sensitivity(rows, con)
    return 0
