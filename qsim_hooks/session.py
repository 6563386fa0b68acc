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

While attached, a model-wide interception (:mod:`qsim_hooks.intercept`) sees
every GEMM the model runs: it applies the points of functional layers (stacked
experts, routers, a layer's weight used from outside it) and accounts for every
call (``qs.coverage()``). Detaching warns about configured points that never ran
and GEMMs that ran with an operand the config asked for and no point covered
(``QuantConfig(require_coverage=True)``: an error, raised after the model is
restored).

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

import dataclasses
import threading
import warnings
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

from . import (
    coverage,
    distributed,
    propagation,
    report,
    report_accumulators,
    report_coverage,
    report_propagation,
)
from .accumulate import wiring as accumulate_wiring
from .attachers import ATTACHERS, Key, PointKind, Site
from .config import QuantConfig
from .functional import resolve_functional
from .intercept import Interception, attach_interception
from .planning import Plan, PlanEntry, accumulators
from .points import CheckedScales, ObserverFn, QuantPoint, StaticScales
from .records import claim, record_of
from .rows import select_stats
from .undo import UndoStack

__all__ = ["Session", "quantized", "attach", "detach", "plan", "ATTACHERS", "PointKind", "Site", "CoverageError"]

CoverageError = coverage.CoverageError

_lock = threading.Lock()  # checking and marking modules is one step


def plan(model: nn.Module, cfg: QuantConfig) -> Plan:
    """Dry run: which format each tensor would get, and which rule decided.

    Functional candidates (bare parameters and activation × activation GEMMs of modules that are no layer) are
    not listed: they get their module's formats where they run, and ``qs.coverage()`` shows them.
    """
    return resolve_functional(model, cfg)[0]


# ---------------------------------------------------------------------------
# the session
# ---------------------------------------------------------------------------
class Session:
    """One instrumentation of one model. Use as a context manager or attach()/detach()."""

    def __init__(self, model: nn.Module, cfg: QuantConfig, *, stats: bool = False,
                 calibration: StaticScales | None = None, record: bool = False) -> None:
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
        self._gemms: Interception | None = None
        self._configured: tuple[Key, ...] = ()
        self._reported = True
        self._accumulation: accumulate_wiring.Accumulation | None = None
        if not isinstance(record, bool):
            raise TypeError(f"record must be True or False, got {type(record).__name__}")
        self.record = record  # keep the model's calls (copied arguments) for report(propagated=True)
        self._recording: propagation.Recording | None = None

    # -- lifecycle --------------------------------------------------------
    def attach(self) -> Session:
        if self.attached:
            raise RuntimeError("this session is already attached")
        p, candidates = resolve_functional(self.model, self.cfg)
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
                claim(modules, self, self._undo)
            self.plan = p
            self._attach_plan(p, candidates, named, modules)
            if self.record:  # prepended: the arguments as the caller gave them
                self._recording = propagation.Recording()
                self._undo.push(self.model.register_forward_pre_hook(self._recording.hook, with_kwargs=True,
                                                                     prepend=True))
        self.attached = True
        self._reported = False
        return self

    def _point(self, e: PlanEntry) -> QuantPoint:
        amax = self.calibration.amax_for(e) if self.calibration is not None else None
        return QuantPoint(e, stats=self.collect_stats, amax=amax, generator=self.generator)

    def _attach_plan(self, p: Plan, candidates: Iterable[PlanEntry], named: Mapping[str, nn.Module],
                     modules: Mapping[str, nn.Module]) -> None:
        functional = {n for n, m in modules.items() if getattr(self.cfg.layer_spec(m), "functional", False)}
        layers = {e.module for e in p.entries if e.kind != "attention"} - functional
        attention_modules = {e.module for e in p.entries if e.kind == "attention"}
        entries = {e.key: e for e in (*p.entries, *candidates)}
        cfg = self.cfg
        # before any parametrization: the interception learns each parameter's owner from the model as it is
        self._gemms = Interception(named, self.points, entries, layers, attention_modules,
                                   self._point, (cfg.input is not None, cfg.weight is not None))
        sites: dict[str, dict[str, dict[str, QuantPoint]]] = {kind: {} for kind in ATTACHERS}
        for e in p.active():
            point = self.points[e.key] = self._point(e)
            # a functional layer's input/weight/output points are applied by the interception; its attention
            # points (an attention module with 3-D einsum weights) by its scope, as any attention module's
            if e.module not in functional or e.kind == "attention":
                sites[e.kind].setdefault(e.module, {})[e.tensor] = point
        accs = accumulators(self.model, cfg)  # every GEMM of these modules runs through qsim_hooks.accumulate
        for name in accs.keys() & attention_modules:  # a scope decomposes their SDPA into matmuls to simulate
            sites["attention"].setdefault(name, {})
        for name, acc in accs.items():
            accumulate_wiring.check_operands(name, acc, {e.point: e.format for e in p.for_module(name)
                                                         if e.point in ("input", "weight")})
        if accs:
            self._accumulation = self._gemms.accumulate = accumulate_wiring.Accumulation(accs, self.collect_stats)
        for msg in distributed.sharded_activation_warnings(self.points, named):
            warnings.warn(msg, stacklevel=4)
        self._configured = tuple(self.points)
        for kind, how in ATTACHERS.items():
            by_module = sites[kind]
            if how.also is not None:
                for name in how.also(modules, self.points):
                    by_module.setdefault(name, {})
            for name, pts in by_module.items():
                self._undo.push(how.attach(Site(name, named[name], pts, self.points)))
            if how.after is not None and by_module:
                self._undo.push(how.after(self.model))
        # nothing to quantize or accumulate: no mode, no hooks (the model runs as it is). A candidate with a format
        # (a bare parameter that enters a GEMM functionally) has no point until the interception sees it run
        if accs or any(e.format is not None for e in entries.values()):
            self._undo.push(attach_interception(self.model, self._gemms, [named[n] for n in functional]))
        else:
            self._gemms = None  # and the coverage accounting sees no GEMM

    def detach(self) -> None:
        """Undo everything (reverse order, past errors, the first one re-raised); safe to call twice.

        Then warn (once) about configured points that never ran and GEMMs that ran against the config;
        with ``QuantConfig(require_coverage=True)`` the latter raise :class:`CoverageError`.
        """
        self._detach(check=True)

    def _detach(self, check: bool) -> None:
        """``check=False`` (the with-block raised): the run is incomplete, say nothing about coverage."""
        try:
            self._undo.close()
        finally:
            self.attached = False
        if not self._reported:
            self._reported = True
            if check:  # warnings, or CoverageError with require_coverage
                coverage.at_detach(self.coverage(), self._gemms, self.cfg.require_coverage,
                                   any(p.fired for p in self.points.values()))

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
            if full_precision and self._gemms is not None:
                lent.setattr(self._gemms, "lent", True)
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
        self._detach(check=exc[0] is None)  # never mask the block's own exception

    # -- results ----------------------------------------------------------
    def stats(self, sort: str = "model", top: int | None = None, **select: Any) -> list[dict[str, Any]]:
        """Per-point statistics as plain data (needs ``stats=True``); ``sort="sqnr"`` (worst first), ``top=N``,
        ``point=``, ``group=``, ``sqnr_below=`` as :func:`qsim_hooks.rows.select_stats`."""
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
        return [dict(r) for r in select_stats(rows, sort=sort, top=top, **select)]  # type: ignore[arg-type]

    def coverage(self) -> coverage.Coverage:
        """Every GEMM-like call seen while attached, and which point covered each operand.

        Returns ``(rows, summary)``: one plain row per distinct (module, operation, operands) with
        ``calls``, ``status`` (``"simulated"``, ``"partial"``, ``"not simulated"``), ``reason`` and
        ``against_config``, and a :class:`~qsim_hooks.coverage.CoverageSummary`.
        """
        rec = self._gemms.recorder if self._gemms is not None else coverage.Recorder({})
        table = coverage.rows(rec)
        never = [self.points[k].describe() for k in self._configured if k in self.points and
                 not self.points[k].fired]
        return coverage.Coverage(table, coverage.summarize(table, never))

    def report(self, *, coverage: bool = False, propagated: bool = False, batch: Any = None, batches: Any = None,
               forward: Any = None, **kwargs: Any) -> None:
        """Render the per-point table (see :func:`qsim_hooks.report.render_stats`) and the coverage summary
        line (and the accumulator table when layers ran through one); ``coverage=True`` adds the coverage
        table. Returns nothing.

        ``propagated=True`` adds where the error starts: per layer, the SQNR of its output against full
        precision (accumulated) and the SQNR it adds itself (:mod:`qsim_hooks.propagation`). The session saw
        only the simulated run, so this runs the data again, in full precision and simulated (sessions of
        its own, this one's config and calibration): the calls it recorded (``quantized(model, cfg,
        record=True)``), or ``batch=`` / ``batches=`` (``forward=`` as in ``compare``). It needs the model
        without this session: call it after the with-block (a ValueError inside it, or with no data)."""
        if not isinstance(propagated, bool):
            raise TypeError(f"propagated must be True or False, got {type(propagated).__name__}")
        rows = None
        if propagated:
            if self.attached:
                raise ValueError("qs.report(propagated=True) runs the model in full precision too, which needs it "
                                 "without this session: call it after the with-block (or qs.detach())")
            runs = propagation.session_runs(self._recording, batch, batches, forward)
            quiet = dataclasses.replace(self.cfg, require_coverage=False)  # this session's run was checked
            got = propagation.propagate(self.model, self.plan or plan(self.model, self.cfg),
                                        lambda: Session(self.model, quiet, calibration=self.calibration), runs,
                                        quiet=batch is None and batches is None)  # data this session ran
            rows = got.rows, got.notes
        elif batch is not None or batches is not None or forward is not None:
            raise TypeError("batch=, batches= and forward= are the data of report(propagated=True)")
        report.render_stats(self.stats(), **kwargs)
        if self.accumulator_stats:
            report_accumulators.render_accumulators(self.accumulator_rows(), kwargs.get("console"))
        report_coverage.render_coverage(self.coverage(), kwargs.get("console"), table=coverage)
        if rows is not None:
            report_propagation.render_propagation(rows[0], kwargs.get("console"), notes=rows[1])

    @property
    def accumulator_stats(self) -> dict[str, accumulate_wiring.AccumulatorStats]:
        """Per-module statistics of the simulated sums (``stats=True``; a module appears at its first GEMM)."""
        return {} if self._accumulation is None else self._accumulation.stats

    def accumulator_rows(self) -> list[dict[str, Any]]:
        """Per-layer accumulator statistics (needs ``stats=True`` and an accumulator): SQNR of the simulated
        sums against the exact fp32 GEMM of the same operands, largest relative error, overflows."""
        return [st.as_dict() for st in self.accumulator_stats.values()]


    def __repr__(self) -> str:
        state = "attached" if self.attached else "detached"
        return f"<qsim_hooks.Session {state}: {len(self.points)} points on {type(self.model).__name__}>"

    def __rich__(self) -> Any:
        return report.stats_table(self.stats(), title=repr(self))

    def _repr_html_(self) -> str:
        return report.stats_table(self.stats(), title=repr(self))._repr_html_()


def _granularity(f: Any, static: bool) -> str:
    """The format's granularity; a dynamic scale replaced by a calibrated amax reads 'static'."""
    if f is None:
        return "-"
    g = f.granularity
    if static:
        g = g.split(" dyn-")[0] + " static" if " dyn-" in g else g
    return g


def quantized(model: nn.Module, cfg: QuantConfig | None = None, *, stats: bool = False,
              calibration: StaticScales | None = None, record: bool = False, **cfg_kwargs: Any) -> Session:
    """Context manager: ``with quantized(model, cfg) as qs: model(x)``.

    ``cfg`` may be omitted in favour of keyword arguments of QuantConfig
    (``quantized(model, input="int8", weight="int4")``). ``record=True`` keeps a copy of the arguments of
    every call of the model, for ``qs.report(propagated=True)`` after the block.
    """
    return Session(model, _cfg(cfg, cfg_kwargs), stats=stats, calibration=calibration, record=record)


def attach(model: nn.Module, cfg: QuantConfig | None = None, *, stats: bool = False,
           calibration: StaticScales | None = None, record: bool = False, **cfg_kwargs: Any) -> Session:
    """Attach now and return the session; call ``.detach()`` (or :func:`detach` on the model) to restore it."""
    return Session(model, _cfg(cfg, cfg_kwargs), stats=stats, calibration=calibration, record=record).attach()


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
        r = record_of(m)
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
