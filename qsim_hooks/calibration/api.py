"""``calibrate(model, cfg, data, ...)``: a calibration pass through the session's own points.

One mechanism, two modes: the session that quantizes is the session that
calibrates. :func:`calibrate` attaches a :class:`~qsim_hooks.session.Session`
for ``cfg``; every point whose format can take a static amax
(:func:`~qsim_hooks.calibration.calibration.calibration_target`) is lent an
observer with quantization off there (``Session.observe(...,
full_precision=True)``, undone on the session's own stack), so the batches
run in full precision (TensorRT calibrates with quantization off) and
every point - layer inputs, weights, outputs, attention internals, whatever
the plan holds - is observed by the same hooks that later quantize it. The
session is detached in ``finally``; then the statistics are merged across
ranks (when ``torch.distributed`` is initialised) and turned into an amax per
point by the chosen method.

:func:`calibrate_session` does the same on a session that is already attached
(INT-FP-QSim's ``replace_layers`` session, in :mod:`qsim_hooks.compat`), and
leaves it attached with its formats restored.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
import torch.distributed as dist
from torch import Tensor, nn

from .. import distributed
from ..batches import ForwardLoop, default_forward, feed, run_forward_loop
from ..config import QuantConfig
from ..formats import Format
from ..points import QuantPoint
from ..progress import steps
from ..session import Session
from ..undo import UndoStack
from .calibration import Calibration, CalibrationTarget, PointCalibration, calibration_target, point_label
from .methods import HISTOGRAM_METHODS, METHODS, SCORING_METHODS, compute_amax
from .observers import HistogramObserver, MaxObserver, Observer

__all__ = ["calibrate", "calibrate_session", "default_forward", "check_method", "make_observers", "Observed"]

Key = tuple[str, str, str]
ForwardFn = Callable[[nn.Module, Any], Any]
#: per-channel histograms have ``bins // CHANNEL_BIN_DIVISOR`` bins
CHANNEL_BIN_DIVISOR = 8


def check_method(method: Any, percentile: Any) -> str | dict[str, str]:
    """Validate ``method`` (a name, or ``{point: name}`` with an optional ``"default"``) and ``percentile``."""
    known = ", ".join(repr(m) for m in sorted(METHODS))
    names: list[tuple[str, Any]]
    if isinstance(method, str):
        names = [("method", method)]
    elif isinstance(method, Mapping):
        if not method:
            raise ValueError("method: an empty mapping; give a method name or {point: method}")
        names = [(f"method[{k!r}]", v) for k, v in method.items()]
        for k in method:
            if not isinstance(k, str):
                raise TypeError(f"method: keys are point names (str) or 'default', got {k!r}")
    else:
        raise TypeError(f"method must be a str or a mapping point -> str, got {type(method).__name__}")
    for who, v in names:
        if not isinstance(v, str) or v.lower() not in METHODS:
            raise ValueError(f"{who}={v!r} is not a calibration method; use one of {known}")
    if isinstance(percentile, bool) or not isinstance(percentile, (int, float)) or \
            not math.isfinite(float(percentile)) or not 0.0 < float(percentile) <= 100.0:
        raise ValueError(f"percentile={percentile!r} must be in (0, 100]")
    if isinstance(method, str):
        return method.lower()
    return {k: v.lower() for k, v in method.items()}


def _method_for(method: str | dict[str, str], point: str) -> str:
    if isinstance(method, str):
        return method
    return method.get(point, method.get("default", "max"))


class _Lent(NamedTuple):
    """One point's observer and what its statistics are turned into."""

    observer: Observer
    format: Format
    target: CalibrationTarget
    method: str


@dataclass
class Observed:
    """The observers a calibration lends to a session's points, and the points it skips (with why)."""

    observers: dict[Key, _Lent] = field(default_factory=dict)
    skipped: dict[Key, str] = field(default_factory=dict)

    def lend(self, session: Session) -> UndoStack:
        """Set the observers on the session's points, quantization off there, until the handle is removed.

        A sharded weight (a DTensor: FSDP2 or tensor parallel) is observed once, as the logical tensor, by its
        first read (:func:`_observe_weights`, before the batches); its reads in forward (FSDP's gathered copy,
        the same values) are not observed again, so the observer keeps no copy of a gathered weight.
        """
        named = dict(session.model.named_modules(remove_duplicate=False))
        once = distributed.first_call_only
        return session.observe({k: once(o.observer) if distributed.sharded_weight(named, k) else o.observer
                                for k, o in self.observers.items()}, full_precision=True)


def make_observers(points: Mapping[Key, QuantPoint], method: str | dict[str, str] = "max", bins: int = 2048,
                   select: Callable[[QuantPoint], bool] | None = None,
                   target_format: Callable[[QuantPoint], Format | None] | None = None) -> Observed:
    """An observer for every point (of ``select``) whose format (or ``target_format``'s) takes a static amax."""
    out = Observed()
    for key, qp in points.items():
        if select is not None and not select(qp):
            continue
        fmt = target_format(qp) if target_format is not None else qp.format
        tgt = calibration_target(fmt, qp.entry.axis)
        if not tgt.ok:
            out.skipped[key] = tgt.reason
            continue
        assert fmt is not None
        m = _method_for(method, qp.entry.point)
        name = point_label(key)
        if m in HISTOGRAM_METHODS:
            # a channel of a weight holds tens to thousands of values: bins / 8 bins (256) resolve them
            nb = bins if tgt.granularity == "tensor" else max(16, bins // CHANNEL_BIN_DIVISOR)
            obs: Observer = HistogramObserver(tgt.axis, name, nb)
        else:
            obs = MaxObserver(tgt.axis, name)
        out.observers[key] = _Lent(obs, fmt, tgt, m)
    return out


def _observe_weights(session: Session, observed: Observed) -> None:
    """Read every observed weight once through its parametrization (so unused weights are calibrated too)."""
    named = dict(session.model.named_modules(remove_duplicate=False))
    for module, point, tensor in observed.observers:
        if point == "weight" and module in named:
            getattr(named[module], tensor)


def _run_batches(model: nn.Module, data: Any, num_batches: int | None, forward: ForwardFn | None,
                 progress: bool | None) -> int:
    if isinstance(data, (Tensor, Mapping)):
        data = [data]  # one batch
    try:
        it = iter(data)
    except TypeError:
        raise TypeError(f"data must be an iterable of batches (a DataLoader, a list, a generator) or one "
                        f"tensor / dict batch, got {type(data).__name__}") from None
    total: int | None = num_batches
    if total is None:
        try:
            total = len(data)
        except TypeError:
            total = None
    elif hasattr(data, "__len__"):
        try:
            total = min(total, len(data))
        except TypeError:
            pass
    n = 0
    with torch.no_grad(), steps("calibrating", total=total, enabled=progress) as advance:
        for batch in it:
            feed(model, batch, forward)
            n += 1
            advance()
            if num_batches is not None and n >= num_batches:
                break
    return n


def _run_loop(model: nn.Module, forward_loop: ForwardLoop, progress: bool | None) -> int:
    """``forward_loop(model)`` under no_grad, a bar counting the model's calls; how many calls there were."""
    with torch.no_grad(), steps("calibrating", enabled=progress) as advance:
        return run_forward_loop(model, forward_loop, lambda out: advance())


def _finish(inst: Observed, method: str | dict[str, str], percentile: float, bins: int, n_batches: int,
            distributed: bool | None) -> Calibration:
    merge = (dist.is_available() and dist.is_initialized()) if distributed is None else distributed
    points: dict[Key, PointCalibration] = {}
    skipped = dict(inst.skipped)
    no_data: list[str] = []
    zero: list[str] = []
    fallback: list[str] = []
    sparse: list[str] = []
    for key, (obs, fmt, tgt, m) in inst.observers.items():  # the plan's order: the same on every rank
        if merge:
            obs.all_reduce()
        label = point_label(key)
        if not obs.seen_data:
            why = ("saw only meta tensors (no values)" if obs.meta_calls else "saw no data") if obs.calls == 0 else (
                "saw only Inf/NaN" if obs.nonfinite else "saw only empty tensors")
            skipped[key] = why
            no_data.append(label if why == "saw no data" else f"{label} ({why})")
            continue
        if m in SCORING_METHODS and not tgt.histogram_scoring:
            fallback.append(label)
            amax = compute_amax("max", obs, fmt, percentile)
            used = "max"
        else:
            amax = compute_amax(m, obs, fmt, percentile)
            used = m
            if m == "entropy" and isinstance(obs, HistogramObserver) and \
                    obs.numel < obs.bins * (obs.channels or 1):
                sparse.append(label)
        pos = amax > 0
        if not bool(pos.any()):
            skipped[key] = "saw only zeros"
            zero.append(label)
            continue
        if not bool(pos.all()):  # all-zero channels (pruned): any amax quantizes them to 0
            amax = torch.where(pos, amax, amax[pos].max())
        vals = [float(v) for v in amax.tolist()]
        fname = getattr(fmt, "name", type(fmt).__name__)
        if tgt.granularity == "channel":
            pc = PointCalibration(*key, tuple(vals), fname, used, "channel", tgt.axis, obs.shape,
                                  obs.numel, obs.nonfinite)
        else:
            pc = PointCalibration(*key, vals[0], fname, used, "tensor", None, None, obs.numel, obs.nonfinite)
        points[key] = pc
    if inst.observers and not points and no_data and len(no_data) == len(inst.observers):
        meta = any(o.observer.meta_calls for o in inst.observers.values())
        raise ValueError(f"calibration: none of the {len(no_data)} points saw finite data ({_few(no_data)}); " + (
            "the model or its batches are on the meta device, which holds no values: materialize the model "
            "(to_empty + load_state_dict) and calibrate on real data" if meta else
            "does `forward` run the model on the batches?"))
    if no_data:
        warnings.warn(f"calibration: {len(no_data)} point(s) saw no data and keep their dynamic scale: "
                      f"{_few(no_data)}", UserWarning, stacklevel=3)
    if zero:
        warnings.warn(f"calibration: {len(zero)} point(s) saw only zeros and keep their dynamic scale: "
                      f"{_few(zero)}", UserWarning, stacklevel=3)
    if fallback:
        warnings.warn(f"calibration: mse/entropy cannot score a two-level block format's tensor amax on a "
                      f"histogram; 'max' was used for {len(fallback)} point(s): {_few(fallback)}",
                      UserWarning, stacklevel=3)
    if sparse:
        warnings.warn(f"calibration: entropy compares distributions, and {len(sparse)} point(s) saw fewer values "
                      f"(per channel) than the histogram has bins, where the divergence says little: "
                      f"{_few(sparse)}; calibrate on more data, or use max / mse there (e.g. "
                      "method={'weight': 'max', 'default': 'entropy'}, TensorRT's practice for weights)",
                      UserWarning, stacklevel=3)
    return Calibration(points, skipped, method, float(percentile), bins, n_batches)


def _few(labels: list[str], n: int = 6) -> str:
    return ", ".join(labels[:n]) + (f", ... ({len(labels)} in all)" if len(labels) > n else "")


def _check_counts(num_batches: Any, bins: Any) -> None:
    if num_batches is not None and (isinstance(num_batches, bool) or not isinstance(num_batches, int)
                                    or num_batches < 1):
        raise ValueError(f"num_batches={num_batches!r} must be a positive int or None (all batches)")
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 16:
        raise ValueError(f"bins={bins!r} must be an int >= 16")


def _collect(session: Session, data: Any, num_batches: int | None, method: str | dict[str, str],
             forward: ForwardFn | None, progress: bool | None, bins: int,
             select: Callable[[QuantPoint], bool] | None,
             target_format: Callable[[QuantPoint], Format | None] | None,
             forward_loop: ForwardLoop | None = None) -> tuple[Observed, int]:
    """Observers lent to the points, weights read once, the batches run; the points given back on exit."""
    inst = make_observers(session.points, method, bins, select, target_format)
    n = 0
    if inst.observers:
        with inst.lend(session):
            _observe_weights(session, inst)
            if forward_loop is not None:
                n = _run_loop(session.model, forward_loop, progress)
                if n == 0:
                    raise ValueError("calibration: forward_loop(model) never called the model; it must run "
                                     "the model on the calibration data")
            elif data is not None:
                n = _run_batches(session.model, data, num_batches, forward, progress)
                if n == 0:
                    raise ValueError("calibration: `data` yielded no batches (an empty loader?); give at "
                                     "least one batch")
    else:
        warnings.warn("calibration: no point has a format that takes a static scale "
                      f"({_few([f'{point_label(k)}: {r}' for k, r in inst.skipped.items()], 3) or 'no points'}); "
                      "the calibration is empty", UserWarning, stacklevel=3)
    return inst, n


def calibrate_session(session: Session, data: Any = None, *, num_batches: int | None = None,
                      method: str | Mapping[str, str] = "max", percentile: float = 99.99,
                      forward: ForwardFn | None = None, progress: bool | None = None, bins: int = 2048,
                      select: Callable[[QuantPoint], bool] | None = None,
                      target_format: Callable[[QuantPoint], Format | None] | None = None,
                      distributed: bool | None = None) -> Calibration:
    """Calibrate the points of an attached session (it stays attached, formats restored).

    ``select`` limits the points; ``target_format`` gives the format to
    calibrate a point for (default: its own). ``data=None`` runs no batch: only
    weights are observed (read once through their parametrization).
    ``distributed`` merges across ranks (default: when torch.distributed is
    initialised). Arguments otherwise as :func:`calibrate`.
    """
    if not session.attached:
        raise RuntimeError("calibrate_session needs an attached session")
    m = check_method(method, percentile)
    _check_counts(num_batches, bins)
    inst, n = _collect(session, data, num_batches, m, forward, progress, bins, select, target_format)
    return _finish(inst, m, percentile, bins, n, distributed)


def calibrate(model: nn.Module, cfg: QuantConfig, data: Iterable[Any] | None = None, num_batches: int | None = None,
              method: str | Mapping[str, str] = "max", percentile: float = 99.99,
              forward: ForwardFn | None = None, progress: bool | None = None, bins: int = 2048, *,
              forward_loop: ForwardLoop | None = None) -> Calibration:
    """Run ``data`` through ``model`` with observers at every calibratable point of ``cfg``.

    Args:
        model: the model (unchanged afterwards; put it in ``eval()`` mode first:
            the batches run as the model is, BatchNorm in training mode would
            update its statistics).
        cfg: the QuantConfig that will be evaluated; points whose format is
            scaled (integers, scaled floats, NVFP4's tensor level) are calibrated.
        data: an iterable of batches (DataLoader, list, generator), or one
            tensor / dict as a single batch; or ``None`` with ``forward_loop``.
        num_batches: use at most this many batches (``None``: all).
        method: ``"max"``, ``"percentile"``, ``"entropy"`` or ``"mse"``, or a
            mapping from point name to method, e.g.
            ``{"weight": "max", "default": "entropy"}``.
        percentile: for ``"percentile"``, in (0, 100].
        forward: ``forward(model, batch)`` feeds a batch (INT-FP-QSim's
            ``batch_process_func``); default :func:`default_forward` (a batch
            that does not fit the model's ``forward``, such as ``(images, labels)``,
            is a TypeError that says what to pass).
        progress: a rich progress bar over the batches (on stderr): ``None`` shows it
            when stderr is a terminal, ``False`` never, ``True`` always.
        bins: histogram bins (histogram methods; per-channel histograms get
            ``bins // 8``).
        forward_loop: instead of ``data``, ``forward_loop(model)`` runs the
            model on the calibration data itself (ModelOpt's ``forward_loop``);
            ``num_batches`` and ``forward`` do not apply.

    Returns:
        a :class:`Calibration` for ``qh.quantized(model, cfg, calibration=...)``.

    When ``torch.distributed`` is initialised every rank must call this with
    the same model and config; the statistics are merged so that every rank
    gets the same scales.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(cfg, QuantConfig):
        raise TypeError(f"cfg must be a qsim_hooks.QuantConfig, got {type(cfg).__name__}")
    m = check_method(method, percentile)
    _check_counts(num_batches, bins)
    if forward_loop is not None:
        if data is not None or forward is not None:
            raise TypeError("calibrate: pass either data= (with forward=) or forward_loop=, not both")
        if not callable(forward_loop):
            raise TypeError(f"calibrate: forward_loop must be a function fn(model) that runs the model, got "
                            f"{type(forward_loop).__name__}")
    elif data is None:
        raise ValueError("calibrate: data is None; give an iterable of batches, or forward_loop=fn (a function "
                         "that runs the model on the calibration data)")
    if model.training:
        warnings.warn("calibrate: the model is in training mode (BatchNorm statistics and dropout change "
                      "with every batch); call model.eval() first", UserWarning, stacklevel=2)
    session = Session(model, cfg)
    session.attach()
    try:
        inst, n = _collect(session, data, num_batches, m, forward, progress, bins, None, None, forward_loop)
    finally:
        session.detach()  # always; the amax is computed from the observers alone
    return _finish(inst, m, percentile, bins, n, None)
