"""Propagated per-layer error: where the error of a simulated model starts, and where it grows.

For every layer of the plan (each module with input, weight or output points, quantized or not), in the
order the model first enters it, two SQNRs over every call of the layer on every batch, merged exactly
(summed signal and noise powers, as ``compare``'s output SQNR):

* **accumulated**: the layer's output in the simulated run against the same layer's output in the
  full-precision run: all the error the network has gathered up to and including this layer;
* **added**: the layer's simulated output against the layer's own full-precision function (the un-instrumented
  module: weights, input and output points off) applied to the input it received *in the simulated run*,
  before its own input point: the error this layer adds by itself (measured for every layer: one with no
  point reads ``inf``); for the first quantized layer of a chain the two are equal (its input is still exact).

How it runs, and why: at most one layer's activations are held at a time. Holding every layer's
full-precision outputs for one comparison pass would cost a whole network's activations (an LLM's, at every
layer), so the layers are taken one by one, each batch in turn, in two passes: a simulated pass (a fresh
session made by ``simulated()``) keeps that layer's inputs and outputs only (copies: a later in-place op
cannot change them); with the model restored, the layer is called in full precision on each kept input
(the added error) and the inputs are dropped; then a full-precision pass compares the layer's outputs with
the kept simulated ones as they come (the accumulated error) and drops them. Each pass stops at the layer's
last call when it runs one batch (the call count comes from a first full-precision pass that also fixes the
order), so N layers of similar cost take about N/2 simulated and N/2 full-precision forwards per batch
(``tools/bench_propagation.py`` measures it). A ``forward_loop`` runs whole in each pass, and the layer's
activations of all its batches are held. Everything runs in eval mode under ``torch.no_grad()``.

A module that runs more than once per forward (shared) is one row: its calls are paired in order between
the runs and merged. A layer whose output is a tuple or a mapping is compared on its first tensor
(depth-first); one whose output holds no tensor is left out, with its name in :attr:`Propagation.notes`.
The simulated runs must be the same run every pass: a config with stochastic rounding needs ``seed=``.

This module is below :mod:`qsim_hooks.session` (``Session.report(propagated=True)`` uses it), so it creates
no session itself: the caller passes ``simulated``, a function that returns a new, unattached one.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from .batches import eval_no_grad, feed
from .planning import Plan
from .progress import track
from .stats import power_sums, sqnr_db_from_sums

__all__ = ["Propagation", "propagate", "plan_layers", "check_plan", "Recording", "session_runs", "ROW_KEYS", "Run",
           "first_tensor"]

#: the keys of a per-layer row, in order
ROW_KEYS = ("layer", "type", "formats", "accumulated_sqnr_db", "added_sqnr_db", "calls", "numel")

Run = Callable[[nn.Module], Any]
_ROLE = {"input": "in", "weight": "w", "output": "out"}


class _Stop(Exception):
    """Raised by a capture hook after the layer's last call of a batch: the rest of the forward is not needed.

    An ``Exception``: PyTorch runs the ``always_call`` forward hooks (which leave the session's function modes
    and scopes) only for those. A model that swallows it runs on; the hooks then take no more calls."""


@dataclass
class _Sums:
    signal: float = 0.0
    noise: float = 0.0
    n: int = 0

    def add(self, ref: Tensor, sim: Tensor, what: str) -> None:
        if ref.shape != sim.shape:
            raise ValueError(f"{what}: shapes {tuple(ref.shape)} and {tuple(sim.shape)} differ")
        sx, se, k = power_sums(ref, sim)
        self.signal, self.noise, self.n = self.signal + sx, self.noise + se, self.n + k

    @property
    def db(self) -> float:
        return sqnr_db_from_sums(self.signal, self.noise, self.n)


def first_tensor(out: Any) -> Tensor | None:
    """The output itself when it is a tensor, else its first tensor depth-first (tuples, lists, mappings)."""
    if isinstance(out, Tensor):
        return out
    items = out.values() if isinstance(out, Mapping) else out if isinstance(out, (tuple, list)) else ()
    for item in items:
        t = first_tensor(item)
        if t is not None:
            return t
    return None


def _copy(v: Any, memo: dict[int, Tensor] | None = None) -> Any:
    """A detached copy of every tensor in ``v`` (tuples, lists, dicts kept as they are); a tensor passed twice
    is copied once (``mha(x, x, x)`` takes its self-attention path on the copies too)."""
    memo = {} if memo is None else memo
    if isinstance(v, Tensor):
        if id(v) not in memo:
            memo[id(v)] = _Held.keep(v.detach().clone())
        return memo[id(v)]
    if isinstance(v, (tuple, list)):
        items = [_copy(x, memo) for x in v]
        return type(v)(*items) if hasattr(v, "_fields") else type(v)(items)
    if isinstance(v, dict):
        return {k: _copy(x, memo) for k, x in v.items()}
    return v


class _Held:
    """The one place captured tensors are made (a test counts the live ones through :meth:`keep`)."""

    @staticmethod
    def keep(t: Tensor) -> Tensor:
        return t


def plan_layers(plan: Plan) -> dict[str, tuple[str, str]]:
    """``{layer: (type, formats)}`` for every module with layer points (attention modules are not layers: their
    error shows in the layers after them), formats as ``"in int8, w int8"`` (``"-"``: none)."""
    layers: dict[str, tuple[str, list[str]]] = {}
    for e in plan.entries:
        if e.kind == "attention":
            continue
        typ, fmts = layers.setdefault(e.module, (e.module_type, []))
        if e.format is not None:
            text = f"{_ROLE.get(e.point, e.point)} {e.format.name}"
            if text not in fmts:
                fmts.append(text)
    return {n: (t, ", ".join(f) or "-") for n, (t, f) in layers.items()}


def check_plan(plan: Plan) -> dict[str, tuple[str, str]]:
    """The plan's layers (:func:`plan_layers`); a ValueError when it has none, or quantizes nothing."""
    layers = plan_layers(plan)
    if not layers:
        raise ValueError("per-layer error: the model has no layer qsim_hooks quantizes (Linear, convolutions, "
                         "... or a register_layer type), so there is nothing to report per layer")
    if not plan.active():
        raise ValueError("per-layer error: the config quantizes nothing on this model (every point is off): "
                         "every layer would read inf; give the layers a format")
    return layers


@dataclass
class Propagation:
    """The per-layer rows (keys :data:`ROW_KEYS`) and notes (layers left out, and why)."""

    rows: list[dict[str, Any]]
    notes: list[str]



@contextmanager
def _hooks(module: nn.Module, pre: Callable[..., None] | None, post: Callable[..., None]) -> Iterator[None]:
    handles = []
    try:
        if pre is not None:  # before the session's own pre-hooks: the input as the layer received it
            handles.append(module.register_forward_pre_hook(pre, with_kwargs=True, prepend=True))
        handles.append(module.register_forward_hook(post))  # after its output point: the output as it left
        yield
    finally:
        for h in handles:
            h.remove()


def _run(model: nn.Module, run: Run) -> None:
    try:
        run(model)
    except _Stop:
        pass


def _order(model: nn.Module, modules: Mapping[str, nn.Module], runs: Sequence[Run],
           ) -> tuple[list[str], list[dict[str, int]], dict[str, str]]:
    """One full-precision pass: the layers in the order they are first entered, their calls per run, and the
    layers whose output holds no tensor."""
    order: list[str] = []
    counts: list[dict[str, int]] = []
    no_tensor: dict[str, str] = {}
    with ExitStack() as stack:
        for name, m in modules.items():
            stack.enter_context(_hooks(m, *_counters(name, order, counts, no_tensor)))
        for run in runs:
            counts.append({})
            run(model)
    return order, counts, no_tensor


def _counters(name: str, order: list[str], counts: list[dict[str, int]], no_tensor: dict[str, str],
              ) -> tuple[Callable[..., None], Callable[..., None]]:
    def pre(mod: nn.Module, args: Any, kwargs: Any) -> None:
        if name not in order:
            order.append(name)
        counts[-1][name] = counts[-1].get(name, 0) + 1

    def post(mod: nn.Module, args: Any, out: Any) -> None:
        if first_tensor(out) is None:
            no_tensor[name] = type(out).__name__
    return pre, post


def _layer_pass(model: nn.Module, module: nn.Module, name: str, run: Run, calls: int, stop: bool,
                simulated: Callable[[], AbstractContextManager[Any]], acc: _Sums, added: _Sums) -> None:
    """One layer on one run: the simulated pass, the layer's own function on its inputs, the full-precision pass."""
    inputs: list[tuple[Any, Any]] = []
    outputs: list[Tensor] = []

    def keep_in(mod: nn.Module, args: Any, kwargs: Any) -> None:
        if not (stop and len(inputs) >= calls):
            inputs.append(_copy((args, kwargs)))

    def keep_out(mod: nn.Module, args: Any, out: Any) -> None:
        if not (stop and len(outputs) >= calls):
            outputs.append(_copy(first_tensor(out)))
        if stop and len(outputs) == calls:
            raise _Stop

    with simulated(), _hooks(module, keep_in, keep_out):
        _run(model, run)
    for i, ((args, kwargs), sim) in enumerate(zip(inputs, outputs)):
        own = first_tensor(module(*args, **kwargs))  # the model is restored: the layer in full precision
        added.add(own, sim, f"{name}, call {i + 1}: its full-precision output on the simulated input")
    inputs.clear()
    seen = 0

    def compare(mod: nn.Module, args: Any, out: Any) -> None:
        nonlocal seen
        if stop and seen >= calls:
            raise _Stop
        if seen < len(outputs):
            acc.add(first_tensor(out), outputs[seen], f"{name}, call {seen + 1}: full-precision vs simulated output")
        seen += 1
        if stop and seen == calls:
            raise _Stop

    with _hooks(module, None, compare):
        _run(model, run)
    sim_calls = len(outputs)
    outputs.clear()
    if seen != sim_calls:
        raise ValueError(f"per-layer error: {name} ran {sim_calls} time(s) simulated and {seen} in full precision "
                         "on the same batch; the calls of a layer are paired in order, so both runs must call it "
                         "the same number of times (data-dependent control flow?)")


def propagate(model: nn.Module, plan: Plan, simulated: Callable[[], AbstractContextManager[Any]],
              runs: Sequence[Run], *, stop_early: bool = True, progress: bool | None = None,
              quiet: bool = True) -> Propagation:
    """The accumulated and added SQNR of every layer of ``plan`` (see the module docstring).

    Args:
        model: the model; run in eval mode under ``torch.no_grad()``, its training flags given back.
        plan: the simulation's plan: which modules are layers, and their formats.
        simulated: returns a new session of the simulation (attached by ``with``).
        runs: ``run(model)`` per batch (or one that runs a ``forward_loop``).
        stop_early: a pass may stop after the layer's last call (each run is one batch, not a loop).
        progress: a bar over the layers (``None``: in a terminal).
        quiet: the simulated passes' warnings are not repeated, because the caller's own simulated run of
            the same data has given them (``False`` for data the caller did not run: they are shown).

    Raises:
        ValueError: the plan has no layer, or quantizes nothing; a layer ran a different number of times
            simulated and in full precision.
    """
    layers = check_plan(plan)
    attention = list(dict.fromkeys(e.module for e in plan.active() if e.kind == "attention"))
    with eval_no_grad(model), warnings.catch_warnings():
        if quiet:
            warnings.simplefilter("ignore")  # the caller's runs of the same data have said it
        return _propagate(model, layers, attention, simulated, runs, stop_early, progress)


def _propagate(model: nn.Module, layers: Mapping[str, tuple[str, str]], attention: Sequence[str],
               simulated: Callable[[], AbstractContextManager[Any]], runs: Sequence[Run], stop_early: bool,
               progress: bool | None) -> Propagation:
    named = dict(model.named_modules(remove_duplicate=False))
    modules = {n: named[n] for n in layers}
    order, counts, no_tensor = _order(model, modules, runs)
    notes = [f"{n}: its output holds no tensor ({t}), left out" for n, t in no_tensor.items()]
    if attention:
        notes.append(f"attention points of {len(attention)} module(s) ({', '.join(attention[:3])}"
                     f"{', ...' if len(attention) > 3 else ''}) are no row: their error is in the accumulated "
                     "SQNR of the layers after them")
    skipped = [n for n in layers if n not in order]
    if skipped:
        notes.append(f"{len(skipped)} layer(s) did not run on this data: {', '.join(skipped[:6])}"
                     + (", ..." if len(skipped) > 6 else ""))
    rows = []
    with track([n for n in order if n not in no_tensor], "per-layer error", enabled=progress) as each:
        for name in each:
            acc, added = _Sums(), _Sums()
            for run, count in zip(runs, counts):
                if name in count:
                    _layer_pass(model, modules[name], name, run, count[name], stop_early, simulated, acc, added)
            typ, fmts = layers[name]
            rows.append({"layer": name, "type": typ, "formats": fmts, "accumulated_sqnr_db": acc.db,
                         "added_sqnr_db": added.db, "calls": sum(c.get(name, 0) for c in counts), "numel": acc.n})
    return Propagation(rows, notes)


class Recording:
    """The top-level calls of a model (arguments copied), recorded while a session is attached
    (``quantized(model, cfg, record=True)``), to be run again by ``qs.report(propagated=True)``."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, Any]] = []

    def hook(self, module: nn.Module, args: Any, kwargs: Any) -> None:
        self.calls.append(_copy((args, kwargs)))

    def runs(self) -> list[Run]:
        return [lambda m, a=a, k=k: m(*a, **k) for a, k in self.calls]


def session_runs(recording: Recording | None, batch: Any, batches: Any, forward: Any) -> list[Run]:
    """What ``Session.report(propagated=True)`` runs again: ``batch=`` / ``batches=`` (fed as ``compare`` feeds
    them, ``forward(model, batch)`` when given), else the calls the session recorded (``record=True``)."""
    if batch is not None and batches is not None:
        raise TypeError("pass either batch= (one batch) or batches= (several), not both")
    if batch is not None or batches is not None:
        if isinstance(batches, Tensor):
            raise TypeError("batches= must be an iterable of batches (a list); for one tensor batch pass batch=")
        data = [batch] if batch is not None else list(batches)
        if not data:
            raise ValueError("batches= is empty: give at least one batch")
        return [lambda m, b=b: feed(m, b, forward) for b in data]
    if forward is not None:
        raise TypeError("forward= says how batch= or batches= is fed: pass the batches too")
    if recording is None or not recording.calls:
        why = ("was created without record=True" if recording is None else
               "recorded no call of the model")
        raise ValueError(f"qs.report(propagated=True) runs the batches again, in full precision and simulated, and "
                         f"this session {why}: create it with qh.quantized(model, cfg, record=True) (its model "
                         "calls are kept and run again), pass batch= or batches=, or use "
                         "qh.compare(model, cfg, batches=..., per_layer=True)")
    return recording.runs()
