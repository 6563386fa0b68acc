"""Sessions: attach a Plan to a model on one undo stack, and undo all of it on detach.

``quantized(model, cfg)`` is a context manager; ``attach(model, cfg)`` does
the same without a ``with`` block and returns the session (``.detach()``).
Attaching makes one :class:`~qsim_hooks.points.QuantPoint` per active plan
entry and hands each module's points to the attacher of their kind
(:data:`ATTACHERS`: weights by parametrization, inputs and outputs by hooks,
the six attention points by one scope per module). Everything installed goes
onto the session's :class:`~qsim_hooks.undo.UndoStack`: detaching undoes it in
reverse order, a failure half-way through attaching rolls back what was done,
and :meth:`Session.observe` (calibration, capture) lends a point an observer
on a child of the same stack. After detach the model is exactly what it was:
no hooks, no parametrizations, original classes, the same Parameter objects.

Nesting: a module that an attached session instruments carries a record of
the session in its ``__dict__`` (pushed onto the same stack), and attaching
another session to it raises RuntimeError; sessions on disjoint sub-modules
may coexist. The record lives on the model, so it holds when the user kept no
reference to the session (``qh.attach(model, cfg)`` with the result dropped):
that session stays alive and attached, hooks and all, until
:func:`detach` ``(model)`` finds it through the record (or model and session
are garbage-collected together). Stacking formats on one tensor is rarely
what a user means and would make the report ambiguous.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from . import activations, attention, offload, report, weights
from .config import QuantConfig
from .planning import POINT_KINDS, Plan, resolve
from .points import CheckedScales, ObserverFn, QuantPoint, StaticScales
from .undo import Removable, UndoStack

__all__ = ["Session", "quantized", "attach", "detach", "plan", "ATTACHERS", "PointKind", "Site"]

Key = tuple[str, str, str]
_RECORD = "_qsim_hooks_session"  # the attribute an instrumented module carries while attached
_lock = threading.Lock()  # checking and marking modules is one step


def plan(model: nn.Module, cfg: QuantConfig) -> Plan:
    """Dry run: which format each tensor would get, and which rule decided."""
    return resolve(model, cfg)


# ---------------------------------------------------------------------------
# attach dispatch: one row per point kind
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Site:
    """Where one kind of point attaches: one module, its points of that kind, and all the session's points.

    ``points`` is keyed by the weight's name (weights), the role (input, output)
    or the point's name (attention).
    """

    name: str
    module: nn.Module
    points: Mapping[str, QuantPoint]
    session_points: Mapping[Key, QuantPoint]


@dataclass(frozen=True)
class PointKind:
    """How the points of one kind attach.

    Attributes:
        attach: installs one site's points and returns what removes them.
        also: names of plan modules that need a site of this kind although they
            have no points of it (a module applying a child layer functionally).
        after: run once on the model after every site of this kind (and undone with them).
    """

    attach: Callable[[Site], Removable]
    also: Callable[[Mapping[str, nn.Module], Mapping[Key, QuantPoint]], Iterable[str]] | None = None
    after: Callable[[nn.Module], Removable] | None = None


def _attach_weights(site: Site) -> UndoStack:
    stack = UndoStack()
    with stack.all_or_nothing():
        for tensor, point in site.points.items():
            stack.push(weights.attach_weight(site.module, tensor, point))
    return stack


def _attach_attention(site: Site) -> UndoStack:
    borrowed = attention.borrowed_points(site.module, site.name, site.session_points)
    return attention.attach_attention(site.module, site.name, site.points, borrowed)


#: point kind -> how it attaches; the one place a new kind of point is added. Sites attach kind by kind in
#: this order (per module: input hook, output hook, then the attention scope's hooks, as before).
ATTACHERS: dict[str, PointKind] = {
    # offloading hooks look weights up by name: they learn the parametrized names once all are attached
    "weight": PointKind(_attach_weights, after=offload.wrap_offload_maps),
    "input": PointKind(lambda s: activations.attach_input(s.module, s.points["input"])),
    "output": PointKind(lambda s: activations.attach_output(s.module, s.points["output"])),
    "attention": PointKind(_attach_attention, also=attention.borrowing_modules),
}
assert tuple(ATTACHERS) == POINT_KINDS


# ---------------------------------------------------------------------------
# the active-session record on the model's modules
# ---------------------------------------------------------------------------
class _Record:
    """What an instrumented module carries: its session (and its name in the session's model).

    ``copy.deepcopy`` of an instrumented module is refused: the copy would share the session's hooks and
    the parametrized class, and break when the session removes them. A pickled copy carries a record
    without a session: the copy's hooks are the original session's and only that session removes them."""

    __slots__ = ("session", "label")

    def __init__(self, session: Session | None, label: str = "?") -> None:
        self.session = session
        self.label = label

    def __deepcopy__(self, memo: dict) -> _Record:
        raise RuntimeError(f"copy.deepcopy: module {self.label!r} is instrumented by an attached qsim_hooks "
                           "session; a copy would share its hooks and parametrized class and break when the session "
                           "exits. Copy the model before attaching or after the with-block (or .detach() first)")

    def __reduce__(self) -> tuple:
        return (_Record, (None,))


def _record_of(m: nn.Module) -> _Record | None:
    r = m.__dict__.get(_RECORD)
    return r if isinstance(r, _Record) else None


def _claim(modules: Mapping[str, nn.Module], session: Session, undo: UndoStack) -> None:
    """Refuse modules another session instruments, then mark every one of them for ``session``."""
    for name, m in modules.items():
        label = name or "<model>"
        r = _record_of(m)
        if r is not None and r.session is not None:
            raise RuntimeError(
                f"module {label!r} is already instrumented by an attached qsim_hooks session; leave its "
                "with-block or call .detach() on it (qsim_hooks.detach(model) finds it if the session "
                "object was not kept) before attaching another")
        if r is not None or _has_our_parametrization(m):
            raise RuntimeError(f"module {label!r} carries qsim_hooks instrumentation copied from another "
                               "session (a copy of an instrumented model?); copy the model outside the with-block")
    for name, m in modules.items():
        record = _Record(session, name or "<model>")
        m.__dict__[_RECORD] = record
        undo.callback(_unmark, m, record)


def _unmark(m: nn.Module, record: _Record) -> None:
    if m.__dict__.get(_RECORD) is record:
        del m.__dict__[_RECORD]


def _has_our_parametrization(m: nn.Module) -> bool:
    plists = getattr(m, "parametrizations", None)
    if plists is None:
        return False
    return any(isinstance(p, weights.WeightQuantizer) for pl in plists.values() for p in pl)


# ---------------------------------------------------------------------------
# the session
# ---------------------------------------------------------------------------
class Session:
    """One instrumentation of one model. Use as a context manager or attach()/detach()."""

    def __init__(self, model: nn.Module, cfg: QuantConfig, *, stats: bool = False,
                 calibration: StaticScales | None = None) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if not isinstance(cfg, QuantConfig):
            raise TypeError(f"cfg must be a qsim_hooks.QuantConfig, got {type(cfg).__name__}")
        self.model = model
        self.cfg = cfg
        self.collect_stats = bool(stats)
        self.calibration = calibration
        self.plan: Plan | None = None
        self.points: dict[Key, QuantPoint] = {}
        self.attached = False
        self.generator: torch.Generator | None = None
        if cfg.seed is not None:
            self.generator = torch.Generator().manual_seed(int(cfg.seed))
        self._undo = UndoStack()

    # -- lifecycle --------------------------------------------------------
    def attach(self) -> Session:
        if self.attached:
            raise RuntimeError("this session is already attached")
        p = resolve(self.model, self.cfg)
        cal = self.calibration
        if cal is not None:
            if not isinstance(cal, StaticScales):
                raise TypeError(f"calibration must be a qsim_hooks.Calibration (or have amax_for(entry)), got "
                                f"{type(cal).__name__}")
            if isinstance(cal, CheckedScales):
                cal.validate(self.model)  # module names of another model: a clear error
        named = dict(self.model.named_modules(remove_duplicate=False))
        modules = {e.module: named[e.module] for e in p.entries}
        with self._undo.all_or_nothing():
            with _lock:
                _claim(modules, self, self._undo)
            self.plan = p
            self._attach_plan(p, named, modules)
        self.attached = True
        return self

    def _attach_plan(self, p: Plan, named: Mapping[str, nn.Module], modules: Mapping[str, nn.Module]) -> None:
        cal = self.calibration
        sites: dict[str, dict[str, dict[str, QuantPoint]]] = {kind: {} for kind in ATTACHERS}
        for e in p.active():
            amax = cal.amax_for(e) if cal is not None else None
            point = QuantPoint(e, stats=self.collect_stats, amax=amax, generator=self.generator)
            self.points[point.key] = point
            sites[e.kind].setdefault(e.module, {})[e.tensor] = point
        for kind, how in ATTACHERS.items():
            by_module = sites[kind]
            if how.also is not None:
                for name in how.also(modules, self.points):
                    by_module.setdefault(name, {})
            for name, pts in by_module.items():
                self._undo.push(how.attach(Site(name, named[name], pts, self.points)))
            if how.after is not None and by_module:
                self._undo.push(how.after(self.model))

    def detach(self) -> None:
        """Undo everything (reverse order, past errors, the first one re-raised); safe to call twice."""
        try:
            self._undo.close()
        finally:
            self.attached = False

    def observe(self, observers: Mapping[Key, ObserverFn], *, full_precision: bool = False) -> UndoStack:
        """Give each point of ``observers`` (``{point key: observer}``) that observer until the handle is removed.

        An observer is called with what its point is given, before quantizing. With
        ``full_precision=True`` the points also stop quantizing meanwhile (calibration's
        mode). The returned handle is a child of the session's undo stack: ``with
        qs.observe(...):``, or ``.remove()`` it; detaching the session removes it too.
        """
        if not self.attached:
            raise RuntimeError("observe needs an attached session")
        unknown = [k for k in observers if k not in self.points]
        if unknown:
            known = ", ".join(repr(k) for k in list(self.points)[:4])
            raise ValueError(f"observe: {unknown[:4]!r} {'is' if len(unknown) == 1 else 'are'} not points of this "
                             f"session; its points are keyed (module, point, tensor), e.g. {known}")
        lent = self._undo.child()
        with lent.all_or_nothing():
            for key, obs in observers.items():
                qp = self.points[key]
                lent.setattr(qp, "observer", obs)
                if full_precision:
                    lent.setattr(qp, "format", None)
        return lent

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


def quantized(model: nn.Module, cfg: QuantConfig | None = None, *, stats: bool = False,
              calibration: StaticScales | None = None, **cfg_kwargs: Any) -> Session:
    """Context manager: ``with quantized(model, cfg) as qs: model(x)``.

    ``cfg`` may be omitted in favour of keyword arguments of QuantConfig
    (``quantized(model, input="int8", weight="int4")``).
    """
    return Session(model, _cfg(cfg, cfg_kwargs), stats=stats, calibration=calibration)


def attach(model: nn.Module, cfg: QuantConfig | None = None, *, stats: bool = False,
           calibration: StaticScales | None = None, **cfg_kwargs: Any) -> Session:
    """Attach now and return the session; call ``.detach()`` (or :func:`detach` on the model) to restore it."""
    return Session(model, _cfg(cfg, cfg_kwargs), stats=stats, calibration=calibration).attach()


def detach(model: nn.Module) -> int:
    """Detach every session that instruments ``model`` or a module in it; returns how many were detached.

    For a session whose object was not kept (``qh.attach(model, cfg)`` with the result dropped): the
    modules it instruments carry it, so it is found and detached as if ``.detach()`` had been called.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"detach: model must be a torch.nn.Module, got {type(model).__name__}")
    sessions: list[Session] = []
    copied: list[str] = []
    for name, m in model.named_modules(remove_duplicate=False):
        r = _record_of(m)
        if r is None:
            continue
        if r.session is None:
            copied.append(name or "<model>")
        elif not any(s is r.session for s in sessions):
            sessions.append(r.session)
    errors = []
    for s in sessions:
        try:
            s.detach()
        except BaseException as exc:  # detach the others all the same
            errors.append(exc)
    if errors:
        raise errors[0]
    if copied:
        raise RuntimeError(f"detach: {len(copied)} module(s) ({', '.join(repr(n) for n in copied[:4])}) carry "
                           "qsim_hooks instrumentation copied from another model (deepcopy or pickle inside a "
                           "session); only the original's session removes it: copy the model outside the "
                           "with-block")
    return len(sessions)


def _cfg(cfg: QuantConfig | None, kw: dict[str, Any]) -> QuantConfig:
    if cfg is None:
        return QuantConfig(**kw)
    if kw:
        raise TypeError(f"pass either a QuantConfig or keyword arguments, not both (got {sorted(kw)})")
    return cfg
