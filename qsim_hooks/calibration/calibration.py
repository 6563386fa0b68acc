"""The :class:`Calibration`: static scales per quantization point, and which points can take one.

A Calibration maps ``(module, point, tensor)`` - the key of a session's
points - to a :class:`PointCalibration` (the amax, per tensor or one per
channel, with the format it was calibrated for and the method). A session
built with ``calibration=`` asks :meth:`Calibration.amax_for` for every point
it attaches; points without an entry keep their dynamic scale. It is plain
data: :meth:`Calibration.save` writes JSON (floats written exactly, so a
saved and reloaded calibration gives bit-identical outputs) and
:meth:`Calibration.load` reads it back, checked against a model when one is
given. Nothing is stored on the user's modules.

:func:`calibration_target` decides what a format can be calibrated for:

* integer and scaled float formats (``IntFormat``, ``FloatFormat(...,
  scaling=Scaling(...))``, the compat ``INT8``/``E2M1``...): one amax per
  tensor or, with channel granularity, one per channel;
* NVFP4-style two-level block formats: the fp32 tensor level (one amax), the
  block scales stay computed from each block;
* not calibratable (no amax, the point keeps what its format does): unscaled
  casts (``e4m3``, ``fp16``, ...), MX / BFP / ABFP block formats (their scales
  are computed from each block: there is nothing static to fix), scaled
  formats with block granularity, formats that fix their own amax (qtorch's
  fixed point), and callables.
"""

from __future__ import annotations

import json
import os
import sys
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor, nn

from ..formats import Format, Scaling
from ..formats.block import BlockFormat
from .entries import check_amax_values, check_entry, read_entries

__all__ = ["Calibration", "PointCalibration", "CalibrationTarget", "calibration_target", "point_label",
           "FORMAT_MAGIC", "SCHEMA_VERSION"]

FORMAT_MAGIC = "qsim_hooks.calibration"
SCHEMA_VERSION = 1
Key = tuple[str, str, str]
#: methods whose amax depends on the target format (a mismatch at evaluation is warned about)
_FORMAT_DEPENDENT = ("mse", "entropy")


def point_label(key: Key) -> str:
    """``layer.weight`` for a weight, ``layer[input]`` for an activation point."""
    module, point, tensor = key
    m = module or "<model>"
    return f"{m}.{tensor}" if point == "weight" else f"{m}[{point}]"


def _library_version() -> str:
    return str(getattr(sys.modules.get("qsim_hooks"), "__version__", "unknown"))


# ---------------------------------------------------------------------------
# what a format can be calibrated for
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class CalibrationTarget:
    """What a calibration computes for a format (``ok=False``: nothing, and ``reason`` says why)."""

    ok: bool
    granularity: Literal["tensor", "channel"] = "tensor"
    axis: int | None = None
    histogram_scoring: bool = True  # mse / entropy can score candidates on a histogram
    reason: str = ""


def _scaling_of(fmt: Any) -> Scaling | None:
    sc = getattr(fmt, "scaling", None)
    if isinstance(sc, Scaling):
        return sc
    inner = getattr(fmt, "format", None)  # the compat quantizers wrap a format
    sc = getattr(inner, "scaling", None)
    return sc if isinstance(sc, Scaling) else None


def calibration_target(fmt: Format | None, entry_axis: int | None = None) -> CalibrationTarget:
    """Whether (and at which granularity) a point with format ``fmt`` takes a calibrated amax."""
    if fmt is None:
        return CalibrationTarget(False, reason="full precision")
    name = getattr(fmt, "name", type(fmt).__name__)
    if not fmt.is_scaled:
        return CalibrationTarget(False, reason=f"{name} is an unscaled cast: it has no scale to calibrate")
    if isinstance(fmt, BlockFormat):
        if fmt.tensor_scale:
            return CalibrationTarget(True, "tensor", None, histogram_scoring=False)
        return CalibrationTarget(False, reason=f"{name}: block scales are computed from each block; "
                                               "there is no static scale to calibrate")
    sc = _scaling_of(fmt)
    if sc is None:
        return CalibrationTarget(False, reason=f"{name} has no Scaling to calibrate")
    if sc.amax is not None:
        return CalibrationTarget(False, reason=f"{name} fixes its own amax ({sc.amax:g})")
    if sc.granularity == "block":
        return CalibrationTarget(False, reason=f"{name}: per-block scales are computed from each block")
    if sc.granularity == "channel":
        axis = sc.axis if sc.axis is not None else (entry_axis if entry_axis is not None else 0)
        return CalibrationTarget(True, "channel", axis)
    return CalibrationTarget(True, "tensor", None)


# ---------------------------------------------------------------------------
# the data
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class PointCalibration:
    """The static scale of one point.

    Attributes:
        module, point, tensor: the point's key (as in ``session.points``).
        amax: one float (per tensor) or a tuple of floats (one per channel).
        format: name of the format it was calibrated for.
        method: ``max``, ``percentile``, ``entropy`` or ``mse``.
        granularity: ``"tensor"`` or ``"channel"``.
        axis: the channel axis (channel granularity).
        shape: how the per-channel amax broadcasts against the tensor
            (``[C, 1, 1, 1]`` for a conv weight), ``None`` per tensor.
        numel: finite elements observed.
        nonfinite: Inf / NaN elements observed (left out).
    """

    module: str
    point: str
    tensor: str
    amax: float | tuple[float, ...]
    format: str
    method: str
    granularity: Literal["tensor", "channel"] = "tensor"
    axis: int | None = None
    shape: tuple[int, ...] | None = None
    numel: int = 0
    nonfinite: int = 0

    def __post_init__(self) -> None:
        vals = self.amax if isinstance(self.amax, tuple) else (self.amax,)
        if check_amax_values(vals) is not None:  # in float32, where the session uses it
            raise ValueError(f"{point_label(self.key)}: amax must be finite and > 0 in float32, got "
                             f"{list(vals)[:4]}")
        if self.granularity not in ("tensor", "channel"):
            raise ValueError(f"{point_label(self.key)}: granularity={self.granularity!r}; use 'tensor' or "
                             "'channel'")
        if self.granularity == "tensor" and isinstance(self.amax, tuple):
            raise ValueError(f"{point_label(self.key)}: a per-tensor amax is one value, got {len(self.amax)}")

    @property
    def key(self) -> Key:
        return (self.module, self.point, self.tensor)

    @property
    def label(self) -> str:
        return point_label(self.key)

    def amax_tensor(self) -> Tensor:
        """The amax as a float32 tensor (shaped to broadcast, per channel)."""
        t = torch.tensor(self.amax, dtype=torch.float32)
        if isinstance(self.amax, tuple) and self.shape is not None:
            t = t.reshape(self.shape)
        return t

    def to_dict(self) -> dict[str, Any]:
        return {"module": self.module, "point": self.point, "tensor": self.tensor,
                "amax": list(self.amax) if isinstance(self.amax, tuple) else self.amax,
                "format": self.format, "method": self.method, "granularity": self.granularity,
                "axis": self.axis, "shape": None if self.shape is None else list(self.shape),
                "numel": self.numel, "nonfinite": self.nonfinite}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PointCalibration:
        """One entry as :meth:`to_dict` writes it (checked: ValueError naming what is wrong)."""
        return cls(**check_entry(d, "calibration entry"))


@dataclass
class Calibration:
    """Static scales for a model's quantization points (what :func:`qsim_hooks.calibrate` returns).

    Use it with ``qh.quantized(model, cfg, calibration=calib)``. Look points up
    with ``calib[("layer1.0.conv1", "input", "input")]``; iterate for every
    :class:`PointCalibration`. ``skipped`` maps the keys of points that got no
    amax to the reason (an unscaled format, no data, ...).
    """

    points: dict[Key, PointCalibration] = field(default_factory=dict)
    skipped: dict[Key, str] = field(default_factory=dict)
    method: str | dict[str, str] = "max"
    percentile: float | None = None
    bins: int | None = None
    num_batches: int = 0
    version: str = field(default_factory=_library_version)

    def __post_init__(self) -> None:
        if not isinstance(self.points, dict):
            self.points = {p.key: p for p in self.points}
        for k, p in self.points.items():
            if not isinstance(p, PointCalibration):
                raise TypeError(f"Calibration.points[{k!r}] must be a PointCalibration, got {type(p).__name__}")

    # -- mapping-like access --------------------------------------------------
    def __len__(self) -> int:
        return len(self.points)

    def __iter__(self) -> Iterator[PointCalibration]:
        return iter(self.points.values())

    def __contains__(self, key: object) -> bool:
        return key in self.points

    def __getitem__(self, key: Key) -> PointCalibration:
        try:
            return self.points[key]
        except KeyError:
            why = self.skipped.get(key)
            raise KeyError(f"no calibrated amax for {key!r}" + (f" ({why})" if why else "")) from None

    def keys(self) -> list[Key]:
        return list(self.points)

    def amax(self, module: str, point: str = "input", tensor: str | None = None) -> float | tuple[float, ...]:
        """The amax of one point: ``calib.amax("fc", "input")``, ``calib.amax("fc", "weight", "weight")``."""
        if tensor is None:
            tensor = "weight" if point == "weight" else point
        return self[(module, point, tensor)].amax

    def merged(self, *others: Calibration) -> Calibration:
        """A new Calibration with the points of ``self`` and ``others`` (later ones win per key)."""
        points = dict(self.points)
        skipped = dict(self.skipped)
        for o in others:
            if not isinstance(o, Calibration):
                raise TypeError(f"merged: expected Calibration objects, got {type(o).__name__}")
            points.update(o.points)
            skipped.update(o.skipped)
        for k in points:
            skipped.pop(k, None)
        methods = {p.method for p in points.values()}
        method: str | dict[str, str] = methods.pop() if len(methods) == 1 else "mixed"
        return Calibration(points, skipped, method, self.percentile, self.bins,
                           max([self.num_batches] + [o.num_batches for o in others]), self.version)

    def to_rows(self) -> list[dict[str, Any]]:
        """One dict per calibrated point (plain data, for a table or a DataFrame)."""
        return [p.to_dict() for p in self.points.values()]

    # -- use by a session -----------------------------------------------------
    def amax_for(self, entry: Any) -> Tensor | None:
        """The static amax for a plan entry, or ``None`` (the point keeps its dynamic scale).

        Raises ValueError when the calibration does not fit the entry's format
        (per-channel scales for a per-tensor format, another channel axis).
        """
        pc = self.points.get((entry.module, entry.point, entry.tensor))
        if pc is None:
            return None
        fmt = entry.format
        tgt = calibration_target(fmt, getattr(entry, "axis", None))
        if not tgt.ok:
            warnings.warn(f"calibration: {pc.label} has a calibrated amax but its format now takes none "
                          f"({tgt.reason}); the amax is not used", UserWarning, stacklevel=3)
            return None
        if pc.granularity == "channel" and tgt.granularity == "tensor":
            raise ValueError(f"calibration: {pc.label} was calibrated per channel ({len(pc.amax)} values, "  # type: ignore[arg-type]
                             f"axis {pc.axis}) but its format {fmt.name} is per tensor; recalibrate with this "
                             "config or give the point channel scaling")
        if pc.granularity == "channel" and tgt.axis is not None and pc.axis is not None and \
                _norm(pc.axis, pc.shape) != _norm(tgt.axis, pc.shape):
            raise ValueError(f"calibration: {pc.label} was calibrated along axis {pc.axis} but its format "
                             f"{fmt.name} scales along axis {tgt.axis}; recalibrate with this config")
        if pc.method in _FORMAT_DEPENDENT and fmt.name != pc.format:
            warnings.warn(f"calibration: {pc.label} was calibrated ({pc.method}) for {pc.format} and is used with "
                          f"{fmt.name}; its amax was chosen for the other format", UserWarning, stacklevel=3)
        return pc.amax_tensor()

    # -- checks against a model -----------------------------------------------
    def validate(self, model: nn.Module) -> Calibration:
        """Check that every calibrated point exists in ``model`` (and per-channel weights fit); returns self.

        Raises ValueError naming the module names that are not in the model, and
        weights whose channel count differs from the calibration's.
        """
        if not isinstance(model, nn.Module):
            raise TypeError(f"validate: model must be a torch.nn.Module, got {type(model).__name__}")
        named = dict(model.named_modules(remove_duplicate=False))
        missing = sorted({p.module for p in self.points.values() if p.module not in named})
        problems = []
        if missing:
            shown = ", ".join(repr(m) for m in missing[:8]) + (f", ... ({len(missing)} in all)"
                                                               if len(missing) > 8 else "")
            problems.append(f"modules not in the model: {shown}")
        for p in self.points.values():
            if p.module not in named or p.point != "weight":
                continue
            t = getattr(named[p.module], p.tensor, None)
            if not isinstance(t, Tensor):
                problems.append(f"{p.label}: the module has no tensor {p.tensor!r}")
            elif p.granularity == "channel" and p.axis is not None:
                if not -t.dim() <= p.axis < t.dim() or t.shape[p.axis] != len(p.amax):  # type: ignore[arg-type]
                    problems.append(f"{p.label}: calibrated for {len(p.amax)} channels along axis "  # type: ignore[arg-type]
                                    f"{p.axis}, the tensor has shape {tuple(t.shape)}")
        if problems:
            raise ValueError(f"this calibration ({len(self.points)} points) does not fit model "
                             f"{type(model).__name__}: " + "; ".join(problems) +
                             ". Was it made for another model (or module names changed)?")
        return self

    # -- files ----------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT_MAGIC, "schema": SCHEMA_VERSION, "qsim_hooks_version": self.version,
                "method": self.method, "percentile": self.percentile, "bins": self.bins,
                "num_batches": self.num_batches,
                "points": [p.to_dict() for p in self.points.values()],
                "skipped": [{"module": k[0], "point": k[1], "tensor": k[2], "reason": r}
                            for k, r in self.skipped.items()]}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], *, source: str = "data") -> Calibration:
        if not isinstance(d, Mapping) or d.get("format") != FORMAT_MAGIC:
            raise ValueError(f"{source} is not a qsim_hooks calibration (no \"format\": \"{FORMAT_MAGIC}\")")
        schema = d.get("schema")
        if schema != SCHEMA_VERSION:
            raise ValueError(f"{source}: calibration schema {schema!r} is not supported (expected {SCHEMA_VERSION})")
        entries, skipped = read_entries(d, source)
        points = [PointCalibration(**e) for e in entries]
        return cls({p.key: p for p in points}, skipped, d.get("method", "?"), d.get("percentile"),
                   d.get("bins"), int(d.get("num_batches", 0)), str(d.get("qsim_hooks_version", "unknown")))

    def save(self, path: str | os.PathLike) -> None:
        """Write the calibration as JSON (amax values exact: float32 values written as exact decimals)."""
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.to_dict(), f, indent=1)
            f.write("\n")

    @classmethod
    def load(cls, path: str | os.PathLike, model: nn.Module | None = None) -> Calibration:
        """Read a calibration written by :meth:`save`; with ``model``, also :meth:`validate` it."""
        with open(path, encoding="utf-8") as f:
            try:
                d = json.load(f)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{os.fspath(path)!r} is not a JSON calibration file: {exc}") from None
        calib = cls.from_dict(d, source=repr(os.fspath(path)))
        if model is not None:
            calib.validate(model)
        return calib

    def __repr__(self) -> str:
        return (f"<qsim_hooks.Calibration: {len(self.points)} points ({self.method}), {len(self.skipped)} "
                f"without amax, {self.num_batches} batches, qsim_hooks {self.version}>")


def _norm(axis: int, shape: tuple[int, ...] | None) -> int:
    if shape is None or not shape:
        return axis
    return axis % len(shape)
