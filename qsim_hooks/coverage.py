"""Coverage accounting: every GEMM-like call a session saw, and which point covered each operand.

The interception (:mod:`qsim_hooks.intercept`) adds one record per GEMM call to
a :class:`Recorder`: the module that made the call, the operation, and per
operand an :class:`Operand` (its role, the point that covered it or ``None``,
whether the config asked for that role there, and why it was not covered). A
record is a dict increment; everything else is computed when asked:
:func:`rows` (plain data, one row per distinct record), :func:`summarize` (a
:class:`CoverageSummary`), and the texts of the two warnings a session gives
when it detaches (:func:`never_fired_text`, :func:`uncovered_text`).

A call is *simulated* when every operand was covered, *partial* when some were,
*not simulated* when none was; it ran *against the config* when an operand the
config asked for (a role whose resolved format is not ``None``) was not covered.
Rendering is :mod:`qsim_hooks.report`'s.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from .config import ATTENTION_POINTS

__all__ = ["Operand", "Recorder", "CoverageSummary", "CoverageError", "Coverage", "rows", "summarize",
           "never_fired_text", "uncovered_text", "unrecognised_text", "layout_reason", "fold", "at_detach"]

STATUSES = ("simulated", "partial", "not simulated")


class CoverageError(RuntimeError):
    """``QuantConfig(require_coverage=True)``: a GEMM ran with an operand the config asked for and no point
    covered (raised when the session detaches, after the model is restored)."""


class Operand(NamedTuple):
    """One operand of one GEMM call."""

    role: str  # "weight" | "activation"
    point: str | None  # the covering point ("layer.weight", "layer[input]"); None: not covered
    asked: bool  # the config asked for this role here
    reason: str | None = None  # why not covered (None when covered)


class Recorder:
    """Counts GEMM calls by (module, operation, operands)."""

    def __init__(self, types: dict[str, str]) -> None:
        self.types = types  # module name -> class name
        self.calls: dict[tuple[str, str, tuple[Operand, ...]], int] = {}

    def add(self, module: str, op: str, operands: tuple[Operand, ...]) -> None:
        key = (module, op, operands)
        self.calls[key] = self.calls.get(key, 0) + 1

    def __len__(self) -> int:
        return sum(self.calls.values())


def _status(ops: Sequence[Operand]) -> str:
    covered = sum(o.point is not None for o in ops)
    return STATUSES[0] if covered == len(ops) else STATUSES[2] if covered == 0 else STATUSES[1]


def _reason(ops: Sequence[Operand]) -> str | None:
    """The reasons of the uncovered operands, joined (``input: off by rule 'x'``)."""
    parts = list(dict.fromkeys(f"{o.role}: {o.reason}" for o in ops if o.point is None and o.reason))
    return "; ".join(parts) or None


def rows(rec: Recorder) -> list[dict[str, Any]]:
    """One plain row per distinct (module, operation, operands), in the order the calls first ran."""
    out = []
    for (module, op, ops), n in rec.calls.items():
        out.append({"module": module, "type": rec.types.get(module, "?"), "op": op, "calls": n,
                    "operands": [o._asdict() for o in ops], "status": _status(ops), "reason": _reason(ops),
                    "against_config": any(o.asked and o.point is None for o in ops)})
    return out


def fold(name: str) -> str:
    """A module name with its layer indices folded: ``model.layers.*.mlp``. Only an index below another name
    is folded: a top-level module called ``0`` (an ``nn.Sequential``'s first layer) keeps its name."""
    return re.sub(r"(?<=\.)\d+(?=\.|$)", "*", name) or "<model>"


@dataclass(frozen=True)
class CoverageSummary:
    """Totals over GEMM calls, and what was not fully simulated (folded module names, most calls first).

    Attributes:
        gemms: GEMM-like calls seen (an SDPA call counts as two, Q·Kᵀ and P·V).
        simulated, partial, not_simulated: calls by status (they add up to ``gemms``).
        against_config: calls with an operand the config asked for that no point covered.
        missing: ``(module, reason, calls)`` for the calls not fully simulated.
        never_fired: configured points that never ran.
    """

    gemms: int
    simulated: int
    partial: int
    not_simulated: int
    against_config: int
    missing: tuple[tuple[str, str, int], ...]
    never_fired: tuple[str, ...] = ()

    @property
    def fraction(self) -> float:
        """Share of GEMM calls fully simulated (1.0 when there were none)."""
        return self.simulated / self.gemms if self.gemms else 1.0


class Coverage(NamedTuple):
    """What ``Session.coverage()`` returns: the rows and their summary (``rows, summary = qs.coverage()``)."""

    rows: list[dict[str, Any]]
    summary: CoverageSummary


def summarize(table: Sequence[dict[str, Any]], never_fired: Iterable[str] = ()) -> CoverageSummary:
    by_status = dict.fromkeys(STATUSES, 0)
    missing: dict[tuple[str, str], int] = {}
    against = 0
    for r in table:
        by_status[r["status"]] += r["calls"]
        against += r["calls"] if r["against_config"] else 0
        if r["status"] != STATUSES[0]:
            key = (fold(r["module"]), r["reason"] or "not covered")
            missing[key] = missing.get(key, 0) + r["calls"]
    items = tuple((m, why, n) for (m, why), n in sorted(missing.items(), key=lambda kv: -kv[1]))
    return CoverageSummary(sum(by_status.values()), by_status[STATUSES[0]], by_status[STATUSES[1]],
                           by_status[STATUSES[2]], against, items, tuple(never_fired))


def _listed(items: Sequence[str], limit: int = 8) -> str:
    more = f", ... ({len(items)} in all)" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def never_fired_text(points: Sequence[str]) -> str | None:
    if not points:
        return None
    folded = list(dict.fromkeys(fold_point(p) for p in points))
    return (f"qsim_hooks: {len(points)} configured quantization point(s) never ran: {_listed(folded)}; the modules "
            "did not run, or (functional weights: stacked experts, routers) their weights never entered a GEMM "
            "the interception recognised, so nothing was quantized there")


def fold_point(label: str) -> str:
    head, sep, tail = label.partition("[")
    if sep:
        return f"{fold(head)}[{tail}"
    mod, _, tensor = label.rpartition(".")
    return f"{fold(mod)}.{tensor}" if mod else label


_LAYOUT = ("layout of ", " not recognised")  # the reason of a weight operand whose layout was not read


def layout_reason(param: str, op: str) -> str:
    """The reason an operand records when the weight ``param`` of a functional layer had a layout the
    interception could not read in ``op`` (named once by :func:`unrecognised_text`)."""
    return f"{_LAYOUT[0]}{param!r} in {op}{_LAYOUT[1]}"


def _unrecognised(o: Mapping[str, Any]) -> bool:
    return bool(o["reason"]) and o["reason"].startswith(_LAYOUT[0]) and o["reason"].endswith(_LAYOUT[1])


def uncovered_text(table: Sequence[dict[str, Any]], *, skip_unrecognised: bool = False) -> str | None:
    """The against-the-config calls, one item per (folded module, operation, reason); ``skip_unrecognised``
    leaves out the calls whose only uncovered operands are weights of an unrecognised layout (named apart)."""
    groups: dict[tuple[str, str, str], int] = {}
    for r in table:
        if r["against_config"]:
            missed = [o for o in r["operands"] if o["asked"] and o["point"] is None]
            if skip_unrecognised and all(_unrecognised(o) for o in missed):
                continue
            why = "; ".join(f"{o['role']}: {o['reason']}" for o in missed)
            key = (fold(r["module"]), r["op"], why)
            groups[key] = groups.get(key, 0) + r["calls"]
    if not groups:
        return None
    n = sum(groups.values())
    items = [f"{m} {op} ({why}) x{k}" for (m, op, why), k in sorted(groups.items(), key=lambda kv: -kv[1])]
    return (f"qsim_hooks: {n} GEMM call(s) ran with an operand that no quantization point covered although the "
            f"config asks for that role: {_listed(items, 6)}. qs.coverage() lists every call; a rule setting the "
            "role to None accepts it, QuantConfig(require_coverage=True) makes it an error")


def unrecognised_text(module: str, kind: str, param: str, op: str) -> str:
    return (f"qsim_hooks: functional layer {module!r} ({kind}): the layout of its weight {param!r} in {op} was not "
            "recognised (no reduction and output axis of a weight matrix); that GEMM ran with the weight in full "
            "precision")


def _silent_attention(gemms: Any, table: Sequence[dict[str, Any]]) -> set[str]:
    """The attention points of attention modules that ran (a GEMM of theirs or of a descendant was recorded)
    while none of their attention points ran: the attention scope warned about such a forward itself (it
    ran no product of two activations), so the points are not named a second time as never run."""
    ran = {r["module"] for r in table}
    points: Mapping[tuple[str, str, str], Any] = getattr(gemms, "points", {})
    out: set[str] = set()
    for mod in getattr(gemms, "attention", ()):
        mine = [qp for (m, point, _), qp in points.items() if m == mod and point in ATTENTION_POINTS]
        if mine and not any(qp.fired for qp in mine) and any(
                not mod or m == mod or m.startswith(f"{mod}.") for m in ran):
            out.update(qp.describe() for qp in mine)
    return out


def at_detach(cov: Coverage, gemms: Any, require: bool, fired: bool) -> None:
    """What a session says when it detaches after a run: warnings, or :class:`CoverageError` (``require``)
    for GEMMs that ran against the config. Nothing when the model ran neither a GEMM nor a point.

    One warning per cause: a weight whose layout was not recognised is named once (its own warning), not
    again as a point that never ran or as a GEMM against the config (``require`` still raises for it); an
    attention module that ran no product is named by its scope's warning, not again here. Reads the
    interception's ``recorder``, ``unrecognised``, ``attention`` and ``points``.
    """
    table, summary = cov
    if not (summary.gemms or fired):
        return
    unrecognised: Mapping[str, tuple[str, str]] = getattr(gemms, "unrecognised", {})
    explained = {f"{m or '<model>'}.{param}" for m, (param, _) in unrecognised.items()}
    explained |= _silent_attention(gemms, table)
    texts = [never_fired_text([p for p in summary.never_fired if p not in explained])]
    texts += [unrecognised_text(m, gemms.recorder.types.get(m, "?"), *w) for m, w in unrecognised.items()]
    if not require:
        texts.append(uncovered_text(table, skip_unrecognised=True))
    for text in texts:
        if text:
            warnings.warn(text, RuntimeWarning, stacklevel=4)
    uncovered = uncovered_text(table) if require else None
    if uncovered is not None:
        raise CoverageError(uncovered.replace("qsim_hooks: ", "qsim_hooks (require_coverage=True): ", 1))
