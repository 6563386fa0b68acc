"""A small CNN trained here on scikit-learn's digits: post-training accuracy per format, and QAT.

    python examples/digits_cnn/run.py
    python examples/digits_cnn/run.py --calibrate percentile --qat-epochs 20 --json digits.json

Real data (``sklearn.datasets.load_digits``, bundled with scikit-learn), trained in-process in full
precision (seconds), then for INT8, INT4, E4M3 and E2M1 (inputs and weights of every layer, per-tensor
scales): post-training accuracy with dynamic scales and with static scales from ``qh.calibrate``, and
quantization-aware training inside ``qh.quantized`` for the 4-bit formats. Seeded and deterministic
(one CPU thread). The code is ``digits.py`` beside this script, which the main job (``examples/demo.py``) also runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from examples import common  # noqa: E402
from examples.digits_cnn import accumulators, digits  # noqa: E402
from examples.digits_cnn import search as digits_search  # noqa: E402
from qsim_hooks import report  # noqa: E402


def main(argv=None) -> dict:
    d = digits.Settings()
    p = argparse.ArgumentParser(prog="examples/digits_cnn/run.py", description=__doc__.splitlines()[0],
                                formatter_class=common.HelpFormatter)
    p.add_argument("--seed", type=int, default=d.seed, help="data split, initialisation and shuffling")
    p.add_argument("--epochs", type=int, default=d.epochs, help="full-precision training epochs")
    p.add_argument("--formats", default=",".join(d.formats), help=f"comma-separated, from {', '.join(digits.FORMATS)}")
    p.add_argument("--calibrate", choices=common.METHODS, default=d.calibration, help="static calibration method")
    p.add_argument("--qat-formats", default=",".join(d.qat_formats), help="formats that get QAT ('' for none)")
    p.add_argument("--qat-epochs", type=int, default=d.qat_epochs, help="fine-tuning epochs inside qh.quantized")
    p.add_argument("--qat-lr", type=float, default=d.qat_lr, help="QAT learning rate (Adam, cosine decay)")
    p.add_argument("--report", default=d.report_format, help="the format whose per-point report is shown")
    p.add_argument("--top", type=int, default=8, help="rows of the per-point report")
    p.add_argument("--backend", choices=("eager", "auto", "compiled"), default=d.backend, help="quantization kernels")
    p.add_argument("--json", metavar="FILE", default=None, help="also write the figures to FILE as JSON")
    args = p.parse_args(argv)
    split = lambda text: tuple(x.strip() for x in text.split(",") if x.strip())  # noqa: E731
    try:
        settings = dataclasses.replace(d, seed=args.seed, epochs=args.epochs, formats=split(args.formats),
                                       calibration=args.calibrate, qat_formats=split(args.qat_formats),
                                       qat_epochs=args.qat_epochs, qat_lr=args.qat_lr, report_format=args.report,
                                       backend=args.backend)
        result = digits.run(settings)
    except ValueError as exc:
        p.error(str(exc))
    digits.render(result, common.console(), top=args.top)
    accumulators.render(accumulators.run(settings), common.console())
    searched = digits_search.run(settings)
    digits_search.render(searched, common.console())
    out = {**result.as_dict(), "search": searched.as_dict()}
    if args.json:
        Path(args.json).write_text(report.to_json(out))
    return out


if __name__ == "__main__":
    main()
