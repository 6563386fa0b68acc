"""INT-FP-QSim's static calibration (``calibrate_inputs``, ``calibrate_weights``) on qsim-hooks' calibration.

INT-FP-QSim (``int_fp_qsim/static_calib.py``, read for this module; nothing
copied) hooks TensorRT histogram calibrators onto its layers and stores the
results as ``amax_input`` / ``amax_weight`` attributes of the modules, which
its replaced layers pass to their quantizers as ``static_scale``. Here the
same signatures run :func:`qsim_hooks.calibrate`'s mechanism, and the scales
never go onto the user's modules. How they reach the layers:

* **on the session** :func:`~qsim_hooks.compat.replace_layers` **returned**
  (INT-FP-QSim's usual order: replace, calibrate, evaluate) the functions
  calibrate that session's own points and set each amax on its point
  (``QuantPoint.set_amax``), so the next forward uses the static scales;
  a point whose quantizer takes no scale (an unscaled ``E4M3`` / ``FP16`` cast)
  keeps its amax only in the returned Calibration, with a warning;
* **on a plain model** they calibrate the layers INT-FP-QSim would replace
  (:data:`~qsim_hooks.compat.DEFAULT_LAYERS`) and return the
  :class:`~qsim_hooks.Calibration`; apply it later with
  :func:`apply_calibration` (to a ``replace_layers`` session) or
  ``qh.quantized(model, cfg, calibration=calib)``. Calibrations of inputs and
  weights combine with ``calib_in.merged(calib_w)``.

Both return the Calibration.

Kept from INT-FP-QSim: ``num_bits`` and ``unsigned`` pick the integer grid
that ``entropy`` and ``mse`` score against (TensorRT's
``HistogramCalibrator(num_bits, unsigned)``); method names ``"max"``,
``"percentile"``, ``"entropy"``, ``"mse"`` (any case, ``"MSE"`` too);
``num_samples`` batches; ``batch_process_func(model, batch)``; a batch is fed
as ``model(**batch)`` when it is a mapping, ``model(batch)`` otherwise;
``calibrate_weights`` needs no data; ``perchannel=True`` gives one amax per
output channel (axis 1 of a ConvTranspose weight) shaped to broadcast
against the weight (``[C, 1, 1, 1]``), which the compat quantizers take as a
per-channel ``static_scale``; ``input`` is the layer's first argument.

Differences: no prints (a rich progress bar on a terminal); an unknown method
is a ValueError (INT-FP-QSim: TypeError); ``calibrate_weights`` also offers
``entropy``; the histograms grow by exact power-of-two re-binning instead of
TensorRT's appended bins, and a per-channel weight histogram has
``num_bins // 8`` bins (see :mod:`qsim_hooks.calibration.observers`);
``max`` ignores Inf/NaN elements.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from torch import nn

from ..calibration import Calibration, calibrate, calibrate_session, calibration_target
from ..config import QuantConfig, Rule
from ..formats import IntFormat, Scaling
from ..points import QuantPoint
from ..session import Session
from .layers import DEFAULT_LAYERS
from .quantizers import _Compat

__all__ = ["calibrate_inputs", "calibrate_weights", "apply_calibration"]


def _method(method: Any) -> str:
    if not isinstance(method, str):
        raise TypeError(f"method must be a str ('max', 'percentile', 'entropy', 'mse'), got {type(method).__name__}")
    return method.lower()


def _target(num_bits: Any, unsigned: Any, who: str) -> IntFormat:
    if isinstance(num_bits, bool) or not isinstance(num_bits, int):
        raise TypeError(f"{who}: num_bits must be an int, got {type(num_bits).__name__}")
    if not 2 <= num_bits <= 16:
        raise ValueError(f"{who}: num_bits={num_bits} is out of range; allowed 2..16")
    if not isinstance(unsigned, bool):
        raise TypeError(f"{who}: unsigned must be a bool, got {type(unsigned).__name__}")
    return IntFormat(num_bits, signed=not unsigned)


def _feed(batch_process_func: Callable[[nn.Module, Any], Any] | None) -> Callable[[nn.Module, Any], Any]:
    if batch_process_func is not None:
        if not callable(batch_process_func):
            raise TypeError("batch_process_func must be callable: batch_process_func(model, batch)")
        return batch_process_func
    return lambda model, batch: model(**batch) if isinstance(batch, Mapping) else model(batch)


def _layers_cfg(**formats: Any) -> QuantConfig:
    return QuantConfig(**formats, rules=(Rule(enabled=False, name="not an INT-FP-QSim layer"),
                                         Rule(types=DEFAULT_LAYERS, enabled=True, name="INT-FP-QSim layers")),
                       strict=False)


def _session_of(model: Any) -> Session | None:
    if isinstance(model, Session):
        if not model.attached:
            raise RuntimeError("the replace_layers session is detached; calibrate the model itself, or "
                               "replace_layers again")
        return model
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module or the session replace_layers returned, got "
                        f"{type(model).__name__}")
    return None


def apply_calibration(session: Session, calibration: Calibration) -> list[str]:
    """Set the calibrated amax of every point of ``session`` that can take it (``QuantPoint.set_amax``).

    Returns the labels of the points that got an amax. Points of the
    calibration that the session's quantizer cannot use (an unscaled cast,
    per-channel scales for a per-tensor format) are named in a warning.
    """
    if not isinstance(calibration, Calibration):
        raise TypeError(f"calibration must be a qsim_hooks.Calibration, got {type(calibration).__name__}")
    if not isinstance(session, Session):
        raise TypeError(f"session must be a Session (what replace_layers returns), got {type(session).__name__}")
    calibration.validate(session.model)
    applied: list[str] = []
    unused: list[str] = []
    for key, pc in calibration.points.items():
        qp: QuantPoint | None = session.points.get(key)
        if qp is None:
            continue
        tgt = calibration_target(qp.format, qp.entry.axis)
        if not tgt.ok:
            unused.append(f"{pc.label} ({tgt.reason})")
            continue
        # the compat quantizers read a per-channel static_scale from its shape
        if pc.granularity == "channel" and tgt.granularity == "tensor" and not isinstance(qp.format, _Compat):
            unused.append(f"{pc.label} (per-channel amax, per-tensor format {qp.format.name})")  # type: ignore[union-attr]
            continue
        qp.set_amax(pc.amax_tensor())
        applied.append(pc.label)
    if unused:
        shown = "; ".join(unused[:5]) + (f"; ... ({len(unused)} in all)" if len(unused) > 5 else "")
        warnings.warn(f"calibration: amax not applied to {len(unused)} point(s) whose quantizer cannot take it "
                      f"(kept in the returned Calibration): {shown}", UserWarning, stacklevel=2)
    return applied


def _calibrate_replaced(session: Session, data: Any, point: str, target: Callable[[QuantPoint], Any],
                        **kwargs: Any) -> Calibration:
    calib = calibrate_session(session, data, select=lambda qp: qp.entry.point == point,
                              target_format=target, **kwargs)
    if not calib.points and not calib.skipped:
        warnings.warn(f"calibration: the replace_layers session has no {point} quantizer to calibrate "
                      f"(replace_layers(..., {point}_quantizer=None)?)", UserWarning, stacklevel=3)
    apply_calibration(session, calib)
    return calib


def calibrate_inputs(model: Any, num_bits: int, dataloader: Iterable[Any], unsigned: bool = False,
                     num_samples: int = 5, batch_process_func: Callable[[nn.Module, Any], Any] | None = None,
                     method: str = "max", percentile: float = 99.99) -> Calibration:
    """Static calibration of the layer inputs (INT-FP-QSim's signature).

    Args:
        model: the session ``replace_layers`` returned (its input points get
            the amax), or a plain model (nothing is set; use the result).
        num_bits, unsigned: the integer grid entropy / mse score against.
        dataloader: the batches; at most ``num_samples`` are used.
        batch_process_func: ``f(model, batch)`` feeds a batch.
        method: ``"max"``, ``"percentile"``, ``"entropy"`` or ``"mse"``.
        percentile: for ``"percentile"``.

    Returns:
        the :class:`~qsim_hooks.Calibration` of the ``input`` points.
    """
    target = _target(num_bits, unsigned, "calibrate_inputs")
    kwargs = dict(num_batches=num_samples, method=_method(method), percentile=percentile,
                  forward=_feed(batch_process_func))
    session = _session_of(model)
    if session is not None:
        return _calibrate_replaced(session, dataloader, "input", lambda qp: target, **kwargs)
    return calibrate(model, _layers_cfg(input=target), dataloader, **kwargs)  # type: ignore[arg-type]


def calibrate_weights(model: Any, num_bits: int, unsigned: bool, method: str = "max", perchannel: bool = False,
                      percentile: float = 99.99, num_bins: int = 2048) -> Calibration:
    """Static calibration of the layer weights (INT-FP-QSim's signature; no data needed).

    Args:
        model: the session ``replace_layers`` returned (its weight points get
            the amax), or a plain model (nothing is set; use the result).
        num_bits, unsigned: the integer grid entropy / mse score against.
        method: ``"max"``, ``"percentile"``, ``"entropy"`` or ``"mse"``.
        perchannel: one amax per output channel instead of one per weight.
        percentile: for ``"percentile"``.
        num_bins: histogram bins (per-channel histograms get ``num_bins // 8``).

    Returns:
        the :class:`~qsim_hooks.Calibration` of the ``weight`` points.
    """
    target = _target(num_bits, unsigned, "calibrate_weights")
    if not isinstance(perchannel, bool):
        raise TypeError(f"calibrate_weights: perchannel must be a bool, got {type(perchannel).__name__}")
    kwargs = dict(method=_method(method), percentile=percentile, bins=num_bins, progress=False)
    session = _session_of(model)
    if session is not None:
        def weight_target(qp: QuantPoint) -> IntFormat:
            if not perchannel:
                return target
            spec = session.cfg.layer_spec(dict(session.model.named_modules())[qp.entry.module])
            axis = spec.weight_channel_axis if spec is not None else 0
            return IntFormat(num_bits, signed=not unsigned, scaling=Scaling("channel", axis=axis))

        return _calibrate_replaced(session, None, "weight", weight_target, **kwargs)
    fmt = IntFormat(num_bits, signed=not unsigned, scaling=Scaling("channel" if perchannel else "tensor"))
    own = Session(model, _layers_cfg(weight=fmt)).attach()
    try:
        return calibrate_session(own, None, **kwargs)  # type: ignore[arg-type]
    finally:
        own.detach()
