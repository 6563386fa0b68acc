"""Mixed-precision search on the digits CNN: :func:`qsim_hooks.search` at two budgets against the uniform
formats at the same budgets.

The CNN of :mod:`.digits`, trained here exactly as :func:`.digits.run` trains it (same settings, seeded),
then ``qh.search`` with candidates fp16, e4m3, int8, mxfp4, int4 (each on a layer's inputs and weights),
cost ``"bits"`` (average bits per weight, scales included), score ``"kl"`` (the KL divergence of the
softmax of the logits against full precision on the 450 test images) and the test accuracy as the
reported metric. The first budget measures the per-layer sensitivities; the second reuses them
(``reuse=``) and costs only its verification runs. Every row of the table is a real run. Then the worst
configuration any search ran goes through ``qh.compare(..., per_layer=True)``: per layer, the SQNR of its
output against full precision (accumulated) and the SQNR it adds itself, so the table shows where the error
starts.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from .. import search_table
from ..evaluations import pinned
from ..search_table import render_table, render_worst, verdict
from . import digits

__all__ = ["SearchSettings", "SearchOutcome", "run", "render"]


@dataclass(frozen=True)
class SearchSettings:
    budgets: tuple[float, ...] = (5.0, 6.5)
    candidates: tuple[str, ...] = ("fp16", "e4m3", "int8", "mxfp4", "int4")
    score: str = "kl"


@dataclass
class SearchOutcome(search_table.SearchOutcome):
    fp_accuracy: float = 0.0


def run(settings: digits.Settings | None = None, search: SearchSettings | None = None) -> SearchOutcome:
    """Train the CNN, search at each budget, verify. No output."""
    s, ss = settings or digits.Settings(), search or SearchSettings()
    t0 = time.perf_counter()
    with pinned(s.backend, s.threads):
        xtr, ytr, xte, yte = digits.load_data(s.seed, s.test_size)
        model = digits.make_model(s.seed)
        digits.train(model, xtr, ytr, epochs=s.epochs, lr=s.lr, batch_size=s.batch_size, seed=s.seed)

        def accuracy(m: Any, _batches: Any) -> float:
            return digits.accuracy(m, xte, yte)

        out = search_table.search_budgets(SearchOutcome(ss, fp_accuracy=digits.accuracy(model, xte, yte)), model,
                                          [xte], ss.budgets, candidates=list(ss.candidates), score=ss.score,
                                          metric=accuracy)
    out.seconds = time.perf_counter() - t0
    return out


def render(outcome: SearchOutcome, console: Any = None) -> None:
    ss = outcome.settings
    render_table(outcome.rows, console,
                 title="Digits CNN: mixed-precision search (qh.search) vs uniform formats, test accuracy %",
                 score_label="KL nats" if ss.score == "kl" else "SQNR dB", metric_label="accuracy\n%",
                 metric_fmt=lambda v: "-" if v is None else f"{100 * v:.2f}",
                 caption=f"candidates {', '.join(ss.candidates)} on each layer's inputs and weights; score "
                         f"{ss.score} on the 450 test images (full-precision accuracy "
                         f"{100 * outcome.fp_accuracy:.2f}%); " + verdict(outcome))
    render_worst(outcome, console, what="Digits CNN")


if __name__ == "__main__":  # python -m examples.digits_cnn.search
    from ..common import console

    render(run(), console())
