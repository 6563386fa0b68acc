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
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any

import qsim_hooks as qh

from ..evaluations import pinned
from ..search_table import render_table, render_worst, rows_for, searched_is_best, worst_run
from . import digits

__all__ = ["SearchSettings", "SearchOutcome", "run", "render"]


@dataclass(frozen=True)
class SearchSettings:
    budgets: tuple[float, ...] = (5.0, 6.5)
    candidates: tuple[str, ...] = ("fp16", "e4m3", "int8", "mxfp4", "int4")
    score: str = "kl"


@dataclass
class SearchOutcome:
    settings: SearchSettings
    fp_accuracy: float
    rows: list[dict[str, Any]] = field(default_factory=list)
    searched_is_best: bool = False
    worst: str = ""  # the worst configuration the searches ran, and its per-layer propagated error
    per_layer: list[dict[str, Any]] = field(default_factory=list)
    per_layer_notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


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

        out = SearchOutcome(ss, digits.accuracy(model, xte, yte))
        previous, results = None, []
        with warnings.catch_warnings():  # 4-bit formats flush many values on purpose; the table says what it costs
            warnings.filterwarnings("ignore", message=r"qsim_hooks: .* flushed .* to zero", category=RuntimeWarning)
            for budget in ss.budgets:
                previous = qh.search(model, [xte], candidates=list(ss.candidates), budget=budget, score=ss.score,
                                     metric=accuracy, reuse=previous)
                results.append(previous)
                out.rows += rows_for(previous)
            out.worst, cfg = worst_run(results)
            per_layer = qh.compare(model, cfg, batches=[xte], per_layer=True, stats=False, progress=False).per_layer
        out.per_layer, out.per_layer_notes = per_layer.rows, list(per_layer.notes)
    out.searched_is_best = searched_is_best(out.rows)
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
                         f"{100 * outcome.fp_accuracy:.2f}%); searched at least as good as every uniform format "
                         f"within its budget: {'yes' if outcome.searched_is_best else 'NO'}; "
                         f"{outcome.seconds:.1f} s")
    if outcome.per_layer:
        render_worst(outcome.worst, outcome.per_layer, outcome.per_layer_notes, console, what="Digits CNN")


if __name__ == "__main__":  # python -m examples.digits_cnn.search
    from ..common import console

    render(run(), console())
