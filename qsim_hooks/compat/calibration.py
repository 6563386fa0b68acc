"""INT-FP-QSim's static calibration (``calibrate_inputs``, ``calibrate_weights``), with its numbers.

INT-FP-QSim (``int_fp_qsim/static_calib.py``, read for this module; nothing copied) hooks TensorRT
histogram calibrators onto the layers it knows (classes named ``Linear``, ``Conv1d``, ``Conv2d``,
``ConvTranspose2d`` that have a weight) and stores the results on the modules as ``amax_input`` (a 0-d
tensor) and ``amax_weight`` (a numpy array, ``[C, 1, 1, 1]`` per channel). Compat does the same, in
TensorRT's arithmetic (:mod:`._trt`), so a calibrated model gives the old tool's numbers in either order:

* **calibrate, then replace** (the old README): the attributes are set on the plain model and
  :func:`~qsim_hooks.compat.replace_layers` honours them;
* **replace, then calibrate**: the model ``replace_layers`` returned is calibrated *while quantized* (as the
  old replaced layers were: each layer sees its raw input, the previous layers' quantized outputs), and the
  session's points get the static scales at once.

Both also return a :class:`~qsim_hooks.Calibration` (for ``replace_layers(..., calibration=)``,
``apply_calibration`` or ``qh.quantized(..., calibration=)``). The attributes are INT-FP-QSim's contract:
they are the user's data and stay on the modules after ``detach`` (:func:`clear_scales` removes them).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from ..calibration import Calibration, PointCalibration
from ..session import Session
from . import _trt
from .layers import session_of, set_static, warn_unused

__all__ = ["calibrate_inputs", "calibrate_weights", "clear_scales"]

_LAYER_NAMES = ("Linear", "Conv1d", "Conv2d", "ConvTranspose2d")  # INT-FP-QSim matches class names
_CHANNEL_SECOND = ("ConvTranspose1d", "ConvTranspose2d", "ConvTranspose3d")
_METHODS = ("max", "percentile", "entropy", "mse")


def _method(method: Any) -> str:
    if not isinstance(method, str):
        raise TypeError(f"method must be a str ({', '.join(map(repr, _METHODS))}), got {type(method).__name__}")
    m = method.lower()
    if m not in _METHODS:
        raise ValueError(f"method={method!r} is not a calibration method; use one of {', '.join(_METHODS)}")
    return m


def _grid(num_bits: Any, unsigned: Any, who: str) -> str:
    if isinstance(num_bits, bool) or not isinstance(num_bits, int):
        raise TypeError(f"{who}: num_bits must be an int, got {type(num_bits).__name__}")
    if not 2 <= num_bits <= 16:
        raise ValueError(f"{who}: num_bits={num_bits} is out of range; allowed 2..16")
    if not isinstance(unsigned, bool):
        raise TypeError(f"{who}: unsigned must be a bool, got {type(unsigned).__name__}")
    return f"{'u' if unsigned else ''}int{num_bits}"


def _model_and_session(model: Any, who: str) -> tuple[nn.Module, Session | None]:
    if isinstance(model, Session):
        if not model.attached:
            raise RuntimeError(f"{who}: the session is detached; calibrate the model itself, or replace_layers "
                               "again")
        return model.model, model
    if not isinstance(model, nn.Module):
        raise TypeError(f"{who}: model must be a torch.nn.Module, got {type(model).__name__}")
    return model, session_of(model)


def _layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules()
            if parametrize.type_before_parametrizations(m).__name__ in _LAYER_NAMES and hasattr(m, "weight")]


def _weight(m: nn.Module) -> Tensor:
    """The layer's own weight (under a session, the parametrization's original, not the quantized one)."""
    if parametrize.is_parametrized(m, "weight"):
        return m.parametrizations.weight.original  # type: ignore[union-attr, return-value]
    return m.weight  # type: ignore[return-value]


def _feed(batch_process_func: Callable[[nn.Module, Any], Any] | None) -> Callable[[nn.Module, Any], Any]:
    if batch_process_func is not None:
        if not callable(batch_process_func):
            raise TypeError("batch_process_func must be callable: batch_process_func(model, batch)")
        return batch_process_func
    return lambda model, batch: model(**batch) if isinstance(batch, Mapping) else model(batch)


def _point(name: str, point: str, amax: Tensor, grid: str, method: str, axis: int | None, numel: int
           ) -> PointCalibration | str:
    """A PointCalibration, or why there is none (a Calibration holds amax > 0 only)."""
    flat = amax.flatten().tolist()
    if not all(np.isfinite(v) and v > 0 for v in flat):
        return f"amax {flat[:4]} (INT-FP-QSim keeps it on the module; a Calibration holds amax > 0 only)"
    if axis is None:
        return PointCalibration(name, point, point, float(flat[0]), grid, method, numel=numel)
    return PointCalibration(name, point, point, tuple(float(v) for v in flat), grid, method, "channel", axis,
                            tuple(amax.shape), numel)


def _record(calib: Calibration, session: Session | None, unused: list[str], key: tuple[str, str, str],
            amax: Tensor, pc: PointCalibration | str) -> None:
    """Put one layer's amax into the Calibration (or its reason into ``skipped``) and onto the session's point."""
    if isinstance(pc, str):
        calib.skipped[key] = pc
    else:
        calib.points[key] = pc
    if session is not None and (why := set_static(session, key, amax)):
        unused.append(why)


class _InputObserver:
    """TensorRT's collection of a layer's first argument: the running max |x| and, if needed, a histogram."""

    def __init__(self, histogram: bool) -> None:
        self.max: Tensor | None = None
        self.hist = _trt.Histogram() if histogram else None
        self.numel = 0

    def __call__(self, module: nn.Module, args: tuple) -> None:
        x = args[0] if args else None
        if not isinstance(x, Tensor) or not x.is_floating_point() or x.numel() == 0:
            return
        x = x.detach()
        a = x.abs()
        m = torch.where(torch.isfinite(a), a, 0.0).max()
        self.max = m if self.max is None or bool(m > self.max) else self.max
        if self.hist is not None:
            self.hist.collect(x)
        self.numel += x.numel()

    def amax(self, method: str, percentile: float, num_bits: int, unsigned: bool) -> Tensor | None:
        if self.max is None:
            return None
        if method == "max":
            return self.max.float()
        counts, edges = self.hist.arrays()  # type: ignore[union-attr, misc]
        if method == "percentile":
            return _trt.amax_percentile(counts, edges, percentile)
        return (_trt.amax_mse if method == "mse" else _trt.amax_entropy)(counts, edges, num_bits, unsigned)


def calibrate_inputs(model: Any, num_bits: int, dataloader: Iterable[Any], unsigned: bool = False,
                     num_samples: int = 5, batch_process_func: Callable[[nn.Module, Any], Any] | None = None,
                     method: str = "max", percentile: float = 99.99) -> Calibration:
    """Static calibration of the layer inputs (INT-FP-QSim's signature and numbers).

    Sets ``amax_input`` on every calibrated layer and, on a model :func:`replace_layers` instruments, the
    static scale of its input point. Returns the :class:`~qsim_hooks.Calibration` of the ``input`` points.

    Args:
        model: the model (plain, or returned by ``replace_layers``).
        num_bits, unsigned: the integer grid entropy / mse score against.
        dataloader: the batches; the first ``num_samples`` are used (all of them when ``num_samples <= 0``).
        batch_process_func: ``f(model, batch)`` feeds a batch (default: ``model(**batch)`` for a mapping,
            ``model(batch)`` otherwise).
        method: ``"max"``, ``"percentile"``, ``"entropy"`` or ``"mse"`` (any case).
        percentile: for ``"percentile"``.
    """
    grid = _grid(num_bits, unsigned, "calibrate_inputs")
    method = _method(method)
    feed = _feed(batch_process_func)
    net, session = _model_and_session(model, "calibrate_inputs")
    layers = _layers(net)
    observers = {name: _InputObserver(method != "max") for name, _ in layers}
    # prepended: they see each layer's raw input, before a session's input quantizer
    handles = [m.register_forward_pre_hook(observers[name], prepend=True) for name, m in layers]
    n = 0
    try:
        with torch.no_grad():
            for i, batch in enumerate(dataloader):
                feed(net, batch)
                n += 1
                if i == num_samples - 1:
                    break
    finally:
        for h in handles:
            h.remove()
    if n == 0:
        raise ValueError("calibrate_inputs: the dataloader yielded no batches")
    calib = Calibration(method=method, percentile=percentile if method == "percentile" else None,
                        bins=None if method == "max" else 2048, num_batches=n)
    unused = []
    for name, m in layers:
        obs = observers[name]
        amax = obs.amax(method, percentile, num_bits, unsigned)
        key = (name, "input", "input")
        if amax is None:
            calib.skipped[key] = "the layer saw no input"
            continue
        m.amax_input = amax
        _record(calib, session, unused, key, amax, _point(name, "input", amax, grid, method, None, obs.numel))
    warn_unused(unused, "calibrate_inputs")
    return calib


def _weight_amax(w: Tensor, axis: int | None, method: str, percentile: float, num_bits: int, unsigned: bool,
                 num_bins: int) -> Tensor:
    """One weight's amax (0-d, or shaped to broadcast per channel) by INT-FP-QSim's rules."""
    with torch.no_grad():
        if method == "max":
            a = w.abs()
            return a.amax() if axis is None else a.amax(dim=[d for d in range(w.dim()) if d != axis], keepdim=True)
        if axis is None:  # one histogram of |w| over [min, max] (numpy's range), always 2048 bins
            hists = [np.histogram(w.abs().cpu().numpy(), bins=2048)]
        else:
            hists = [np.histogram(w.index_select(axis, torch.tensor(i, device=w.device)).abs().cpu().numpy(),
                                  bins=num_bins) for i in range(w.shape[axis])]
        if method == "percentile":
            amax = [_trt.amax_percentile(c, e, percentile) for c, e in hists]
        else:
            fn = _trt.amax_mse if method == "mse" else _trt.amax_entropy
            amax = [fn(c, e, num_bits, unsigned) for c, e in hists]
        if axis is None:
            return amax[0]
        shape = [1] * w.dim()
        shape[axis] = w.shape[axis]
        return torch.stack(amax).reshape(shape)


def calibrate_weights(model: Any, num_bits: int, unsigned: bool, method: str = "max", perchannel: bool = False,
                      percentile: float = 99.99, num_bins: int = 2048) -> Calibration:
    """Static calibration of the layer weights (INT-FP-QSim's signature and numbers; no data needed).

    Sets ``amax_weight`` (a float32 numpy array, ``[C, 1, ...]`` per channel: axis 1 for a ConvTranspose)
    on every calibrated layer and, on a model :func:`replace_layers` instruments, the static scale of its
    weight point. Returns the :class:`~qsim_hooks.Calibration` of the ``weight`` points.

    Args:
        model: the model (plain, or returned by ``replace_layers``).
        num_bits, unsigned: the integer grid mse / entropy score against.
        method: ``"max"``, ``"percentile"``, ``"mse"`` or ``"entropy"`` (INT-FP-QSim had no entropy here).
        perchannel: one amax per output channel instead of one per weight.
        percentile: for ``"percentile"``.
        num_bins: bins of each per-channel histogram (a per-tensor one has 2048, as in INT-FP-QSim).
    """
    grid = _grid(num_bits, unsigned, "calibrate_weights")
    method = _method(method)
    if not isinstance(perchannel, bool):
        raise TypeError(f"calibrate_weights: perchannel must be a bool, got {type(perchannel).__name__}")
    net, session = _model_and_session(model, "calibrate_weights")
    calib = Calibration(method=method, percentile=percentile if method == "percentile" else None,
                        bins=None if method == "max" else num_bins)
    unused = []
    for name, m in _layers(net):
        w = _weight(m).detach()
        if perchannel:
            axis: int | None = 1 if parametrize.type_before_parametrizations(m).__name__ in _CHANNEL_SECOND else 0
        else:
            axis = None
        amax = _weight_amax(w, axis, method, percentile, num_bits, unsigned, num_bins).float().cpu()
        m.amax_weight = amax.numpy()
        key = (name, "weight", "weight")
        _record(calib, session, unused, key, amax, _point(name, "weight", amax, grid, method, axis, w.numel()))
    warn_unused(unused, "calibrate_weights")
    return calib


def clear_scales(model: nn.Module) -> int:
    """Remove the ``amax_input`` / ``amax_weight`` attributes the calibration functions set; returns how many."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"clear_scales: model must be a torch.nn.Module, got {type(model).__name__}")
    n = 0
    for m in model.modules():
        for attr in ("amax_input", "amax_weight"):
            if attr in m.__dict__:
                delattr(m, attr)
                n += 1
    return n
