"""``qsim-hooks search``: one format per layer (or block) within a budget, verified, as tables or JSON.

Arguments and their checks here; the search is :func:`qsim_hooks.search`, the tables
:mod:`qsim_hooks.report_search`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..report_search import render_search
from ..search import COST_MODELS, Candidate, search
from .base import UsageError, comma_list, console, positive_int
from .models import build_config, config_arguments, describe_config, load_calibration, load_source, model_arguments

__all__ = ["HELP", "search_arguments", "search_run"]

HELP = ("mixed precision: the format of each layer (or block) with the best output SQNR within a cost budget "
        "(average weight bits or bit-ops), verified by a real run against the uniform formats")
_CANDIDATES = "fp16,e4m3,int8,mxfp4"

#: ``"fp16,int8/int4,none"``: each a format, ``input/weight`` or ``none``, checked against the registry
candidate_list = comma_list("candidates", check=Candidate.of)


def _budget(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if v != v or v in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return v


def search_arguments(p: argparse.ArgumentParser) -> None:
    model_arguments(p)
    config_arguments(p, "full precision (the candidates set inputs and weights)")
    g = p.add_argument_group("the search")
    g.add_argument("--candidates", type=candidate_list, default=_CANDIDATES, metavar="A,B/C,...",
                   help=f"formats, 'input/weight' pairs or 'none' (default {_CANDIDATES})")
    g.add_argument("--budget", type=_budget, default=None, metavar="X",
                   help="(required) the largest cost: average bits per weight (--cost bits) or bit-ops per MAC "
                        "(--cost bitops, 64 = every MAC 8x8 bits)")
    g.add_argument("--cost", choices=COST_MODELS, default="bits", help="the cost model (default bits)")
    g.add_argument("--depth", type=positive_int, default=None, metavar="N",
                   help="one format per module-name prefix of N components (blocks) instead of per layer")
    g.add_argument("--out", metavar="FILE.json", default=None, help="also write the result as JSON to a file")
    p.add_argument_group("output").add_argument("--json", action="store_true",
                                                help="write the result as JSON on stdout")


def search_run(args: argparse.Namespace) -> int:
    if args.budget is None:
        raise UsageError("--budget is required: the largest cost, e.g. --budget 6 (average bits per weight)")
    src = load_source(args)
    base = build_config(args, None)
    cal = load_calibration(args, src.model)
    res = search(src.model, src.batches, candidates=args.candidates, budget=args.budget, cost=args.cost, base=base,
                 granularity="layer" if args.depth is None else args.depth, forward=src.forward,
                 output=src.output, metric=src.metric, calibration=cal, progress=None)
    if args.out is not None:
        Path(args.out).write_text(res.to_json(), encoding="utf-8")
    if args.json:
        sys.stdout.write(res.to_json())
        return 0
    con = console()
    con.print(f"[bold]qsim-hooks search: {src.name}[/bold]")
    for line in (src.description, f"base: {describe_config(base)}", res.summary()):
        con.print(line, markup=False, highlight=False)
    render_search(res, con)
    if args.out is not None:
        con.print(f"result written to {args.out}", markup=False, highlight=False)
    return 0
