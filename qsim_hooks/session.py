"""Sessions: attach a Plan to a model, keep one registry of handles, remove them all on exit.

``quantized(model, cfg)`` is a context manager; ``attach(model, cfg)`` does
the same without a ``with`` block and returns the session (``.detach()``).
Attaching pushes handles onto one list; detaching pops them in reverse
order inside ``finally``, and a failure half-way through attaching rolls back
what was attached. After detach the model is exactly what it was: no hooks,
no parametrizations, original classes, the same Parameter objects.

Nesting: a model (or any of its layers) that an active session already
instruments is refused with a RuntimeError. Two simulations of one model are
two sequential sessions; stacking formats on one tensor is rarely what a user
means and would make the report ambiguous.
"""

from __future__ import annotations

import threading
import weakref
from typing import Any

import torch
from torch import nn

from . import activations, attention, offload, weights
from .config import QuantConfig
from .planning import Plan, resolve
from .points import QuantPoint

__all__ = ["Session", "quantized", "attach", "plan"]

_active_lock = threading.Lock()
_active: dict[int, weakref.ref] = {}  # id(module) -> session instrumenting it


def plan(model: nn.Module, cfg: QuantConfig) -> Plan:
    """Dry run: which format each tensor would get, and which rule decided."""
    return resolve(model, cfg)


class Session:
    """One instrumentation of one model. Use as a context manager or attach()/detach()."""

    def __init__(self, model: nn.Module, cfg: QuantConfig, *, stats: bool = False,
                 calibration: Any = None) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if not isinstance(cfg, QuantConfig):
            raise TypeError(f"cfg must be a qsim_hooks.QuantConfig, got {type(cfg).__name__}")
        self.model = model
        self.cfg = cfg
        self.collect_stats = bool(stats)
        self.calibration = calibration
        self.plan: Plan | None = None
        self.points: dict[tuple[str, str, str], QuantPoint] = {}
        self._handles: list[Any] = []
        self._modules: list[int] = []
        self.attached = False
        self.generator: torch.Generator | None = None
        if cfg.seed is not None:
            self.generator = torch.Generator().manual_seed(int(cfg.seed))

    # -- lifecycle --------------------------------------------------------
    def attach(self) -> Session:
        if self.attached:
            raise RuntimeError("this session is already attached")
        p = resolve(self.model, self.cfg)
        if self.calibration is not None:
            if not hasattr(self.calibration, "amax_for"):
                raise TypeError(f"calibration must be a qsim_hooks.Calibration, got "
                                f"{type(self.calibration).__name__}")
            if hasattr(self.calibration, "validate"):
                self.calibration.validate(self.model)  # module names of another model: a clear error
        named = dict(self.model.named_modules(remove_duplicate=False))
        mods = {e.module for e in p.entries}
        with _active_lock:
            for name in mods:
                m = named[name]
                if id(m) in _active and _active[id(m)]() is not None:
                    raise RuntimeError(
                        f"module {name or '<model>'!r} is already instrumented by an active qsim_hooks "
                        "session; detach it (leave its with-block) before attaching another")
                if _has_our_parametrization(m):
                    raise RuntimeError(f"module {name!r} carries a qsim_hooks weight quantizer from "
                                       "another session (a copy of an instrumented model?); detach it first")
            for name in mods:
                _active[id(named[name])] = weakref.ref(self)
                self._modules.append(id(named[name]))
        self.plan = p
        try:
            self._attach_plan(p, named)
        except BaseException:
            self.detach()
            raise
        self.attached = True
        return self

    def _attach_plan(self, p: Plan, named: dict[str, nn.Module]) -> None:
        cal = self.calibration
        scopes: dict[str, dict[str, QuantPoint | None]] = {}
        for e in p.active():
            amax = cal.amax_for(e) if cal is not None else None
            point = QuantPoint(e, stats=self.collect_stats, amax=amax, generator=self.generator)
            self.points[point.key] = point
            m = named[e.module]
            if e.point in attention.ATTENTION_POINTS:
                scopes.setdefault(e.module, {})[e.point] = point
            elif e.point == "weight":
                self._handles.append(weights.attach_weight(m, e.tensor, point))
            elif e.point == "input":
                self._handles.append(activations.attach_input(m, point))
            elif e.point == "output":
                self._handles.append(activations.attach_output(m, point))
            else:  # pragma: no cover - plan produces only these points
                raise AssertionError(e.point)
        # nn.MultiheadAttention calls F.linear for out_proj, so that Linear's input/output hooks never
        # fire: a scope (even with its six points off) decomposes the call and applies them
        for name in {e.module for e in p.entries} - set(scopes):
            if isinstance(named[name], nn.MultiheadAttention) and any(
                    (_child(name, "out_proj"), r, r) in self.points for r in ("input", "output")):
                scopes[name] = {}
        for name, pts in scopes.items():
            out_in = self.points.get((_child(name, "out_proj"), "input", "input"))
            out_out = self.points.get((_child(name, "out_proj"), "output", "output"))
            self._handles.append(attention.attach_attention(named[name], name, pts, out_in, out_out))
        if any(e.point == "weight" for e in p.active()):
            self._handles.extend(offload.wrap_offload_maps(self.model))

    def detach(self) -> None:
        """Remove every handle (reverse order); safe to call twice."""
        errors: list[BaseException] = []
        try:
            while self._handles:
                h = self._handles.pop()
                try:
                    h.remove()
                except BaseException as exc:  # keep removing the rest
                    errors.append(exc)
        finally:
            with _active_lock:
                for mid in self._modules:
                    ref = _active.get(mid)
                    if ref is not None and ref() in (self, None):
                        del _active[mid]
                self._modules.clear()
            self.attached = False
        if errors:
            raise errors[0]

    def __enter__(self) -> Session:
        # ``with qh.attach(...)`` (already attached) works as well as ``with qh.quantized(...)``
        return self if self.attached else self.attach()

    def __exit__(self, *exc: Any) -> None:
        self.detach()

    # -- results ----------------------------------------------------------
    def stats(self) -> list[dict[str, Any]]:
        """Per-point statistics as plain data (needs ``stats=True``)."""
        rows = []
        for (module, point, tensor), qp in self.points.items():
            f = qp.format
            row: dict[str, Any] = {"module": module, "point": point, "tensor": tensor,
                                   "format": f.name if f is not None else "-",
                                   "granularity": _granularity(f, qp.amax is not None),
                                   "static_amax": None if qp.amax is None else qp.amax.flatten().tolist(),
                                   "decided_by": qp.entry.decided_by}
            if qp.stats is not None:
                row.update(qp.stats.as_dict())
            else:
                row.update({"calls": None, "sqnr_db": None, "saturated": None, "flushed": None})
            rows.append(row)
        return rows

    def report(self, **kwargs: Any) -> Any:
        """Render the per-point table (see :func:`qsim_hooks.report.render_stats`)."""
        from . import report

        return report.render_stats(self.stats(), **kwargs)

    def __repr__(self) -> str:
        state = "attached" if self.attached else "detached"
        return f"<qsim_hooks.Session {state}: {len(self.points)} points on {type(self.model).__name__}>"


def _granularity(f: Any, static: bool) -> str:
    """The format's granularity; a dynamic scale replaced by a calibrated amax reads 'static'."""
    if f is None:
        return "-"
    g = f.granularity
    if static:
        g = g.split(" dyn-")[0] + " static" if " dyn-" in g else g
    return g


def _child(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _has_our_parametrization(m: nn.Module) -> bool:
    plists = getattr(m, "parametrizations", None)
    if plists is None:
        return False
    return any(isinstance(p, weights.WeightQuantizer) for pl in plists.values() for p in pl)


def quantized(model: nn.Module, cfg: QuantConfig | None = None, *, stats: bool = False,
              calibration: Any = None, **cfg_kwargs: Any) -> Session:
    """Context manager: ``with quantized(model, cfg) as qs: model(x)``.

    ``cfg`` may be omitted in favour of keyword arguments of QuantConfig
    (``quantized(model, input="int8", weight="int4")``).
    """
    return Session(model, _cfg(cfg, cfg_kwargs), stats=stats, calibration=calibration)


def attach(model: nn.Module, cfg: QuantConfig | None = None, *, stats: bool = False,
           calibration: Any = None, **cfg_kwargs: Any) -> Session:
    """Attach now and return the session; call ``.detach()`` to restore the model."""
    return Session(model, _cfg(cfg, cfg_kwargs), stats=stats, calibration=calibration).attach()


def _cfg(cfg: QuantConfig | None, kw: dict[str, Any]) -> QuantConfig:
    if cfg is None:
        return QuantConfig(**kw)
    if kw:
        raise TypeError(f"pass either a QuantConfig or keyword arguments, not both (got {sorted(kw)})")
    return cfg
