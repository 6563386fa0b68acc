"""``qsim-hooks formats``: the table of the named formats (bits, max, steps, SQNR on N(0,1)) as text, JSON or CSV."""

from __future__ import annotations

import argparse
import sys

from .. import report, stats
from .base import console, format_names, positive_int

__all__ = ["HELP", "add_arguments", "run"]

HELP = "table of the named formats: bits, max, smallest subnormal, spacing at 1.0, SQNR on N(0,1)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    out = p.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="write the rows as JSON")
    out.add_argument("--csv", action="store_true", help="write the rows as CSV")
    p.add_argument("--names", type=format_names, default=None, metavar="A,B,C",
                   help="comma-separated format names (default: every named format); "
                        "any 'eXmY' or 'intN' works too")
    p.add_argument("--samples", type=positive_int, default=stats.DEFAULT_SAMPLES, metavar="N",
                   help=f"N(0,1) samples the SQNR is measured on (default {stats.DEFAULT_SAMPLES}; from "
                        "262144 on, the fused kernel is compiled first, which takes a while once)")
    p.add_argument("--seed", type=int, default=0, help="seed of the samples (default 0)")


def run(args: argparse.Namespace) -> int:
    rows = stats.format_rows(args.names, samples=args.samples, seed=args.seed)
    if args.json:
        sys.stdout.write(report.to_json(rows))
    elif args.csv:
        sys.stdout.write(report.to_csv(rows, stats.FORMAT_ROW_KEYS))
    else:
        report.render_formats_table(rows, console(), caption=report.formats_caption(args.samples, args.seed))
    return 0
