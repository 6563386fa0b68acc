"""The plan: ``resolve(model, cfg) -> Plan``, what format every tensor of a model gets and which rule decided.

Resolution is pure: it walks the model, finds the candidate modules (layer
types from :mod:`.layers`, attention modules by class or base-class name or
by rule, types a rule lists), folds the rules over each one field by field
(the last matching rule that sets a field wins) and writes one :class:`PlanEntry` per
quantization point. Every decision travels as a :class:`Decision` (a value
and who decided it), so the plan can say which rule chose each format.
Nothing is attached here; :mod:`.session` attaches a Plan. ``str(plan)`` is a
plain-text table laid out for the terminal (:func:`qsim_hooks.plan` is the dry run users print),
built by :mod:`.table_text` without rich: planning imports no renderer (``report.plan_table`` draws the
styled table from the same :data:`PLAN_TABLE_COLUMNS`).
"""

from __future__ import annotations

import dataclasses
import re
import shutil
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from rich.text import Text
from torch import nn
from torch.nn.utils import parametrize

from .accumulate import Accumulator
from .config import ATTENTION_DEFAULTS, ATTENTION_POINTS, ROLES, UNSET, QuantConfig, Rule
from .formats import Format, Scaling
from .layers import LayerSpec
from .report_values import fmt_module
from .table_text import Column, html_table, plain_table

__all__ = ["Decision", "PlanEntry", "Plan", "resolve", "accumulators", "POINT_KINDS", "PLAN_COLUMNS",
           "PLAN_TABLE_COLUMNS"]

#: how the points of a plan attach: weights by parametrization, inputs/outputs by hooks, the six attention
#: points together by one scope per module (see qsim_hooks.session.ATTACHERS)
POINT_KINDS = ("weight", "input", "output", "attention")
#: how the plan's columns are laid out in a narrow terminal (the least important, highest priority, go first)
PLAN_TABLE_COLUMNS: tuple[Column, ...] = (
    Column("module", "module", fmt_module, justify="left", style="bold", priority=0, wrap="dots"),
    Column("type", "type", justify="left", priority=3),
    Column("point", "point", justify="left", priority=0),
    Column("tensor", "tensor", justify="left", priority=4),
    Column("format", "format", justify="left", priority=0),
    Column("granularity", "granularity", justify="left", priority=2, short="scaling"),
    Column("decided_by", "decided_by", justify="left", priority=1),
)
PLAN_COLUMNS = tuple(c.key for c in PLAN_TABLE_COLUMNS)  # the keys of Plan.to_rows(), in table order
#: what ``str()`` of an empty plan says
EMPTY_PLAN = "(empty plan: no layer to instrument)"


@dataclass(frozen=True)
class Decision:
    """A value and who decided it: ``"cfg"``, a rule's name, or ``"a+b"`` when two sources combined."""

    value: Any
    by: str

    def combined(self, other: Decision, value: Any) -> Decision:
        """``value`` decided by both (a format from one source, its scaling from another)."""
        return Decision(value, self.by if self.by == other.by else f"{self.by}+{other.by}")


@dataclass(frozen=True)
class PlanEntry:
    """One quantization point of the plan."""

    module: str
    module_type: str
    point: str  # "input" | "weight" | "output" | one of ATTENTION_POINTS
    tensor: str  # weight name, or the point name
    format: Format | None
    axis: int | None
    decided_by: str

    @property
    def format_name(self) -> str:
        return "-" if self.format is None else self.format.name

    @property
    def kind(self) -> str:
        """How the point attaches: one of :data:`POINT_KINDS`."""
        return "attention" if self.point in ATTENTION_POINTS else self.point

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.module, self.point, self.tensor)


@dataclass(frozen=True)
class Plan:
    """The resolved configuration: a list of entries, pure data."""

    entries: tuple[PlanEntry, ...]

    def __iter__(self) -> Iterator[PlanEntry]:
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    def active(self) -> list[PlanEntry]:
        return [e for e in self.entries if e.format is not None]

    def for_module(self, name: str) -> list[PlanEntry]:
        return [e for e in self.entries if e.module == name]

    def to_rows(self) -> list[dict[str, Any]]:
        return [{"module": e.module, "type": e.module_type, "point": e.point, "tensor": e.tensor,
                 "format": e.format_name, "granularity": "-" if e.format is None else e.format.granularity,
                 "decided_by": e.decided_by} for e in self.entries]

    def text(self, width: int = 100) -> str:
        """The plan as plain columns laid out for ``width`` columns (no rich)."""
        return plain_table(self.to_rows(), PLAN_TABLE_COLUMNS, width, empty=EMPTY_PLAN)

    def __str__(self) -> str:
        """The plan as plain columns, laid out for the terminal's width (160 columns into a pipe)."""
        return self.text(shutil.get_terminal_size((160, 24)).columns)

    def __repr__(self) -> str:
        active = self.active()
        counts: dict[str, int] = {}
        for e in active:
            counts[e.format_name] = counts.get(e.format_name, 0) + 1
        formats = ", ".join(f"{n} x{c}" for n, c in counts.items())
        return (f"<qsim_hooks.Plan: {len(self.entries)} points on {len({e.module for e in self.entries})} modules, "
                f"{len(active)} quantized{': ' + formats if formats else ''}>")

    def __rich_console__(self, console: Any, options: Any) -> Iterator[Text]:
        """In a rich console (and rich's REPL) the same plain columns, for the console's width."""
        yield Text(self.text(options.max_width))

    def _repr_html_(self) -> str:
        return html_table(self.to_rows(), PLAN_TABLE_COLUMNS)


# ---------------------------------------------------------------------------
# what the rules decide for one module
# ---------------------------------------------------------------------------
@dataclass
class _Decided:
    """Every field of one module after folding the rules that match it."""

    roles: dict[str, Decision] = field(default_factory=dict)  # role -> format
    scalings: dict[str, Decision] = field(default_factory=dict)  # role -> Scaling override
    points: dict[str, Decision] = field(default_factory=dict)  # attention point -> format (set by a rule)
    enabled: Decision = Decision(True, "cfg")
    attention: Decision = Decision(False, "cfg")

    def fold(self, rule: Rule, label: str) -> None:
        """Apply one matching rule: every field it sets replaces the earlier decision."""
        for role in ROLES:
            if (v := getattr(rule, role)) is not UNSET:
                self.roles[role] = Decision(v, label)
            if (sc := getattr(rule, f"{role}_scaling")) is not UNSET:
                self.scalings[role] = Decision(sc, label)
        for pt in ATTENTION_POINTS:
            if (v := getattr(rule, pt)) is not UNSET:
                self.points[pt] = Decision(v, label)
        if rule.attention is not None:
            self.attention = Decision(rule.attention, label)
        if rule.enabled is not None:
            self.enabled = Decision(rule.enabled, label)

    def formats(self, name: str) -> dict[str, Decision]:
        """Each decided role's format with its scaling override applied."""
        out = {}
        for role, d in self.roles.items():
            sc = self.scalings.get(role)
            out[role] = d if sc is None else d.combined(sc, _with_scaling(d.value, sc.value,
                                                                          f"module {name!r} {role}"))
        return out

    def off_unless_enabled(self, d: Decision) -> Decision:
        return d if self.enabled.value else Decision(None, self.enabled.by)


def _with_scaling(fmt: Format | None, sc: Scaling | None, who: str) -> Format | None:
    if fmt is None or sc is None:
        return fmt
    if not hasattr(fmt, "scaling"):
        raise ValueError(f"{who}: format {fmt.name!r} has no scaling to override")
    return dataclasses.replace(fmt, scaling=sc)  # type: ignore[type-var]


def _attention_modules(model: nn.Module, cfg: QuantConfig) -> set[int]:
    """ids of the modules whose class, or a base class, has a name matching ``cfg.attention`` and that hold no
    other such module (``ShiftedWindowAttentionV2`` is found through its base ``ShiftedWindowAttention``)."""
    if cfg.attention is None:
        return set()
    pat = re.compile(cfg.attention)
    named = [m for _, m in model.named_modules()]
    hits = {id(m) for m in named if any(pat.fullmatch(c.__name__)
                                        for c in parametrize.type_before_parametrizations(m).__mro__)}
    return {id(m) for m in named if id(m) in hits and not any(id(c) in hits for c in m.modules() if c is not m)}


def resolve(model: nn.Module, cfg: QuantConfig) -> Plan:
    """Decide every quantization point of ``model`` under ``cfg`` (attaches nothing)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(cfg, QuantConfig):
        raise TypeError(f"cfg must be a qsim_hooks.QuantConfig, got {type(cfg).__name__}")
    rule_types = tuple(t for r in cfg.rules for t in r.types)  # type: ignore[union-attr]
    by_pattern = _attention_modules(model, cfg)
    used = [False] * len(cfg.rules)
    entries: list[PlanEntry] = []
    seen: set[int] = set()
    for name, m in model.named_modules(remove_duplicate=False):
        if id(m) in seen:
            continue  # a module shared under two names is instrumented once
        spec = cfg.layer_spec(m)
        mtype = parametrize.type_before_parametrizations(m)
        matching = [(i, r) for i, r in enumerate(cfg.rules) if r.matches(name, m)]
        if spec is None and id(m) not in by_pattern and not any(r.attention for _, r in matching) \
                and not (rule_types and issubclass(mtype, rule_types)):
            continue
        seen.add(id(m))
        attention = Decision(id(m) in by_pattern, "cfg")
        for i, r in matching:  # the last rule that says, else the pattern (as the fold below decides it)
            if r.attention is not None:
                attention = Decision(r.attention, r.name or f"rule[{i}]")
        d = _Decided(attention=attention)
        if spec is not None or attention.value:  # a layer's, or an attention module's, points start global
            d.roles = {role: Decision(getattr(cfg, role), "cfg") for role in ROLES}
            d.scalings = {r: Decision(sc, "cfg") for r in ROLES if (sc := getattr(cfg, f"{r}_scaling")) is not None}
        for i, r in matching:
            used[i] = True
            d.fold(r, r.name or f"rule[{i}]")
        formats = d.formats(name)
        if spec is not None or not d.attention.value:
            entries += _layer_entries(name, m, mtype.__name__, spec, formats, d)
        if d.attention.value:
            entries += _attention_entries(name, mtype.__name__, formats, d)
    _check_used(cfg, used)
    return Plan(tuple(entries))


def _attention_entries(name: str, tname: str, formats: dict[str, Decision], d: _Decided) -> list[PlanEntry]:
    """The six points: a rule's own format, else the module's input or output format (ATTENTION_DEFAULTS)."""
    out = []
    for pt in ATTENTION_POINTS:
        dec = d.points.get(pt)
        if dec is None:
            role = ATTENTION_DEFAULTS[pt]
            base = formats.get(role, Decision(None, d.attention.by))
            dec = Decision(base.value, f"{base.by}({role})")
        dec = d.off_unless_enabled(dec)
        out.append(PlanEntry(name, tname, pt, pt, dec.value, None, dec.by))
    return out


def _layer_entries(name: str, m: nn.Module, tname: str, spec: LayerSpec | None,
                   formats: dict[str, Decision], d: _Decided) -> list[PlanEntry]:
    """The input / weight / output entries of one layer."""
    out = []
    for role in ROLES:
        if role not in formats:
            continue
        dec = d.off_unless_enabled(formats[role])
        fmt, by = dec.value, dec.by
        if role != "weight":
            axis = spec.activation_axis if spec is not None else -1
            out.append(PlanEntry(name, tname, role, role, fmt.with_axis(axis) if fmt is not None else None, axis,
                                 by))
            continue
        if spec is None:
            if fmt is not None:
                raise ValueError(f"module {name!r} ({tname}) is not a registered layer, so it has "
                                 "no known weight tensors; register it with "
                                 "qsim_hooks.register_layer(Type, weights=(...))")
            continue
        for w in spec.weights:
            t = getattr(m, w, None)
            if t is None and not hasattr(m, w):  # registered as None (bias=False, MHA's packed q/k/v) is absent
                raise ValueError(f"module {name!r} ({tname}) has no tensor {w!r}, which its layer spec names as a "
                                 f"weight (QuantConfig.layers / register_layer); its tensors: "
                                 f"{sorted([*m._parameters, *m._buffers])}")
            if not isinstance(t, torch.Tensor):
                if fmt is not None and t is not None:
                    raise ValueError(f"module {name!r} ({tname}): {w!r} is not a tensor")
                continue  # e.g. bias=None or an absent optional weight
            f, axis = fmt, None
            if f is not None and getattr(f, "scaling", None) is not None:
                g = f.scaling.granularity  # type: ignore[attr-defined]
                axis = spec.weight_channel_axis if g == "channel" else spec.weight_reduction_axis
                f = f.with_axis(axis)
            out.append(PlanEntry(name, tname, "weight", w, f, axis, by))
    return out


def _check_used(cfg: QuantConfig, used: list[bool]) -> None:
    """A rule that matched no candidate: an error naming it (a warning with ``strict=False``)."""
    for i, ok in enumerate(used):
        if ok:
            continue
        r = cfg.rules[i]
        label = r.name or f"rule[{i}]"
        msg = (f"QuantConfig rule {label!r} (match={list(r.match)!r}, "  # type: ignore[arg-type]
               f"types={[t.__name__ for t in r.types]!r}) matches no layer of the model")  # type: ignore[union-attr]
        if cfg.strict:
            raise ValueError(msg + "; fix the pattern or pass strict=False to only warn")
        warnings.warn(msg, UserWarning, stacklevel=4)


def accumulators(model: nn.Module, cfg: QuantConfig) -> dict[str, Accumulator]:
    """Each module's accumulator (every module: a GEMM may run in any of them): ``cfg.accumulator``, then the
    last matching rule that sets one; none for a module a rule switches off (``enabled=False``)."""
    if cfg.accumulator is None and all(r.accumulator is UNSET or r.accumulator is None for r in cfg.rules):
        return {}
    out = {}
    for name, m in model.named_modules(remove_duplicate=False):
        if "parametrizations" in name.split("."):
            continue
        acc, on = cfg.accumulator, True
        for r in cfg.rules:
            if r.matches(name, m):
                acc = acc if r.accumulator is UNSET else r.accumulator
                on = on if r.enabled is None else r.enabled
        if acc is not None and on:
            out[name] = acc
    return out
