"""Configuration: QuantConfig, per-layer rules, and ``resolve(model, cfg) -> Plan``.

A :class:`QuantConfig` holds the global formats (INT-FP-QSim's one setting)
and an ordered list of :class:`Rule` objects. Resolution is pure: it walks the
model, decides the format of every quantization point and records which rule
decided it. Nothing is attached here; :mod:`.session` attaches a Plan.

Precedence (documented in the README):

1. Candidates are modules whose type (before parametrizations, subclasses
   included) is a registered layer type (Linear, Conv1/2/3d, ConvTranspose1/2/3d,
   and what :func:`register_layer` or ``QuantConfig(layers=...)`` adds), plus
   modules whose type a rule lists in ``types``.
2. The global ``input``/``weight``/``output`` apply to every registered layer.
3. Rules are applied in order; for each field (a role's format, its scaling,
   ``enabled``) **the last matching rule that sets it wins**.
4. A rule that matches no candidate is an error naming it
   (a warning with ``strict=False``).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import re
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from .formats import Format, Scaling, as_format

__all__ = ["QuantConfig", "Rule", "LayerSpec", "register_layer", "Plan", "PlanEntry", "resolve",
           "ROLES", "ATTENTION_POINTS", "UNSET"]

ROLES = ("input", "weight", "output")
ATTENTION_POINTS = ("q", "k", "scores", "probs", "v", "context")
#: default attention point -> the role whose format it takes (INT-FP-QSim's choice)
ATTENTION_DEFAULTS = {"q": "input", "k": "input", "scores": "output", "probs": "input", "v": "input",
                      "context": "output"}
DEFAULT_ATTENTION_PATTERN = r".*Attention"


class _Unset:
    _inst = None

    def __new__(cls):
        if cls._inst is None:
            cls._inst = super().__new__(cls)
        return cls._inst

    def __repr__(self) -> str:
        return "UNSET"

    def __bool__(self) -> bool:
        return False


UNSET: Any = _Unset()


@dataclass(frozen=True)
class LayerSpec:
    """How to instrument a layer type.

    Args:
        weights: names of the weight tensors to fake-quantize.
        weight_channel_axis: output-channel axis of those weights
            (0 for Linear/Conv, 1 for ConvTranspose).
        weight_reduction_axis: the axis a dot product runs over (block formats
            run along it): 1 for Linear/Conv, 0 for ConvTranspose.
        activation_axis: the feature axis of inputs/outputs (-1 for Linear,
            1 for NCHW convolutions).
    """

    weights: tuple[str, ...] = ("weight",)
    weight_channel_axis: int = 0
    weight_reduction_axis: int = 1
    activation_axis: int = -1

    def __post_init__(self) -> None:
        if isinstance(self.weights, str):
            object.__setattr__(self, "weights", (self.weights,))
        object.__setattr__(self, "weights", tuple(self.weights))
        for w in self.weights:
            if not isinstance(w, str) or not w:
                raise TypeError(f"LayerSpec.weights must be names (str), got {w!r}")


_CONV = LayerSpec(activation_axis=1)
_CONVT = LayerSpec(weight_channel_axis=1, weight_reduction_axis=0, activation_axis=1)
_DEFAULT_LAYERS: dict[type, LayerSpec] = {
    nn.Linear: LayerSpec(),
    # the bare in-projection Parameters (packed, or separate when kdim/vdim differ); out_proj is a Linear
    nn.MultiheadAttention: LayerSpec(("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight")),
    nn.Conv1d: _CONV, nn.Conv2d: _CONV, nn.Conv3d: _CONV,
    nn.ConvTranspose1d: _CONVT, nn.ConvTranspose2d: _CONVT, nn.ConvTranspose3d: _CONVT,
}
_registered: dict[type, LayerSpec] = {}


def register_layer(layer_type: type, weights: str | Sequence[str] = ("weight",), *,
                   weight_channel_axis: int = 0, weight_reduction_axis: int = 1,
                   activation_axis: int = -1) -> None:
    """Register a module type (and its subclasses) to be instrumented like Linear/Conv."""
    if not (isinstance(layer_type, type) and issubclass(layer_type, nn.Module)):
        raise TypeError(f"register_layer: layer_type must be an nn.Module subclass, got {layer_type!r}")
    _registered[layer_type] = LayerSpec(tuple([weights] if isinstance(weights, str) else weights),
                                        weight_channel_axis, weight_reduction_axis, activation_axis)


def _as_spec(v: Any, who: str) -> LayerSpec:
    if isinstance(v, LayerSpec):
        return v
    if isinstance(v, str) or isinstance(v, (list, tuple)):
        return LayerSpec(tuple([v] if isinstance(v, str) else v))
    raise TypeError(f"{who}: expected a LayerSpec or weight names, got {type(v).__name__}")


def _as_scaling(v: Any, who: str) -> Scaling | _Unset | None:
    if v is UNSET or v is None or isinstance(v, Scaling):
        return v
    if isinstance(v, str):
        if v not in ("tensor", "channel", "block"):
            raise ValueError(f"{who}={v!r} is not allowed; use 'tensor', 'channel', 'block' or a Scaling")
        return Scaling(granularity=v)  # type: ignore[arg-type]
    if isinstance(v, Mapping):
        return Scaling(**v)
    raise TypeError(f"{who}: expected a Scaling, 'tensor'/'channel'/'block' or a dict, got {type(v).__name__}")


def _fmt(v: Any, who: str) -> Any:
    if v is UNSET:
        return UNSET
    return as_format(v, field=who)


def _types(v: Any, who: str) -> tuple[type, ...]:
    if v is None:
        return ()
    items = v if isinstance(v, (tuple, list)) else (v,)
    for t in items:
        if not (isinstance(t, type) and issubclass(t, nn.Module)):
            raise TypeError(f"{who}: expected nn.Module types, got {t!r}")
    return tuple(items)


def _patterns(v: Any, who: str) -> tuple[str, ...]:
    if v is None:
        return ()
    items = (v,) if isinstance(v, str) else tuple(v)
    for p in items:
        if not isinstance(p, str) or not p:
            raise TypeError(f"{who}: module name patterns must be non-empty str, got {p!r}")
        if p.startswith("re:"):
            try:
                re.compile(p[3:])
            except re.error as exc:
                raise ValueError(f"{who}: bad regular expression {p[3:]!r}: {exc}") from None
    return items


@dataclass(frozen=True)
class Rule:
    """One per-layer rule. Unset fields leave earlier decisions alone.

    Args:
        match: module-name pattern(s): shell globs (``"encoder.*.fc?"``) or,
            prefixed ``re:``, regular expressions matched against the whole name.
        types: module type(s); subclasses match too. Listing a type here also
            makes its modules candidates for input/output quantization.
        input, weight, output: a format (name, Format, qtorch object, callable)
            or ``None`` for full precision.
        input_scaling, weight_scaling, output_scaling: override the role's
            scaling: ``"tensor"``, ``"channel"``, ``"block"`` or a Scaling.
        q, k, scores, probs, v, context: formats of an attention module's internal
            points (default: q, k, probs, v take the module's input format, scores
            and context its output format).
        attention: ``True`` makes matched modules attention modules (their matmuls
            are intercepted), ``False`` stops the class-name pattern from doing so.
        enabled: ``False`` switches matched layers off entirely.
        name: a label shown by ``plan()`` (defaults to ``rule[i]``).

    A rule with neither ``match`` nor ``types`` matches every candidate.
    """

    match: str | Sequence[str] | None = None
    types: type | Sequence[type] | None = None
    input: Any = UNSET
    weight: Any = UNSET
    output: Any = UNSET
    input_scaling: Any = UNSET
    weight_scaling: Any = UNSET
    output_scaling: Any = UNSET
    q: Any = UNSET
    k: Any = UNSET
    scores: Any = UNSET
    probs: Any = UNSET
    v: Any = UNSET
    context: Any = UNSET
    attention: bool | None = None
    enabled: bool | None = None
    name: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "match", _patterns(self.match, "Rule.match"))
        object.__setattr__(self, "types", _types(self.types, "Rule.types"))
        for role in ROLES:
            object.__setattr__(self, role, _fmt(getattr(self, role), f"Rule.{role}"))
            object.__setattr__(self, f"{role}_scaling",
                               _as_scaling(getattr(self, f"{role}_scaling"), f"Rule.{role}_scaling"))
        for pt in ATTENTION_POINTS:
            object.__setattr__(self, pt, _fmt(getattr(self, pt), f"Rule.{pt}"))
        if self.enabled is not None and not isinstance(self.enabled, bool):
            raise TypeError(f"Rule.enabled must be a bool or None, got {type(self.enabled).__name__}")
        if self.attention is not None and not isinstance(self.attention, bool):
            raise TypeError(f"Rule.attention must be a bool or None, got {type(self.attention).__name__}")

    def matches(self, name: str, module: nn.Module) -> bool:
        if self.types:
            t = parametrize.type_before_parametrizations(module)
            if not issubclass(t, self.types):
                return False
        if self.match:
            return any(_name_matches(p, name) for p in self.match)  # type: ignore[union-attr]
        return True


def _name_matches(pattern: str, name: str) -> bool:
    if pattern.startswith("re:"):
        return re.fullmatch(pattern[3:], name) is not None
    return fnmatch.fnmatchcase(name, pattern)


@dataclass(frozen=True)
class QuantConfig:
    """What format each tensor of a model gets.

    Args:
        input, weight, output: global formats for every registered layer
            (INT-FP-QSim's one setting); ``None`` = full precision.
        rules: ordered :class:`Rule` list; the last matching rule wins per field.
        layers: extra layer types for this config: ``{Type: ("w1", "w2")}`` or
            ``{Type: LayerSpec(...)}``.
        strict: a rule that matches nothing is an error (``True``) or a warning.
        seed: seed of the generator used by stochastic rounding.
        attention: class names (regular expression, whole name) recognised as
            attention modules; only leaves count (a BertAttention holding a
            BertSelfAttention is not one). ``None`` turns recognition off (rules
            with ``attention=True`` still work).
    """

    input: Any = None
    weight: Any = None
    output: Any = None
    rules: Sequence[Rule] = ()
    layers: Mapping[type, Any] = field(default_factory=dict)
    strict: bool = True
    seed: int | None = None
    attention: str | None = DEFAULT_ATTENTION_PATTERN

    def __post_init__(self) -> None:
        if self.attention is not None:
            if not isinstance(self.attention, str):
                raise TypeError("QuantConfig.attention must be a class-name regular expression or None")
            try:
                re.compile(self.attention)
            except re.error as exc:
                raise ValueError(f"QuantConfig.attention: bad regular expression {self.attention!r}: {exc}") from None
        for role in ROLES:
            v = getattr(self, role)
            if v is UNSET:
                v = None
            object.__setattr__(self, role, as_format(v, field=f"QuantConfig.{role}"))
        rules = self.rules
        if isinstance(rules, Rule):
            rules = (rules,)
        rules = tuple(Rule(**r) if isinstance(r, Mapping) else r for r in rules)
        for i, r in enumerate(rules):
            if not isinstance(r, Rule):
                raise TypeError(f"QuantConfig.rules[{i}] must be a Rule or a dict, got {type(r).__name__}")
        object.__setattr__(self, "rules", rules)
        layers = {}
        for t, spec in dict(self.layers).items():
            if not (isinstance(t, type) and issubclass(t, nn.Module)):
                raise TypeError(f"QuantConfig.layers keys must be nn.Module types, got {t!r}")
            layers[t] = _as_spec(spec, f"QuantConfig.layers[{t.__name__}]")
        object.__setattr__(self, "layers", layers)
        if not isinstance(self.strict, bool):
            raise TypeError("QuantConfig.strict must be a bool")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> QuantConfig:
        """Build from plain data (a parsed TOML/JSON file). Unknown keys are errors."""
        if not isinstance(d, Mapping):
            raise TypeError(f"QuantConfig.from_dict: expected a mapping, got {type(d).__name__}")
        allowed = {"input", "weight", "output", "rules", "strict", "seed", "attention"}
        unknown = set(d) - allowed
        if unknown:
            raise ValueError(f"QuantConfig: unknown keys {sorted(unknown)}; allowed: {sorted(allowed)}")
        d = dict(d)
        rule_fields = {f.name for f in dataclasses.fields(Rule)} - {"types"}
        rules = []
        for i, r in enumerate(d.pop("rules", ()) or ()):
            if not isinstance(r, Mapping):
                raise TypeError(f"rules[{i}] must be a table/object, got {type(r).__name__}")
            bad = set(r) - rule_fields
            if bad:
                raise ValueError(f"rules[{i}]: unknown keys {sorted(bad)}; allowed: {sorted(rule_fields)}")
            rules.append(Rule(**{k: (None if v == "none" and k in ROLES + ATTENTION_POINTS else v)
                                 for k, v in r.items()}))
        for role in ROLES:
            if d.get(role) == "none":
                d[role] = None
        return cls(rules=tuple(rules), **d)

    def layer_spec(self, module: nn.Module) -> LayerSpec | None:
        t = parametrize.type_before_parametrizations(module)
        for table in (self.layers, _registered, _DEFAULT_LAYERS):
            for base in t.__mro__:
                if base in table:
                    return table[base]
        return None


@dataclass(frozen=True)
class PlanEntry:
    """One quantization point of the plan."""

    module: str
    module_type: str
    point: str  # "input" | "weight" | "output" (attention points later)
    tensor: str  # weight name, or "input"/"output"
    format: Format | None
    axis: int | None
    decided_by: str

    @property
    def format_name(self) -> str:
        return "-" if self.format is None else self.format.name


@dataclass(frozen=True)
class Plan:
    """The resolved configuration: a list of entries, pure data."""

    entries: tuple[PlanEntry, ...]

    def __iter__(self):
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

    def __str__(self) -> str:
        rows = self.to_rows()
        if not rows:
            return "(empty plan: no layer to instrument)"
        cols = ["module", "type", "point", "tensor", "format", "granularity", "decided_by"]
        width = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in cols}
        lines = ["  ".join(c.ljust(width[c]) for c in cols)]
        lines += ["  ".join(str(r[c]).ljust(width[c]) for c in cols) for r in rows]
        return "\n".join(lines)


def _with_scaling(fmt: Format | None, sc: Scaling | None, who: str) -> Format | None:
    if fmt is None or sc is None:
        return fmt
    if not hasattr(fmt, "scaling"):
        raise ValueError(f"{who}: format {fmt.name!r} has no scaling to override")
    return dataclasses.replace(fmt, scaling=sc)  # type: ignore[type-var]


def _modules(model: nn.Module) -> Iterable[tuple[str, nn.Module]]:
    yield from model.named_modules(remove_duplicate=False)


def _attention_modules(model: nn.Module, cfg: QuantConfig) -> set[int]:
    """ids of the modules whose class name matches ``cfg.attention`` and that hold no other such module."""
    if cfg.attention is None:
        return set()
    pat = re.compile(cfg.attention)
    named = [m for _, m in model.named_modules()]
    hits = {id(m) for m in named if pat.fullmatch(parametrize.type_before_parametrizations(m).__name__)}
    leaves = set()
    for m in named:
        if id(m) in hits and not any(id(c) in hits for c in m.modules() if c is not m):
            leaves.add(id(m))
    return leaves


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
    for name, m in _modules(model):
        if id(m) in seen:
            continue  # a module shared under two names is instrumented once
        spec = cfg.layer_spec(m)
        mtype = parametrize.type_before_parametrizations(m)
        rule_attn = any(r.attention for r in cfg.rules if r.attention and r.matches(name, m))
        if spec is None and id(m) not in by_pattern and not rule_attn \
                and not (rule_types and issubclass(mtype, rule_types)):
            continue
        seen.add(id(m))
        decided: dict[str, tuple[Any, str]] = {}
        scalings: dict[str, Any] = {}
        points: dict[str, tuple[Any, str]] = {}
        enabled, enabled_by = True, "cfg"
        is_attn, attn_by = id(m) in by_pattern, "cfg"
        if spec is not None or is_attn:
            for role in ROLES:
                decided[role] = (getattr(cfg, role), "cfg")
        for i, r in enumerate(cfg.rules):
            if not r.matches(name, m):
                continue
            used[i] = True
            label = r.name or f"rule[{i}]"
            for role in ROLES:
                v = getattr(r, role)
                if v is not UNSET:
                    decided[role] = (v, label)
                sc = getattr(r, f"{role}_scaling")
                if sc is not UNSET:
                    scalings[role] = (sc, label)
            for pt in ATTENTION_POINTS:
                v = getattr(r, pt)
                if v is not UNSET:
                    points[pt] = (v, label)
            if r.attention is not None:
                is_attn, attn_by = r.attention, label
            if r.enabled is not None:
                enabled, enabled_by = r.enabled, label
        tname = mtype.__name__
        resolved: dict[str, tuple[Any, str]] = {}
        for role, (fmt, by) in decided.items():
            if role in scalings:
                fmt = _with_scaling(fmt, scalings[role][0], f"module {name!r} {role}")
                by = by if by == scalings[role][1] else f"{by}+{scalings[role][1]}"
            resolved[role] = (fmt, by)
        if spec is not None or not is_attn:
            _layer_entries(entries, name, m, tname, spec, resolved, enabled, enabled_by)
        if is_attn:
            for pt in ATTENTION_POINTS:
                if pt in points:
                    fmt, by = points[pt]
                else:
                    fmt, by = resolved.get(ATTENTION_DEFAULTS[pt], (None, attn_by))
                    by = f"{by}({ATTENTION_DEFAULTS[pt]})"
                if not enabled:
                    fmt, by = None, enabled_by
                entries.append(PlanEntry(name, tname, pt, pt, fmt, None, by))
    for i, ok in enumerate(used):
        if not ok:
            r = cfg.rules[i]
            label = r.name or f"rule[{i}]"
            msg = (f"QuantConfig rule {label!r} (match={list(r.match)!r}, "  # type: ignore[arg-type]
                   f"types={[t.__name__ for t in r.types]!r}) matches no layer of the model")  # type: ignore[union-attr]
            if cfg.strict:
                raise ValueError(msg + "; fix the pattern or pass strict=False to only warn")
            warnings.warn(msg, UserWarning, stacklevel=3)
    return Plan(tuple(entries))


def _layer_entries(entries: list[PlanEntry], name: str, m: nn.Module, tname: str, spec: LayerSpec | None,
                   resolved: dict[str, tuple[Any, str]], enabled: bool, enabled_by: str) -> None:
    """The input / weight / output entries of one layer."""
    for role in ROLES:
        if role not in resolved:
            continue
        fmt, by = resolved[role]
        if not enabled:
            fmt, by = None, enabled_by
        if role == "weight":
            if spec is None:
                if fmt is not None:
                    raise ValueError(f"module {name!r} ({tname}) is not a registered layer, so it has "
                                     "no known weight tensors; register it with "
                                     "qsim_hooks.register_layer(Type, weights=(...))")
                continue
            for w in spec.weights:
                t = getattr(m, w, None)
                if not isinstance(t, torch.Tensor):
                    if fmt is not None and t is not None:
                        raise ValueError(f"module {name!r} ({tname}): {w!r} is not a tensor")
                    continue  # e.g. bias=None or an absent optional weight
                f = fmt
                axis = None
                if f is not None and getattr(f, "scaling", None) is not None:
                    g = f.scaling.granularity  # type: ignore[attr-defined]
                    axis = spec.weight_channel_axis if g == "channel" else spec.weight_reduction_axis
                    f = f.with_axis(axis)
                entries.append(PlanEntry(name, tname, "weight", w, f, axis, by))
        else:
            axis = spec.activation_axis if spec is not None else -1
            f = fmt.with_axis(axis) if fmt is not None else None
            entries.append(PlanEntry(name, tname, role, role, f, axis, by))
