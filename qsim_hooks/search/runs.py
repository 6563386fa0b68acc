"""The runs of a search: one full-precision reference, then each configuration measured against it.

:class:`Runner` runs the model once in full precision (eval mode, no autograd) and keeps the compared
outputs, the multiply-accumulates of the searched layers (:class:`~.costs.MacCounter`) and, for the
one-at-a-time sensitivity runs, a **prefix replay**: in a run where only unit ``u`` is quantized,
every module call that completed before ``u``'s first layer started computes exactly what it computed in
full precision (everything before it ran in full precision on the same batch), so its output is
replayed from the reference run instead of being computed again (a clone: the model may change it in
place). Only the *maximal* such calls are kept (those whose parent call was still running when some
unit started), and only modules called once per batch and appearing once in the module tree are
replayed; a module's forward is replaced for the run by an instance attribute and put back afterwards
(also on an exception). Results are bit-identical to running everything (tested); the saving is the
part of the model before the unit, about half a forward on average for a chain of blocks. What it
assumes: a module hands later ones what it computed through its output only (eval mode, no state set in
``forward`` that a later module reads); a model that does otherwise needs ``search(..., replay=False)``.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn

from ..analysis.comparison import _figures
from ..analysis.feeding import OutputFn, eval_no_grad
from ..batches import feed
from ..config import QuantConfig
from ..session import Session
from .costs import MacCounter
from .scores import Score, mean_kl

__all__ = ["Runner", "Measured"]

_MISSING = object()
#: the reference outputs kept for replay, at most (beyond it the runs compute everything)
REPLAY_BYTES = 2 * 2**30


class _Uncacheable(Exception):
    pass


def _clone(v: Any) -> Any:
    """A copy of a module's output with every tensor cloned (tuples, lists, dicts, ModelOutput)."""
    if isinstance(v, Tensor):
        return v.detach().clone()
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    if isinstance(v, tuple):
        items = [_clone(x) for x in v]
        return type(v)(*items) if hasattr(v, "_fields") else type(v)(items)
    if isinstance(v, list):
        return [_clone(x) for x in v]
    if isinstance(v, dict):
        d = {k: _clone(x) for k, x in v.items()}
        return d if type(v) is dict else type(v)(**d)
    raise _Uncacheable(type(v).__name__)


def _nbytes(v: Any) -> int:
    if isinstance(v, Tensor):
        return v.numel() * v.element_size()
    if isinstance(v, (tuple, list)):
        return sum(_nbytes(x) for x in v)
    if isinstance(v, dict):
        return sum(_nbytes(x) for x in v.values())
    return 0


@dataclass
class _Replay:
    """What the reference run kept: per batch, the maximal completed calls and their outputs."""

    # per batch: name -> (end event, parent's end event, output)
    kept: list[dict[str, tuple[int, int, Any]]] = field(default_factory=list)
    # per batch: unit -> the event at which its first layer started
    starts: list[dict[str, int]] = field(default_factory=list)
    bad: set[str] = field(default_factory=set)  # called twice in a batch, or not cloneable
    nbytes: int = 0

    def skipped(self, b: int, unit: str) -> dict[str, Any]:
        s = self.starts[b].get(unit)
        if s is None:
            return {}
        return {n: out for n, (end, parent_end, out) in self.kept[b].items()
                if end < s < parent_end and n not in self.bad}


class _Recorder:
    """Hooks on every module of the reference run that find and keep the replayable calls."""

    def __init__(self, model: nn.Module, unit_of: Mapping[str, str]) -> None:
        self.unit_of = unit_of
        self.replay = _Replay()
        self.handles: list[Any] = []
        self.names: dict[int, str] = {}
        counts: dict[int, int] = {}
        for _, m in model.named_modules(remove_duplicate=False):
            counts[id(m)] = counts.get(id(m), 0) + 1
        for name, m in model.named_modules():
            if m is model:
                continue
            if counts[id(m)] > 1:
                self.replay.bad.add(name)
            self.names[id(m)] = name
            self.handles.append(m.register_forward_pre_hook(self._pre, prepend=True))
            self.handles.append(m.register_forward_hook(self._post))
        self.new_batch()

    def new_batch(self) -> None:
        self.t = 0
        self.stack: list[list[Any]] = [["", 0, []]]  # [name, start, children [(name, end, out)]]
        self.calls: dict[str, int] = {}
        self.starts: dict[str, int] = {}
        self.kept: dict[str, tuple[int, int, Any]] = {}

    def _pre(self, m: nn.Module, args: Any) -> None:
        name = self.names[id(m)]
        self.t += 1
        self.calls[name] = self.calls.get(name, 0) + 1
        if self.calls[name] > 1:
            self.replay.bad.add(name)
        unit = self.unit_of.get(name)
        if unit is not None and unit not in self.starts:
            self.starts[unit] = self.t
        self.stack.append([name, self.t, []])

    def _post(self, m: nn.Module, args: Any, out: Any) -> None:
        self.t += 1
        name, _, children = self.stack.pop()
        self._close(children, self.t)
        if name in self.replay.bad or self.replay.nbytes > REPLAY_BYTES:
            self.stack[-1][2].append((name, self.t, _MISSING))
            return
        try:
            kept = _clone(out)
        except _Uncacheable:
            self.replay.bad.add(name)
            kept = _MISSING
        self.stack[-1][2].append((name, self.t, kept))

    def _close(self, children: list[tuple[str, int, Any]], end: int) -> None:
        """At a call's end: keep a child call when some unit started after it ended, inside this call."""
        starts = sorted(self.starts.values())
        for name, child_end, out in children:
            i = bisect.bisect_right(starts, child_end)
            if out is not _MISSING and i < len(starts) and starts[i] < end:
                self.kept[name] = (child_end, end, out)
                self.replay.nbytes += _nbytes(out)

    def end_batch(self) -> None:
        self.t += 1
        self._close(self.stack[0][2], self.t)
        self.replay.kept.append(self.kept)
        self.replay.starts.append(self.starts)
        self.new_batch()

    def remove(self) -> None:
        for h in reversed(self.handles):
            h.remove()
        self.handles.clear()


def _replayed(out: Any) -> Callable[..., Any]:
    def forward(*args: Any, **kwargs: Any) -> Any:
        return _clone(out)
    return forward


@contextmanager
def _replaying(model: nn.Module, outputs: Mapping[str, Any]) -> Iterator[None]:
    """Each named module's forward returns (a clone of) its kept output, for the block; put back after."""
    named = dict(model.named_modules())
    saved: list[tuple[nn.Module, Any]] = []
    try:
        for name, out in outputs.items():
            m = named[name]
            saved.append((m, m.__dict__.get("forward", _MISSING)))
            m.forward = _replayed(out)
        yield
    finally:
        for m, old in reversed(saved):
            if old is _MISSING:
                del m.forward
            else:
                m.forward = old


@dataclass(frozen=True)
class Measured:
    """One run against the reference: the score, the output SQNR and top-1 agreement, the metric, the loss."""

    score: float
    output_sqnr_db: float | None = None
    top1_agreement: float | None = None
    metric: float | None = None
    loss: float | None = None


class Runner:
    """The reference run and every measured run of one search (see the module doc)."""

    def __init__(self, model: nn.Module, batches: Sequence[Any], forward: Callable[..., Any] | None,
                 output: OutputFn, score: Score, metric: Callable[..., Any] | None, calibration: Any,
                 units: Mapping[str, Sequence[str]], loss: Callable[..., Any] | None = None,
                 replay: bool = True) -> None:
        self.model, self.batches, self.forward, self.output = model, list(batches), forward, output
        self.score, self.metric, self.calibration, self.loss_fn = score, metric, calibration, loss
        modules = [m for ms in units.values() for m in ms]
        unit_of = {m: u for u, ms in units.items() for m in ms}
        self.counter = MacCounter.attach(model, modules)
        recorder = _Recorder(model, unit_of) if replay and score.needs_outputs else None
        self.outputs: list[Tensor] = []
        try:
            with eval_no_grad(model):
                for b in self.batches:
                    self.outputs.append(self._compared(feed(model, b, forward)))
                    if recorder is not None:
                        recorder.end_batch()
                self.metric_full = self._call_metric(metric, "full precision")
                # a metric scoring the search is the same run as the metric reported: once
                self.score_full = self.metric_full if score.metric is metric else \
                    self._call_metric(score.metric, "full precision")
                self.loss_full = self._mean_loss() if loss is not None else None
        finally:
            self.counter.remove()
            if recorder is not None:
                recorder.remove()
        self.replay = recorder.replay if recorder is not None else None
        unseen = [m for m in modules if not self.counter.calls[m]]
        if unseen:
            raise ValueError(f"modules {unseen} did not run on the data, so their sensitivity cannot be measured; "
                             "give data that reaches them or switch them off with a Rule(enabled=False) in base=")

    def _compared(self, out: Any) -> Tensor:
        t = self.output(out)
        if not isinstance(t, Tensor):
            raise TypeError(f"output= must return a torch.Tensor, got {type(t).__name__}")
        return t.detach()

    def _call_metric(self, fn: Callable[..., Any] | None, who: str) -> float | None:
        if fn is None:
            return None
        v = fn(self.model, self.batches)
        name = getattr(fn, "__name__", "metric")
        try:
            f = float(v)
        except (TypeError, ValueError):
            raise TypeError(f"{name}(model, batches) must return a number, got {type(v).__name__}") from None
        if math.isnan(f):
            raise ValueError(f"{name}(model, batches) returned NaN ({who}); a metric must give a number")
        return f

    def _mean_loss(self) -> float:
        assert self.loss_fn is not None
        total = 0.0
        for b in self.batches:
            total += float(self.loss_fn(self.model, b))
        return total / len(self.batches)

    def measure(self, cfg: QuantConfig, *, unit: str | None = None, full: bool = False) -> Measured:
        """Run ``cfg`` (``unit``: a one-at-a-time run of that unit, replayed where it can be); ``full``: also
        the output SQNR, the metric and the loss (a verification)."""
        model, score = self.model, self.score
        sims: list[Tensor] = []
        with eval_no_grad(model), Session(model, cfg, calibration=self.calibration):
            if score.needs_outputs or full:
                for i, b in enumerate(self.batches):
                    skip = self.replay.skipped(i, unit) if self.replay is not None and unit is not None else {}
                    with _replaying(model, skip):
                        sims.append(self._compared(feed(model, b, self.forward)))
            value = self._call_metric(score.metric, "simulated") if score.metric is not None else None
            metric = None if not full else value if score.metric is not None and score.metric is self.metric \
                else self._call_metric(self.metric, "simulated")
            loss = self._mean_loss() if full and self.loss_fn is not None else None
        fig = _figures(self.outputs, sims, None) if sims else {}
        if score.name == "output_sqnr":
            value = fig["output_sqnr_db"]
        elif score.name == "kl":
            value = mean_kl(self.outputs, sims)
        return Measured(value, fig.get("output_sqnr_db"), fig.get("top1_agreement"), metric, loss)
