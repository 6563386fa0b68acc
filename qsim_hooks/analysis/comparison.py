"""``compare``: the simulated model against full precision on the same batches, and the machinery the other
experiments reuse: one full-precision :class:`Reference`, then any number of simulated runs against it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ..batches import default_forward
from ..config import QuantConfig
from ..session import Session
from ..stats import power_sums, sqnr_db_from_sums
from .feeding import Forward, Metric, OutputFn, batch_list, check_model_cfg, eval_no_grad, first_tensor, model_outputs

__all__ = ["Comparison", "compare", "Reference", "reference", "simulate"]


@dataclass
class Comparison:
    """The simulated model against full precision on the same batches.

    Attributes:
        output_sqnr_db: ``10*log10(sum(ref^2) / sum((ref - sim)^2))`` over every
            compared output element of every batch (``inf``: identical outputs).
        max_abs_error: ``max |ref - sim|`` over finite reference elements.
        top1_agreement: fraction of rows whose argmax (last dim) is the same,
            for 2-D outputs with two or more columns (classifier logits) or
            when asked with ``top1=True``; ``None`` otherwise.
        top1_rows: how many rows the agreement counts.
        numel: compared output elements (finite reference elements).
        batches: how many batches were run.
        signal_power, noise_power: the two sums behind ``output_sqnr_db``.
        metric_full, metric_sim: the user's ``metric(model, batches)`` on the
            full-precision and on the simulated model (``None`` without one).
        stats: the session's per-point rows (``Session.stats()``; empty with
            ``stats=False``).
    """

    output_sqnr_db: float
    max_abs_error: float
    top1_agreement: float | None
    top1_rows: int
    numel: int
    batches: int
    signal_power: float
    noise_power: float
    metric_full: float | None = None
    metric_sim: float | None = None
    stats: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self, *, stats: bool = True) -> dict[str, Any]:
        """Plain data (``stats=False`` leaves out the per-point rows)."""
        d = dataclasses.asdict(self)
        if not stats:
            del d["stats"]
        return d


def _figures(refs: Sequence[Tensor], sims: Sequence[Tensor], top1: bool | None) -> dict[str, Any]:
    signal = noise = 0.0
    n = rows = agree = 0
    max_err = 0.0
    for i, (r, s) in enumerate(zip(refs, sims)):
        if r.shape != s.shape:
            raise ValueError(f"batch {i}: the simulated output has shape {tuple(s.shape)}, the "
                             f"full-precision one {tuple(r.shape)}")
        sx, se, k = power_sums(r, s)
        signal, noise, n = signal + sx, noise + se, n + k
        r64 = r.detach().to("cpu", torch.float64)
        s64 = s.detach().to("cpu", torch.float64)
        fin = torch.isfinite(r64)
        if bool(fin.any()):
            d = (r64 - s64).abs()[fin]
            d = torch.where(torch.isnan(d), math.inf, d)
            max_err = max(max_err, float(d.max()))
        use = (r.ndim == 2 and r.shape[-1] >= 2) if top1 is None else (bool(top1) and r.ndim >= 1)
        if use and r.numel():
            agree += int((r64.argmax(-1) == s64.argmax(-1)).sum())
            rows += r64[..., 0].numel()
    return {"output_sqnr_db": sqnr_db_from_sums(signal, noise, n), "max_abs_error": max_err if n else math.nan,
            "top1_agreement": agree / rows if rows else None, "top1_rows": rows, "numel": n,
            "batches": len(refs), "signal_power": signal, "noise_power": noise}


@dataclass
class Reference:
    """One full-precision run, reused by every simulated run that compares against it."""

    model: nn.Module
    batches: list[Any]
    forward: Forward
    output: OutputFn
    outputs: list[Tensor]
    metric: Metric | None
    metric_full: float | None
    top1: bool | None


def _metric(metric: Metric | None, model: nn.Module, batches: list[Any]) -> float | None:
    if metric is None:
        return None
    v = metric(model, batches)
    try:
        return float(v)
    except (TypeError, ValueError):
        raise TypeError(f"metric(model, batches) must return a number, got {type(v).__name__}") from None


def reference(model: nn.Module, batches: list[Any], forward: Forward | None, output: OutputFn | None,
              metric: Metric | None, top1: bool | None) -> Reference:
    """Run ``model`` in full precision on ``batches`` (eval mode, no autograd) and keep what it gave."""
    fwd = forward or default_forward
    out = output or first_tensor
    with eval_no_grad(model):
        outs = model_outputs(model, batches, fwd, out)
        mfull = _metric(metric, model, batches)
    return Reference(model, batches, fwd, out, outs, metric, mfull, top1)


def simulate(ref: Reference, cfg: QuantConfig, *, calibration: Any = None, stats: bool = False) -> Comparison:
    """Run the reference's model and batches under ``cfg`` and compare with the full-precision run."""
    model = ref.model
    with eval_no_grad(model):
        with Session(model, cfg, stats=stats, calibration=calibration) as qs:
            sims = model_outputs(model, ref.batches, ref.forward, ref.output)
        rows = qs.stats() if stats else []
        msim = None
        if ref.metric is not None:  # a session of its own: the metric's runs stay out of the statistics
            with Session(model, cfg, calibration=calibration):
                msim = _metric(ref.metric, model, ref.batches)
    return Comparison(**_figures(ref.outputs, sims, ref.top1), metric_full=ref.metric_full, metric_sim=msim,
                      stats=rows)


def compare(model: nn.Module, cfg: QuantConfig, batch: Any = None, *, batches: Iterable[Any] | None = None,
            forward: Forward | None = None, output: OutputFn | None = None, metric: Metric | None = None,
            calibration: Any = None, stats: bool = True, top1: bool | None = None) -> Comparison:
    """Run ``model`` in full precision and simulated under ``cfg`` on the same input; compare the outputs.

    Args:
        model: any ``nn.Module``; unchanged afterwards (training flags included).
        cfg: the simulation.
        batch: one batch, fed by ``forward`` (or ``batches=``: several, merged
            exactly: the SQNR is that of all outputs together).
        forward: ``forward(model, batch)``; default :func:`qsim_hooks.batches.default_forward`.
        output: ``output(model_output) -> Tensor`` picks the tensor to compare;
            default :func:`~qsim_hooks.analysis.feeding.first_tensor`.
        metric: ``metric(model, batches) -> float``, a task metric (accuracy
            on labelled batches, perplexity, ...) measured on both models.
        calibration: passed to the session (static amax per point).
        stats: collect the per-point statistics (``Comparison.stats``).
        top1: ``None`` (default) computes top-1 agreement for 2-D outputs with
            two or more columns; ``True`` over the last dim of any output;
            ``False`` never.

    Returns:
        a :class:`Comparison` (``.as_dict()`` for plain data).
    """
    check_model_cfg(model, cfg)
    ref = reference(model, batch_list(batch, batches), forward, output, metric, top1)
    return simulate(ref, cfg, calibration=calibration, stats=stats)
