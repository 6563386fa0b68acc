"""A QuantConfig and its rules as plain data and as short text: the bodies of ``to_dict`` / ``from_dict`` and of
the reprs, kept out of :mod:`qsim_hooks.config` so that the config types stay small.

Values go through :mod:`qsim_hooks.configfile` (formats, scalings, module types). Nothing here imports
:mod:`qsim_hooks.config`: the config passes in what only it knows (which fields hold formats, how to build a
Rule), so imports go one way.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from . import configfile as cf
from .accumulate import Accumulator, as_accumulator
from .accumulate.spec import PRESETS as ACCUMULATOR_PRESETS
from .formats import Format, Scaling
from .layers import LayerSpec
from .presets import get_preset

__all__ = ["field_to_data", "field_from_data", "config_kwargs", "config_to_data", "role_text", "short", "FILE_KEYS"]

#: the keys of a config file (``QuantConfig.from_dict``)
FILE_KEYS = frozenset({"input", "weight", "output", "input_scaling", "weight_scaling", "output_scaling", "rules",
                       "layers", "strict", "seed", "attention", "require_coverage", "accumulator",
                       "preset"})


def accumulator_to_data(acc: Accumulator, who: str) -> str:
    """An accumulator as its name, when the name reads back to the same accumulator (a preset or a format)."""
    for name in (acc.name, *ACCUMULATOR_PRESETS):
        try:
            if as_accumulator(name, who) == acc:
                return name
        except (ValueError, TypeError):
            continue
    raise ValueError(f"{who}={acc.name!r} cannot be written to a config file: only accumulators a name reads back "
                     "to (a format such as 'fp16', or a preset such as 'hopper_fp8') can")


def field_to_data(name: str, v: Any, who: str) -> Any:
    """One set field of a rule or config as data (by what the value is: a format, a scaling, types, ...)."""
    if name == "match":
        return v[0] if len(v) == 1 else list(v)
    if name == "types":
        return [cf.type_to_data(t, f"{who}.types") for t in v]
    if isinstance(v, Scaling):
        return cf.scaling_to_data(v)
    if isinstance(v, Accumulator):
        return accumulator_to_data(v, f"{who}.{name}")
    if v is None or isinstance(v, Format):
        return cf.format_to_data(v, f"{who}.{name}")
    return v


def field_from_data(name: str, v: Any, who: str, formats_: Sequence[str], scalings: Sequence[str]) -> Any:
    """The inverse of :func:`field_to_data` for a field of a rule."""
    if name == "types":
        return tuple(cf.type_from_data(t, f"{who}.types") for t in ([v] if isinstance(v, str) else v))
    if name in formats_:
        return cf.format_from_data(v, f"{who}.{name}")
    if name == "accumulator":
        return None if v == "none" else v
    if name in scalings:
        return cf.scaling_from_data(v, f"{who}.{name}")
    return v


def config_kwargs(d: Mapping[str, Any], roles: Sequence[str],
                  rule_from: Callable[[Mapping[str, Any], str], Any]) -> dict[str, Any]:
    """QuantConfig's keyword arguments from config-file data (see ``QuantConfig.from_dict``)."""
    if not isinstance(d, Mapping):
        raise TypeError(f"QuantConfig.from_dict: expected a mapping, got {type(d).__name__}")
    unknown = set(d) - FILE_KEYS
    if unknown:
        raise ValueError(f"QuantConfig: unknown keys {sorted(unknown)}; allowed: {sorted(FILE_KEYS)}")
    d = dict(d)
    if d.get("preset") is not None:  # the preset first, the file's keys on top, its rules after the preset's
        base = dict(get_preset(d.pop("preset")).data)
        rules = list(base.pop("rules", ())) + list(d.pop("rules", None) or ())
        d = {**base, **d, "rules": rules}
    d.pop("preset", None)
    kw: dict[str, Any] = {}
    for role in roles:
        if role in d:
            kw[role] = cf.format_from_data(d[role], role)
        if f"{role}_scaling" in d:
            kw[f"{role}_scaling"] = cf.scaling_from_data(d[f"{role}_scaling"], f"{role}_scaling")
    rules = d.get("rules") or ()
    if isinstance(rules, Mapping) or isinstance(rules, str):
        raise TypeError(f"rules must be a list of tables ([[rules]] in TOML), got {type(rules).__name__}")
    kw["rules"] = tuple(rule_from(r, f"rules[{i}]") for i, r in enumerate(rules))
    layers = d.get("layers") or {}
    if not isinstance(layers, Mapping):
        raise TypeError(f"layers must be a table {{import path: weight names}}, got {type(layers).__name__}")
    kw["layers"] = {cf.type_from_data(t, f"layers[{t!r}]"): (LayerSpec(**v) if isinstance(v, Mapping) else v)
                    for t, v in layers.items()}
    if "attention" in d:
        kw["attention"] = None if d["attention"] is False else d["attention"]
    if "accumulator" in d:
        kw["accumulator"] = None if d["accumulator"] == "none" else d["accumulator"]
    for k in ("strict", "seed", "require_coverage"):
        if k in d:
            kw[k] = d[k]
    return kw


def config_to_data(cfg: Any, roles: Sequence[str], default_attention: str) -> dict[str, Any]:
    """A QuantConfig as config-file data (the body of ``QuantConfig.to_dict``)."""
    out: dict[str, Any] = {role: cf.format_to_data(getattr(cfg, role), f"QuantConfig.{role}") for role in roles}
    for role in roles:
        if (sc := getattr(cfg, f"{role}_scaling")) is not None:
            out[f"{role}_scaling"] = cf.scaling_to_data(sc)
    if not cfg.strict:
        out["strict"] = False
    if cfg.seed is not None:
        out["seed"] = cfg.seed
    if cfg.require_coverage:
        out["require_coverage"] = True
    if cfg.accumulator is not None:
        out["accumulator"] = accumulator_to_data(cfg.accumulator, "QuantConfig.accumulator")
    if cfg.attention != default_attention:
        out["attention"] = False if cfg.attention is None else cfg.attention
    if cfg.layers:
        out["layers"] = {cf.type_to_data(t, "QuantConfig.layers"): {
            "weights": list(s.weights), "weight_channel_axis": s.weight_channel_axis,
            "weight_reduction_axis": s.weight_reduction_axis, "activation_axis": s.activation_axis}
            for t, s in cfg.layers.items()}
    if cfg.rules:
        out["rules"] = [r.to_dict(f"rules[{i}]") for i, r in enumerate(cfg.rules)]
    return out


def role_text(cfg: Any, role: str) -> str:
    """``"weight int4 per channel"``: a config's global format of ``role`` and its global scaling."""
    sc = getattr(cfg, f"{role}_scaling")
    return f"{role} {short(getattr(cfg, role))}" + (f" per {short(sc)}" if sc is not None else "")


def short(v: Any, code: bool = False) -> str:
    """A field's value in a repr: a format by its name (with its scaling when it is not the named format)."""
    if v is None:
        return "None" if code else "full precision"
    if isinstance(v, Format):
        text = cf.registered_name(v) or f"{v.name} ({v.granularity})"
        return repr(text) if code else text
    if isinstance(v, Scaling):
        d = cf.scaling_to_data(v)
        return repr(d) if code else (d if isinstance(d, str) else v.describe())
    if isinstance(v, tuple) and v and isinstance(v[0], type):
        return ",".join(t.__name__ for t in v)
    if isinstance(v, tuple):
        return repr(v[0]) if len(v) == 1 else repr(list(v))
    return repr(v)
