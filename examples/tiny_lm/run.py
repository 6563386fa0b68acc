"""A tiny Llama trained here on Python's documentation: held-out perplexity and generation per format.

    python -m examples.tiny_lm.run
    python -m examples.tiny_lm.run --configs e4m3,int8,kv-int8 --implementations sdpa --json lm.json
    python -m examples.tiny_lm.run --smoke

The first run trains the model (a fixed seed, 2 CPU threads) and caches it under
``~/.cache/qsim-hooks/tiny_lm/<key>/`` (``--cache-dir`` elsewhere); later runs load it. ``--smoke`` trains
a tiny model on a few KB of the same text (seconds). The code is :mod:`examples.tiny_lm.evaluate`.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from examples import common  # noqa: E402
from examples._shared import cli  # noqa: E402
from examples.tiny_lm import evaluate as E  # noqa: E402


def main(argv: list[str] | None = None) -> dict | None:
    d = E.Settings()
    split = lambda text: tuple(x.strip() for x in text.split(",") if x.strip())  # noqa: E731
    p = argparse.ArgumentParser(prog="python -m examples.tiny_lm.run", description=__doc__.splitlines()[0],
                                formatter_class=common.HelpFormatter)
    p.add_argument("--configs", default=",".join(d.configs), help=f"comma-separated, from {', '.join(E.CONFIGS)}")
    p.add_argument("--implementations", default=",".join(d.implementations), help="attention: sdpa and/or eager")
    p.add_argument("--eval-windows", type=int, default=d.eval_windows, help="held-out windows scored")
    p.add_argument("--new-tokens", type=int, default=d.new_tokens, help="bytes generated per prompt")
    p.add_argument("--calibrate", choices=common.METHODS, default=d.calibration,
                   help="activation calibration of the static configs")
    p.add_argument("--cache-dir", metavar="DIR", default=None, help="where trained weights are cached")
    p.add_argument("--smoke", action="store_true", help="a tiny model on a few KB of the text (seconds)")
    p.add_argument("--threads", type=int, default=d.threads, help="torch CPU threads")
    p.add_argument("--backend", choices=("eager", "auto", "compiled"), default=d.backend, help="quantization kernels")
    p.add_argument("--top", type=int, default=12, help="rows of the per-point report")
    p.add_argument("--json", metavar="FILE", default=None, help="also write the figures to FILE as JSON")
    return cli(p, E, lambda a: dataclasses.replace(
        d, configs=split(a.configs), implementations=split(a.implementations), eval_windows=a.eval_windows,
        new_tokens=a.new_tokens, calibration=a.calibrate, cache_dir=a.cache_dir, smoke=a.smoke, threads=a.threads,
        backend=a.backend), argv)


if __name__ == "__main__":
    main()
