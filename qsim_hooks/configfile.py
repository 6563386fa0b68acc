"""Config values as plain data and files: formats, scalings and module types to and from what TOML and JSON
hold, a small TOML writer, and reading a ``.toml`` / ``.json`` file.

What a config file can hold (``QuantConfig.to_dict`` writes it, ``QuantConfig.from_dict`` reads it):

* a **named format** as its name (``"e4m3"``, ``"int8"``, ``"mxfp4"``, any name
  :func:`qsim_hooks.formats.get` gives back an equal format for); full precision as ``"none"``;
* any other :class:`FloatFormat`, :class:`IntFormat` or :class:`BlockFormat` (a scaled e4m3, int4 with
  stochastic rounding, a custom MX) as a table of the fields that differ from their defaults, with
  ``kind = "float" | "int" | "block"`` (nested element grids, scale grids, gradient formats and
  scalings the same way);
* a **Scaling** as ``"tensor"`` / ``"channel"`` / ``"block"`` or a table of its fields;
* a **module type** (``Rule(types=...)``, ``QuantConfig(layers=...)``) as its import path
  (``"torch.nn.modules.linear.Linear"``), imported when read.

What it cannot hold, and says so naming the field: a callable format (a user function or a qtorch
quantizer: code, not data; register it with :func:`qsim_hooks.formats.register` and use the name), a qtorch
number object (write the equivalent format), a class defined in ``__main__`` or inside a function.

TOML is written here rather than by a dependency: a config is a few scalars, inline tables and one
array of tables (``[[rules]]``), and Python reads TOML itself (``tomllib``, 3.11).
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import nn

from . import formats
from .formats import BlockFormat, FloatFormat, Format, GradSpec, IntFormat, Rounding, Scaling
from .formats.block import ELEMENTS
from .formats.integer import IntElement

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the tomli backport, when installed
    try:
        import tomli as tomllib  # type: ignore[no-redef]
    except ModuleNotFoundError:
        tomllib = None  # type: ignore[assignment]

__all__ = ["registered_name", "format_to_data", "format_from_data", "scaling_to_data", "scaling_from_data",
           "type_to_data", "type_from_data", "to_toml", "read_file", "write_file", "NONE"]

#: how full precision is written (TOML has no null)
NONE = "none"
_KINDS: dict[str, type] = {"float": FloatFormat, "int": IntFormat, "block": BlockFormat, "int_element": IntElement}
_KIND_OF = {cls: kind for kind, cls in _KINDS.items()}


# ---------------------------------------------------------------------------
# formats
# ---------------------------------------------------------------------------
def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def registered_name(fmt: Any) -> str | None:
    """The format's name when the registry gives back an equal format for it (``None`` otherwise)."""
    name = getattr(fmt, "name", None)
    if not isinstance(name, str) or not name:
        return None
    try:
        return name if formats.get(name) == fmt else None
    except (ValueError, TypeError):
        return None


def format_to_data(fmt: Any, who: str = "format") -> Any:
    """A format (or ``None``) as plain data: its name, ``"none"``, or a table of its fields.

    Raises:
        ValueError: a format that is code rather than data (module docstring), naming ``who``.
    """
    if fmt is None:
        return NONE
    name = registered_name(fmt)
    if name is not None:
        return name
    kind = _KIND_OF.get(type(fmt))
    if kind is None:
        what = type(fmt).__name__
        raise ValueError(f"{who}: format {getattr(fmt, 'name', what)!r} ({what}) cannot be written to a config "
                         "file: a callable or qtorch format is code, not data; register it with "
                         "qsim_hooks.formats.register(name, factory) and use the name, or use a FloatFormat, "
                         "IntFormat or BlockFormat")
    out: dict[str, Any] = {"kind": kind}
    for f in dataclasses.fields(fmt):
        if not f.init:
            continue
        v = getattr(fmt, f.name)
        if f.name == "name":
            if v != dataclasses.replace(fmt, name="").name:
                out["name"] = v
            continue
        if v == _default(f):
            continue
        out[f.name] = _value_to_data(v, f"{who}.{f.name}")
    return out


def _value_to_data(v: Any, who: str) -> Any:
    if isinstance(v, Rounding):
        return v.value
    if isinstance(v, Scaling):
        return scaling_to_data(v)
    if isinstance(v, GradSpec):
        d: dict[str, Any] = {}
        if v.estimator != "clipped":
            d["estimator"] = v.estimator
        if v.format is not None:
            d["format"] = format_to_data(v.format, f"{who}.format")
        return d
    if isinstance(v, (Format, IntElement)):
        return format_to_data(v, who)
    if isinstance(v, (bool, int, float, str)):
        return v
    if isinstance(v, tuple):
        return [_value_to_data(x, who) for x in v]
    if v is None:
        return NONE
    raise ValueError(f"{who}: {type(v).__name__} values cannot be written to a config file")


def format_from_data(d: Any, who: str = "format") -> Any:
    """A format from :func:`format_to_data`'s data (a name, ``"none"``, a table) or anything format-like."""
    if isinstance(d, str) and d.strip().lower() == NONE:
        return None
    if not isinstance(d, Mapping):
        return formats.as_format(d, field=who)
    kind = d.get("kind")
    if kind not in _KINDS:
        raise ValueError(f"{who}: a format table needs kind = one of {sorted(_KINDS)}, got {kind!r}")
    cls = _KINDS[kind]
    fields = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(d) - fields - {"kind"})
    if unknown:
        raise ValueError(f"{who}: unknown keys {unknown} for a {kind} format; allowed: {sorted(fields)}")
    kwargs: dict[str, Any] = {}
    for k, v in d.items():
        if k == "kind":
            continue
        if k == "scaling":
            v = scaling_from_data(v, f"{who}.scaling")
        elif k == "grad":
            v = GradSpec(**{g: (format_from_data(x, f"{who}.grad.format") if g == "format" else x)
                            for g, x in dict(v).items()})
        elif k == "element" and not (isinstance(v, str) and v.lower() in ELEMENTS):
            v = format_from_data(v, f"{who}.element")  # a table, or a name the registry knows
        elif k == "scale" and not (isinstance(v, str) and v.lower() == "e8m0"):
            v = format_from_data(v, f"{who}.scale")
        elif isinstance(v, str) and v == NONE:
            v = None
        kwargs[k] = v
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise TypeError(f"{who}: {exc}") from None


def scaling_to_data(sc: Scaling | None) -> Any:
    """``"tensor"`` / ``"channel"`` / ``"block"`` when only the granularity differs from the defaults, else a
    table of the fields that differ; ``"none"`` for ``None``."""
    if sc is None:
        return NONE
    out = {}
    for f in dataclasses.fields(sc):
        if f.init and getattr(sc, f.name) != _default(f):
            out[f.name] = getattr(sc, f.name)
    if out.get("mode") == "static" and "amax" in out:
        del out["mode"]  # an amax makes the scaling static by itself
    if set(out) <= {"granularity"}:
        return sc.granularity
    return out


def scaling_from_data(v: Any, who: str = "scaling") -> Scaling | None:
    """The inverse of :func:`scaling_to_data` (a Scaling passes through)."""
    if v is None or isinstance(v, Scaling):
        return v
    if isinstance(v, str):
        if v.strip().lower() == NONE:
            return None
        if v not in ("tensor", "channel", "block"):
            raise ValueError(f"{who}={v!r} is not allowed; use 'tensor', 'channel', 'block', 'none' or a table")
        return Scaling(granularity=v)  # type: ignore[arg-type]
    if isinstance(v, Mapping):
        try:
            return Scaling(**v)
        except TypeError as exc:
            raise TypeError(f"{who}: {exc}") from None
    raise TypeError(f"{who}: expected 'tensor', 'channel', 'block' or a table, got {type(v).__name__}")


# ---------------------------------------------------------------------------
# module types
# ---------------------------------------------------------------------------
def type_to_data(t: type, who: str = "types") -> str:
    """A module type as its import path (``"torch.nn.modules.linear.Linear"``)."""
    if t.__module__ == "__main__" or "<locals>" in t.__qualname__:
        raise ValueError(f"{who}: {t.__qualname__} is defined in {t.__module__} or inside a function; a config "
                         "file can name only classes it can import: move the class into a module, or keep "
                         "this rule in Python")
    return f"{t.__module__}.{t.__qualname__}"


def type_from_data(path: Any, who: str = "types") -> type:
    """Import the ``nn.Module`` subclass named by ``path`` (``"package.module.Class"``)."""
    if isinstance(path, type):
        return path
    if not isinstance(path, str) or not re.fullmatch(r"[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)+", path):
        raise ValueError(f"{who}: {path!r} is not a class's import path such as 'torch.nn.Linear'")
    parts = path.split(".")
    for n in range(len(parts) - 1, 0, -1):
        try:
            obj: Any = importlib.import_module(".".join(parts[:n]))
        except ImportError:
            continue
        try:
            for attr in parts[n:]:
                obj = getattr(obj, attr)
        except AttributeError:
            break
        if isinstance(obj, type) and issubclass(obj, nn.Module):
            return obj
        raise TypeError(f"{who}: {path!r} is {type(obj).__name__}, not a torch.nn.Module subclass")
    raise ValueError(f"{who}: cannot import {path!r} (no such module or class)")


# ---------------------------------------------------------------------------
# TOML and files
# ---------------------------------------------------------------------------
_BARE = re.compile(r"[A-Za-z0-9_-]+")


def _key(k: str) -> str:
    return k if _BARE.fullmatch(k) else json.dumps(k)


def _toml_value(v: Any, who: str) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)  # JSON's escapes are TOML's basic-string escapes
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x, who) for x in v) + "]"
    if isinstance(v, Mapping):
        return "{ " + ", ".join(f"{_key(str(k))} = {_toml_value(x, who)}" for k, x in v.items()) + " }"
    raise TypeError(f"{who}: {type(v).__name__} cannot be written as TOML")


def to_toml(data: Mapping[str, Any]) -> str:
    """TOML for a config's data: scalars and inline tables first, then ``[layers]``, then ``[[rules]]``."""
    lines = []
    tables = {k: v for k, v in data.items() if k in ("layers", "rules")}
    for k, v in data.items():
        if k not in tables:
            lines.append(f"{_key(k)} = {_toml_value(v, k)}")
    if tables.get("layers"):
        lines += ["", "[layers]"]
        lines += [f"{_key(t)} = {_toml_value(spec, 'layers')}" for t, spec in tables["layers"].items()]
    for i, rule in enumerate(tables.get("rules") or ()):
        lines += ["", "[[rules]]"] + [f"{_key(k)} = {_toml_value(v, f'rules[{i}].{k}')}" for k, v in rule.items()]
    return "\n".join(lines) + "\n"


def write_file(data: Mapping[str, Any], path: str | Path) -> Path:
    """Write ``data`` as TOML or JSON, by the path's suffix (``.toml`` / ``.json``)."""
    p = Path(path)
    if p.suffix == ".toml":
        p.write_text(to_toml(data), encoding="utf-8")
    elif p.suffix == ".json":
        p.write_text(json.dumps(data, indent=2, allow_nan=True) + "\n", encoding="utf-8")
    else:
        raise ValueError(f"config file {str(p)!r} must end in .toml or .json")
    return p


def read_file(path: str | Path) -> dict[str, Any]:
    """The data of a ``.toml`` or ``.json`` file.

    Raises:
        ValueError: another suffix, a parse error (naming the file), TOML without ``tomllib``/``tomli``.
        FileNotFoundError: no such file.
    """
    p = Path(path)
    if p.suffix not in (".toml", ".json"):
        raise ValueError(f"config file {str(p)!r} must end in .toml or .json")
    if not p.is_file():
        raise FileNotFoundError(f"config file {str(p)!r} not found")
    try:
        if p.suffix == ".toml":
            if tomllib is None:
                raise ValueError(f"{p}: reading TOML needs Python 3.11 or the tomli package; or write the config "
                                 "as JSON")
            with p.open("rb") as fh:
                data = tomllib.load(fh)
        else:
            with p.open(encoding="utf-8") as fh:
                data = json.load(fh)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{p}: malformed {p.suffix[1:].upper()}: {exc}") from None
    except ValueError as exc:
        if "reading TOML" in str(exc):
            raise
        raise ValueError(f"{p}: malformed {p.suffix[1:].upper()}: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{p}: a config file holds a table (an object), got {type(data).__name__}")
    return data
