"""What a search optimises and verifies: a :class:`Score`, and how per-unit measurements add up.

The solver sums one loss per unit, so each score says what its *additive* loss is:

* ``"output_sqnr"`` (dB, higher is better): a run's loss is its relative output noise power
  ``noise / signal = 10 ** (-SQNR / 10)``. Noise powers of different units add when their errors are
  uncorrelated, so the prediction for an assignment is ``-10 log10(sum of the units' losses)``.
* ``"kl"`` (nats, lower is better): the mean over output rows of ``KL(softmax(full precision) ||
  softmax(simulated))`` over the last axis (classifier logits, LM next-token logits). For small
  perturbations the KL is the quadratic form ``0.5 dz' F dz`` of the logit error ``dz`` (``F`` the Fisher
  of the softmax); uncorrelated errors of different units add in it, so the prediction is the sum of the
  units' KLs.
* a function ``metric_fn(model, batches) -> float``, **higher is better** (accuracy, mean cosine
  similarity; negate a perplexity or a loss): a run's loss is the drop from full precision
  ``metric_full - metric``, and the prediction is ``metric_full - sum of the drops`` (a first-order,
  additive model: a unit that scores better than full precision has a negative loss).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

__all__ = ["SCORES", "Score", "as_score", "mean_kl"]

SCORES = ("output_sqnr", "kl")


def mean_kl(refs: Sequence[Tensor], sims: Sequence[Tensor]) -> float:
    """Mean over rows (every index but the last axis) of ``KL(softmax(ref) || softmax(sim))``, in nats."""
    total, rows = 0.0, 0
    for i, (r, s) in enumerate(zip(refs, sims)):
        if r.shape != s.shape:
            raise ValueError(f"batch {i}: the simulated output has shape {tuple(s.shape)}, the "
                             f"full-precision one {tuple(r.shape)}")
        if r.ndim == 0 or r.shape[-1] < 2:
            raise ValueError(f"score='kl' needs outputs with a class axis last (logits), got shape {tuple(r.shape)}; "
                             "use score='output_sqnr', or output=fn to pick the logits")
        lp = torch.log_softmax(r.detach().to("cpu", torch.float64), dim=-1)
        lq = torch.log_softmax(s.detach().to("cpu", torch.float64), dim=-1)
        kl = (lp.exp() * (lp - lq)).sum(-1)
        total += float(kl.sum())
        rows += kl.numel()
    return total / rows if rows else math.nan


@dataclass(frozen=True)
class Score:
    """A score: its name and unit, its direction, and its additive loss.

    Attributes:
        name: ``"output_sqnr"``, ``"kl"`` or the metric function's name.
        label: how a value is headed in tables (``"SQNR dB"``, ``"KL nats"``, ``"metric"``).
        higher_is_better: the direction (``"kl"``: lower).
        metric: the function, for a metric score.
    """

    name: str
    label: str
    higher_is_better: bool
    metric: Callable[..., Any] | None = None

    @property
    def needs_outputs(self) -> bool:
        return self.metric is None

    def loss(self, value: float, full: float | None = None) -> float:
        """The additive loss of one measured value (``full``: the metric in full precision)."""
        if self.name == "output_sqnr":
            return 0.0 if value == math.inf else 10.0 ** (-value / 10.0)
        if self.name == "kl":
            return value
        assert full is not None
        return full - value

    def predicted(self, loss: float, full: float | None = None) -> float:
        """The score an assignment is predicted to reach from the sum of its units' losses."""
        if self.name == "output_sqnr":
            return math.inf if loss <= 0 else -10.0 * math.log10(loss)
        if self.name == "kl":
            return loss
        assert full is not None
        return full - loss

    def better(self, value: float) -> float:
        """A key that is larger for a better value (for picking the best measured)."""
        return value if self.higher_is_better else -value

    def check(self, value: Any, who: str) -> float:
        """``value`` as a float; a NaN (or a non-number) is an error naming ``who``."""
        try:
            v = float(value)
        except (TypeError, ValueError):
            raise TypeError(f"{who}: score {self.name!r} must be a number, got {type(value).__name__}") from None
        if math.isnan(v):
            why = {"output_sqnr": "no finite output element to compare?",
                   "kl": "a non-finite logit?"}.get(self.name, f"metric function {self.name} returned NaN")
            raise ValueError(f"{who}: the score {self.name!r} is NaN ({why}); the search needs a number for "
                             "every unit and candidate and for every verified configuration")
        return v


def as_score(score: Any) -> Score:
    """``"output_sqnr"``, ``"kl"`` or a function ``metric_fn(model, batches) -> float`` (higher is better)."""
    if score == "output_sqnr":
        return Score("output_sqnr", "SQNR dB", True)
    if score == "kl":
        return Score("kl", "KL nats", False)
    if callable(score) and not isinstance(score, str):
        return Score(getattr(score, "__name__", type(score).__name__), "metric", True, score)
    raise ValueError(f"score={score!r} is not allowed; use one of {list(SCORES)} or a function "
                     "metric_fn(model, batches) -> float (higher is better)")
