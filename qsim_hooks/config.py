"""Configuration, the user's side: QuantConfig, per-layer rules, and the names of roles and points.

A :class:`QuantConfig` holds the global formats (INT-FP-QSim's one setting)
and an ordered list of :class:`Rule` objects; both are frozen and checked on
construction, so a bad field fails where it is written. What the rules mean
for a given model is decided by :func:`qsim_hooks.planning.resolve`, which
reads these types and nothing else; layer types live in :mod:`.layers`.

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
import html
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.text import Text
from torch import nn
from torch.nn.utils import parametrize

from . import configdata, configfile, guards
from .accumulate import as_accumulator
from .formats import Scaling, as_format
from .layers import LayerSpec, lookup, register_layer

__all__ = ["QuantConfig", "Rule", "LayerSpec", "register_layer", "ROLES", "ATTENTION_POINTS",
           "ATTENTION_DEFAULTS", "DEFAULT_ATTENTION_PATTERN", "UNSET"]

ROLES = ("input", "weight", "output")
ATTENTION_POINTS = ("q", "k", "scores", "probs", "v", "context")
#: default attention point -> the role whose format it takes (INT-FP-QSim's choice)
ATTENTION_DEFAULTS = {"q": "input", "k": "input", "scores": "output", "probs": "input", "v": "input",
                      "context": "output"}
#: class names of attention modules, matched whole against a module's class and its base classes (so a
#: subclass of a matching class counts); a version suffix is allowed (``ShiftedWindowAttentionV2``)
DEFAULT_ATTENTION_PATTERN = r".*Attention(V?\d+)?"


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
        attention: ``True`` makes matched modules attention modules (their six
            points take the global input/output formats unless set here, and
            their matmuls are intercepted), ``False`` stops the class-name
            pattern from doing so.
        accumulator: how matched layers' GEMMs add their products (an
            :class:`~qsim_hooks.accumulate.Accumulator`, a format or preset name;
            ``None``: exact fp32 sums).
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
    accumulator: Any = UNSET
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
        if self.accumulator is not UNSET:
            object.__setattr__(self, "accumulator", as_accumulator(self.accumulator, "Rule.accumulator"))
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

    def set_fields(self) -> list[tuple[str, Any]]:
        """``(field, value)`` for every field the rule sets (a format or scaling set to ``None`` included)."""
        return [(f.name, v) for f in dataclasses.fields(self) if (v := getattr(self, f.name)) is not UNSET
                and (v is not None or f.name in _VALUE_FIELDS) and v != ()]

    def where(self) -> str:
        """The modules it matches, in words: ``match 'layer4.*'``, ``types Linear``, ``every layer``."""
        parts = ["match " + ",".join(repr(p) for p in self.match)] if self.match else []  # type: ignore[union-attr]
        parts += ["types " + ",".join(t.__name__ for t in self.types)] if self.types else []  # type: ignore[union-attr]
        return " ".join(parts) or "every layer"

    def describe(self) -> str:
        """The rule in one line: ``match 'layer4.*': weight e4m3``."""
        sets = [f"{k} {configdata.short(v)}" for k, v in self.set_fields() if k not in ("match", "types", "name")]
        return f"{self.where()}: {', '.join(sets) or 'nothing'}" + (f" ({self.name!r})" if self.name else "")

    def __repr__(self) -> str:
        return "Rule(" + ", ".join(f"{k}={configdata.short(v, True)}" for k, v in self.set_fields()) + ")"

    def to_dict(self, who: str = "rule") -> dict[str, Any]:
        """The rule as config-file data (:mod:`qsim_hooks.configfile` says what cannot be written)."""
        return {k: configdata.field_to_data(k, v, who) for k, v in self.set_fields()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], who: str = "rule") -> Rule:
        """A rule from config-file data (:meth:`to_dict`'s keys; unknown keys are errors)."""
        if not isinstance(d, Mapping):
            raise TypeError(f"{who} must be a table/object, got {type(d).__name__}")
        allowed = {f.name for f in dataclasses.fields(cls)}
        if bad := set(d) - allowed:
            raise ValueError(f"{who}: unknown keys {sorted(bad)}; allowed: {sorted(allowed)}")
        return cls(**{k: configdata.field_from_data(k, v, who, ROLES + ATTENTION_POINTS, _SCALINGS)
                      for k, v in d.items()})


_SCALINGS = tuple(f"{r}_scaling" for r in ROLES)
_VALUE_FIELDS = frozenset(ROLES + ATTENTION_POINTS + _SCALINGS + ("accumulator",))  # None means something there


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
            attention modules, matched against the module's class and its base
            classes; only leaves count (a BertAttention holding a
            BertSelfAttention is not one). ``None`` turns recognition off (rules
            with ``attention=True`` still work).
        input_scaling, weight_scaling, output_scaling: the scaling of every
            layer's role (``"tensor"``, ``"channel"``, ``"block"``, a Scaling or
            its fields as a dict) whichever format decides it, as a first rule
            matching every layer would; a rule's own ``*_scaling`` wins where it
            matches. ``None``: each format's own.

    Named recipes: ``QuantConfig.preset("w8a8-int")`` (:mod:`qsim_hooks.presets`). Files:
    :meth:`save` / :meth:`load` (TOML or JSON; :meth:`to_dict` / :meth:`from_dict` for the data).
        require_coverage: a GEMM that ran with an operand the config asks to
            quantize and no point covered is an error when the session detaches
            (``qsim_hooks.CoverageError``, after the model is restored) instead
            of a warning.
        accumulator: how every registered layer's GEMM adds its products (an
            :class:`~qsim_hooks.accumulate.Accumulator`, a format name such as
            ``"fp16"`` or a preset such as ``"hopper_fp8"``); ``None``: exact.
    """

    input: Any = None
    weight: Any = None
    output: Any = None
    rules: Sequence[Rule] = ()
    layers: Mapping[type, Any] = field(default_factory=dict)
    strict: bool = True
    seed: int | None = None
    attention: str | None = DEFAULT_ATTENTION_PATTERN
    input_scaling: Any = None
    weight_scaling: Any = None
    output_scaling: Any = None
    require_coverage: bool = False
    accumulator: Any = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "accumulator", as_accumulator(self.accumulator, "QuantConfig.accumulator"))
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
        for name in ("strict", "require_coverage"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"QuantConfig.{name} must be a bool, got {getattr(self, name)!r}")
        object.__setattr__(self, "seed", guards.check_seed(self.seed))
        self._set_scalings()

    def _set_scalings(self) -> None:
        for key in _SCALINGS:
            v = getattr(self, key)
            object.__setattr__(self, key, None if v is UNSET else _as_scaling(v, f"QuantConfig.{key}"))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> QuantConfig:
        """Build from plain data (a parsed TOML/JSON file; what :meth:`to_dict` writes). Unknown keys are errors.

        Keys: ``input``, ``weight``, ``output`` (a format name, ``"none"`` or a format table),
        ``input_scaling`` / ``weight_scaling`` / ``output_scaling``, ``rules`` (tables of :class:`Rule`'s
        fields; ``types`` as import paths), ``layers`` (``{import path: weight names or LayerSpec fields}``),
        ``strict``, ``seed``, ``require_coverage``, ``accumulator`` (a name), ``attention`` (``false``: off)
        and ``preset`` (a named recipe the other keys go on top of; its rules come first).
        """
        return cls(**configdata.config_kwargs(d, ROLES, Rule.from_dict))

    def to_dict(self) -> dict[str, Any]:
        """The config as data for a TOML or JSON file; :meth:`from_dict` reads it back to an equal config.

        Raises:
            ValueError: a part that is code rather than data (a callable format, a class defined in
                ``__main__``), naming it (:mod:`qsim_hooks.configfile` lists what can be written).
        """
        return configdata.config_to_data(self, ROLES, DEFAULT_ATTENTION_PATTERN)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the config to ``path``: TOML (``.toml``) or JSON (``.json``); :meth:`load` reads it back."""
        return configfile.write_file(self.to_dict(), path)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> QuantConfig:
        """Read a ``.toml`` or ``.json`` config file (the keys of :meth:`from_dict`); errors name the file."""
        data = configfile.read_file(path)
        try:
            return cls.from_dict(data)
        except (ValueError, TypeError) as exc:
            raise type(exc)(f"{os.fspath(path)}: {exc}") from None

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> QuantConfig:
        """A named recipe (``"fp8"``, ``"w8a8-int"``, ``"w4a16-int"``, ``"mxfp4"``, ...: ``qsim-hooks presets``),
        with ``overrides`` (QuantConfig fields) on top."""
        cfg = cls.from_dict({"preset": name})
        return dataclasses.replace(cfg, **overrides) if overrides else cfg

    def describe(self) -> list[str]:
        """The config in a few lines: the global formats (with their scalings), then one line per rule."""
        lines = [", ".join(configdata.role_text(self, r) for r in ROLES)]
        lines += [f"rule[{i}] {r.describe()}" for i, r in enumerate(self.rules)]
        return lines + ([f"layers: {', '.join(t.__name__ for t in self.layers)}"] if self.layers else [])

    def __repr__(self) -> str:
        lines = self.describe()
        shown = "; ".join(lines[1:4]) + (" ..." if len(lines) > 4 else "")
        return f"QuantConfig({lines[0]}{'; ' + shown if shown else ''})"

    def __rich__(self) -> Text:
        return Text.assemble(("QuantConfig", "bold"), "\n  " + "\n  ".join(self.describe()))

    def _repr_html_(self) -> str:
        return "<pre>QuantConfig\n  " + "\n  ".join(html.escape(line) for line in self.describe()) + "</pre>"

    def layer_spec(self, module: nn.Module) -> LayerSpec | None:
        """How ``module`` is instrumented (this config's ``layers``, then registered, then default types)."""
        return lookup(module, self.layers)
