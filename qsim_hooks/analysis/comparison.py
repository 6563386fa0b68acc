"""``compare``: the simulated model against full precision on the same batches, and the machinery the other
experiments reuse: one full-precision :class:`Reference`, then any number of simulated runs against it.
"""

from __future__ import annotations

import dataclasses
import html
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from rich.console import Group
from torch import Tensor, nn

from .. import propagation, report
from ..batches import ForwardLoop, feed, run_forward_loop
from ..config import QuantConfig
from ..coverage import Coverage, CoverageSummary
from ..report_coverage import render_coverage
from ..session import Session, plan
from ..stats import power_sums, sqnr_db_from_sums
from .feeding import (
    Feed,
    Forward,
    Metric,
    OutputFn,
    check_model_cfg,
    eval_no_grad,
    first_tensor,
    make_feed,
    model_outputs,
)
from .results import PerLayerResult

__all__ = ["Comparison", "compare", "Reference", "reference", "simulate", "layer_errors"]


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
        coverage: the session's GEMM coverage summary (``Session.coverage().summary``; rendered by
            :func:`qsim_hooks.report_coverage.coverage_line`).
        coverage_rows: its rows (``Session.coverage().rows``; left out with ``stats``).
        per_layer: with ``compare(..., per_layer=True)``, the accumulated and added SQNR of every layer in
            execution order (:class:`~qsim_hooks.analysis.results.PerLayerResult`); ``None`` otherwise.
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
    coverage: CoverageSummary | None = None
    coverage_rows: list[dict[str, Any]] = field(default_factory=list)
    per_layer: PerLayerResult | None = None

    def as_dict(self, *, stats: bool = True) -> dict[str, Any]:
        """Plain data (``stats=False`` leaves out the per-point rows; ``per_layer``: its rows, and
        ``per_layer_notes``)."""
        d = dataclasses.asdict(dataclasses.replace(self, per_layer=None))
        d["per_layer"] = None if self.per_layer is None else self.per_layer.rows
        d["per_layer_notes"] = None if self.per_layer is None else list(self.per_layer.notes)
        if self.coverage is not None:
            d["coverage"]["fraction"] = self.coverage.fraction
        if not stats:
            del d["stats"], d["coverage_rows"]
        return d

    def render(self, console: Any = None, *, coverage: bool = False, **stats_options: Any) -> None:
        """Print the summary line, the per-point table (options as :func:`qsim_hooks.report.stats_table`) and
        the coverage line (``coverage=True``: the coverage table too), then the per-layer table if there is one."""
        console = report.wide_console(console)
        report.render_compare(self, console, **stats_options)
        if self.coverage is not None:
            render_coverage(Coverage(self.coverage_rows, self.coverage), console, table=coverage)
        if self.per_layer is not None:
            self.per_layer.render(console)

    def __repr__(self) -> str:
        layers = "" if self.per_layer is None else f"; per layer: {self.per_layer.summary()}"
        return f"<qsim_hooks.Comparison: {report.compare_line(self)}; {len(self.stats)} points{layers}>"

    def __rich__(self) -> Any:
        parts = report.compare_renderable(self)
        return parts if self.per_layer is None else Group(parts, "", self.per_layer.table())

    def _repr_html_(self) -> str:
        return (f"<div><b>Simulated vs full precision</b>: {html.escape(report.compare_line(self))}</div>"
                + (report.stats_table(self.stats)._repr_html_() if self.stats else "")
                + (self.per_layer._repr_html_() if self.per_layer is not None else ""))


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
    feed: Feed
    output: OutputFn
    outputs: list[Tensor]
    metric: Metric | None
    metric_full: float | None
    top1: bool | None


def _metric(metric: Metric | None, model: nn.Module, batches: list[Any] | None) -> float | None:
    if metric is None:
        return None
    v = metric(model, batches)
    try:
        return float(v)
    except (TypeError, ValueError):
        raise TypeError(f"metric(model, batches) must return a number, got {type(v).__name__}") from None


def reference(model: nn.Module, feed: Feed, output: OutputFn | None, metric: Metric | None, top1: bool | None,
              *, progress: bool | None = None) -> Reference:
    """Run ``model`` in full precision on ``feed`` (eval mode, no autograd) and keep what it gave."""
    out = output or first_tensor
    with eval_no_grad(model):
        outs = model_outputs(model, feed, out, progress=progress, label="full precision")
        mfull = _metric(metric, model, feed.batches)
    return Reference(model, feed, out, outs, metric, mfull, top1)


def simulate(ref: Reference, cfg: QuantConfig, *, calibration: Any = None, stats: bool = False,
             progress: bool | None = None) -> Comparison:
    """Run the reference's model and data under ``cfg`` and compare with the full-precision run."""
    model = ref.model
    with eval_no_grad(model):
        with Session(model, cfg, stats=stats, calibration=calibration) as qs:
            sims = model_outputs(model, ref.feed, ref.output, progress=progress, label="simulated")
        rows = qs.stats() if stats else []
        covered = qs.coverage()
        msim = None
        if ref.metric is not None:  # a session of its own: the metric's runs stay out of the statistics
            with Session(model, cfg, calibration=calibration):
                msim = _metric(ref.metric, model, ref.feed.batches)
    if len(sims) != len(ref.outputs):
        raise ValueError(f"the model ran {len(sims)} times simulated and {len(ref.outputs)} times in full precision: "
                         "forward_loop must run the same data every time it is called")
    return Comparison(**_figures(ref.outputs, sims, ref.top1), metric_full=ref.metric_full, metric_sim=msim,
                      stats=rows, coverage=covered.summary, coverage_rows=covered.rows)


def compare(model: nn.Module, cfg: QuantConfig, batch: Any = None, *, batches: Iterable[Any] | None = None,
            forward: Forward | None = None, forward_loop: ForwardLoop | None = None, output: OutputFn | None = None,
            metric: Metric | None = None, calibration: Any = None, stats: bool = True, top1: bool | None = None,
            per_layer: bool = False, progress: bool | None = None) -> Comparison:
    """Run ``model`` in full precision and simulated under ``cfg`` on the same input; compare the outputs.

    Args:
        model: any ``nn.Module``; unchanged afterwards (training flags included).
        cfg: the simulation.
        batch: one batch, fed by ``forward`` (or ``batches=``: several, merged
            exactly: the SQNR is that of all outputs together).
        forward: ``forward(model, batch)``; default :func:`qsim_hooks.batches.default_forward`
            (a batch that does not fit the model's ``forward`` is a TypeError that says what to pass).
        forward_loop: instead of batches, ``forward_loop(model)`` runs the model on the data itself
            (ModelOpt's habit); it is called once per run and must feed the same data each time; every
            top-level output of the model is compared.
        output: ``output(model_output) -> Tensor`` picks the tensor to compare;
            default :func:`~qsim_hooks.analysis.feeding.first_tensor`.
        metric: ``metric(model, batches) -> float``, a task metric (accuracy
            on labelled batches, perplexity, ...) measured on both models
            (``batches`` is ``None`` with ``forward_loop``).
        calibration: passed to the session (static amax per point).
        stats: collect the per-point statistics (``Comparison.stats``).
        top1: ``None`` (default) computes top-1 agreement for 2-D outputs with
            two or more columns; ``True`` over the last dim of any output;
            ``False`` never.
        per_layer: also where the error starts (``Comparison.per_layer``): for every layer, in the order the
            model runs them, the SQNR of its output against the full-precision run's (accumulated) and
            against its own full-precision function of the input it got in the simulated run (added). Costs
            about one more forward per layer and batch, holding one layer's activations at a time (the
            design, shared modules and tuple outputs: :mod:`qsim_hooks.propagation`). A ValueError when the
            config quantizes nothing on the model.
        progress: a progress bar over the batches of each run (stderr): ``None`` (default) in a terminal
            when there is more than one batch, ``True`` always, ``False`` never.

    Returns:
        a :class:`Comparison` (``.as_dict()`` for plain data).
    """
    check_model_cfg(model, cfg)
    if not isinstance(per_layer, bool):
        raise TypeError(f"per_layer must be True or False, got {type(per_layer).__name__} {per_layer!r}")
    if per_layer:  # before any run
        propagation.check_plan(plan(model, cfg))
    ref = reference(model, make_feed(batch, batches, forward, forward_loop), output, metric, top1, progress=progress)
    res = simulate(ref, cfg, calibration=calibration, stats=stats, progress=progress)
    if per_layer:
        res.per_layer = layer_errors(model, cfg, ref.feed, calibration=calibration, progress=progress)
    return res


def layer_errors(model: nn.Module, cfg: QuantConfig, data: Feed, *, calibration: Any = None,
                 progress: bool | None = None) -> PerLayerResult:
    """The per-layer rows of ``compare(..., per_layer=True)`` on ``data`` (:func:`qsim_hooks.propagation.propagate`,
    its simulated runs in sessions of their own: no coverage check, that was the compared run's)."""
    quiet = dataclasses.replace(cfg, require_coverage=False)
    if data.forward_loop is not None:
        loop = data.forward_loop
        runs: list[propagation.Run] = [lambda m: run_forward_loop(m, loop)]
    else:
        assert data.batches is not None
        runs = [lambda m, b=b: feed(m, b, data.forward) for b in data.batches]
    got = propagation.propagate(model, plan(model, cfg), lambda: Session(model, quiet, calibration=calibration),
                                runs, stop_early=data.forward_loop is None, progress=progress)
    return PerLayerResult(got.rows, got.notes)
