"""``qsim-hooks search``: one format per layer (or block) within a budget, verified, as tables, files, a PNG.

Arguments and their checks here; the search is :func:`qsim_hooks.search`, the tables
:mod:`qsim_hooks.report_search`, the PNG :mod:`qsim_hooks.search.plot`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..report_search import render_front, render_search
from ..search import COST_MODELS, ESTIMATES, SCORES, Candidate, search
from ..search.plot import front_plot
from .base import UsageError, comma_list, console, positive_int
from .models import build_config, config_arguments, describe_config, load_calibration, load_source, model_arguments

__all__ = ["HELP", "search_arguments", "search_run"]

HELP = ("mixed precision: the format of each layer (or block) with the best score (output SQNR, KL, the model "
        "file's metric) within a cost budget (average weight bits or bit-ops), verified by real runs against "
        "the uniform formats")
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


def _suffix(allowed: tuple[str, ...]):  # noqa: ANN202
    def check(text: str) -> str:
        if Path(text).suffix not in allowed:
            raise argparse.ArgumentTypeError(f"{text!r} must end in {' or '.join(allowed)}")
        return text
    return check


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
    g.add_argument("--score", choices=(*SCORES, "metric"), default="output_sqnr",
                   help="what is optimised and verified: output_sqnr (dB), kl (softmax of the outputs against "
                        "full precision: classifiers, LMs) or metric (the model file's metric(model, batches), "
                        "higher is better); default output_sqnr")
    g.add_argument("--estimate", choices=ESTIMATES, default="pass",
                   help="per-unit losses from one run per unit and candidate (pass, default) or from one "
                        "backward pass per batch (fisher: needs loss(model, batch) in the model file)")
    g.add_argument("--depth", type=positive_int, default=None, metavar="N",
                   help="one format per module-name prefix of N components (blocks) instead of per layer")
    g.add_argument("--out", type=_suffix((".toml", ".json")), metavar="CFG.toml|CFG.json", default=None,
                   help="write the chosen config (what --config and QuantConfig.load read) and, beside it, "
                        "CFG.front.json: the whole result (the front, every configuration run)")
    g.add_argument("--result", type=_suffix((".json",)), metavar="FILE.json", default=None,
                   help="also write the whole result as JSON to a file")
    g.add_argument("--plot", type=_suffix((".png",)), metavar="FRONT.png", default=None,
                   help="draw the front: cost against the score, uniform formats and the chosen one marked")
    p.add_argument_group("output").add_argument("--json", action="store_true",
                                                help="write the result as JSON on stdout")


def search_run(args: argparse.Namespace) -> int:
    if args.budget is None:
        raise UsageError("--budget is required: the largest cost, e.g. --budget 6 (average bits per weight)")
    src = load_source(args)
    score = args.score
    if score == "metric":
        if src.metric is None:
            raise UsageError(f"--score metric: {src.name} defines no metric(model, batches) -> float; use a model "
                             "file that does, or --score output_sqnr|kl")
        score = src.metric
    if args.estimate == "fisher" and src.loss is None:
        raise UsageError(f"--estimate fisher: {src.name} defines no loss(model, batch) -> scalar tensor (the task "
                         "loss, with autograd); add one to the model file, or use --estimate pass")
    base = build_config(args, None)
    cal = load_calibration(args, src.model)
    res = search(src.model, src.batches, candidates=args.candidates, budget=args.budget, cost=args.cost,
                 score=score, estimate=args.estimate, loss=src.loss, base=base,
                 granularity="layer" if args.depth is None else args.depth, forward=src.forward,
                 output=src.output, metric=src.metric, calibration=cal, progress=None if args.progress else False)
    written = []
    if args.out is not None:
        written += [str(p) for p in res.save(args.out)]
    if args.result is not None:
        Path(args.result).write_text(res.to_json(), encoding="utf-8")
        written.append(args.result)
    if args.plot is not None:
        try:
            written.append(str(front_plot(res, args.plot)))
        except ImportError as exc:
            raise UsageError(f"--plot: {exc}") from None
    if args.json:
        sys.stdout.write(res.to_json())
        return 0
    con = console()
    con.print(f"[bold]qsim-hooks search: {src.name}[/bold]")
    for line in (src.description, f"base: {describe_config(base)}", res.summary()):
        con.print(line, markup=False, highlight=False)
    render_search(res, con)
    render_front(res, con)
    for path in written:
        con.print(f"written: {path}", markup=False, highlight=False)
    return 0
