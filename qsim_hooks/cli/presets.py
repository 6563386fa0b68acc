"""``qsim-hooks presets``: the named recipes (``--preset NAME``, ``QuantConfig.preset(name)``) and what each sets."""

from __future__ import annotations

import argparse
import sys

from .. import report
from ..config import QuantConfig
from ..presets import PRESETS
from .base import console

__all__ = ["HELP", "add_arguments", "run"]

HELP = "the named recipes (fp8, w8a8-int, w4a16-int, mxfp4, nvfp4, ...) for --preset, and what each sets"

COLUMNS = (report.Column("name", "preset", justify="left", style="bold", priority=0),
           report.Column("sets", "what it sets", justify="left", priority=0),
           report.Column("summary", "what it is", justify="left", priority=1),
           report.Column("source", "as in", justify="left", priority=2))


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true",
                   help="write each preset's config-file keys (QuantConfig.from_dict) as JSON")


def rows() -> list[dict[str, str]]:
    return [{"name": p.name, "sets": "; ".join(QuantConfig.preset(p.name).describe()), "summary": p.summary,
             "source": p.source} for p in PRESETS.values()]


def run(args: argparse.Namespace) -> int:
    if args.json:
        sys.stdout.write(report.to_json({p.name: {"summary": p.summary, "config": QuantConfig.preset(p.name).to_dict(),
                                                  "source": p.source} for p in PRESETS.values()}))
        return 0
    report.print_table(report.build_table(rows(), COLUMNS, title="Presets: --preset NAME, QuantConfig.preset(NAME)",
                                          caption="every Linear and convolution (and attention's internal points) "
                                                  "as the preset says; a config file may say preset = \"NAME\" and "
                                                  "change any key on top"), console())
    return 0
