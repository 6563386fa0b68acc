"""What a layer may be given: a :class:`Candidate` is one (input, weight) pair of formats, with a name.

A candidate is written as a format (``"e4m3"``: inputs and weights in E4M3), as an ``(input, weight)`` pair
(``("int8", "int4")``), as the string ``"input/weight"`` (``"int8/int4"``: the command line's spelling) or
as ``"none"`` (full precision). The search gives each unit (a layer or a block) one candidate; the output
format and everything else come from the base config.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..formats import Format, as_format

__all__ = ["Candidate", "as_candidates"]


def _label(f: Format | None) -> str:
    return "none" if f is None else f.name


@dataclass(frozen=True)
class Candidate:
    """One choice for a unit: its layers' input and weight formats (``None``: full precision).

    Args:
        input: the format of the layers' inputs (anything :func:`~qsim_hooks.formats.as_format` takes).
        weight: the format of their weights.
        name: a label (default: the format's name when both are the same, else ``"input/weight"``).
    """

    input: Any = None
    weight: Any = None
    name: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "input", as_format(self.input, field="Candidate.input"))
        object.__setattr__(self, "weight", as_format(self.weight, field="Candidate.weight"))
        if not isinstance(self.name, str):
            raise TypeError(f"Candidate.name must be a str, got {type(self.name).__name__}")
        if not self.name:
            i, w = _label(self.input), _label(self.weight)
            object.__setattr__(self, "name", i if i == w else f"{i}/{w}")

    @classmethod
    def of(cls, value: Any) -> Candidate:
        """A candidate from a Candidate, a format, an ``(input, weight)`` pair, ``"fmt"`` or ``"input/weight"``."""
        if isinstance(value, Candidate):
            return value
        if isinstance(value, str):
            text = value.strip()
            if "/" in text:
                parts = [p.strip() for p in text.split("/")]
                if len(parts) != 2 or not all(parts):
                    raise ValueError(f"candidate {value!r}: write one format ('e4m3') or 'input/weight' "
                                     "('int8/int4')")
                return cls(_none(parts[0]), _none(parts[1]))
            return cls(_none(text), _none(text))
        if isinstance(value, (tuple, list)):
            if len(value) != 2:
                raise ValueError(f"candidate {value!r}: a pair is (input format, weight format), got "
                                 f"{len(value)} items")
            return cls(_none(value[0]), _none(value[1]))
        if value is None:
            return cls(None, None)
        return cls(value, value)


def _none(v: Any) -> Any:
    return None if isinstance(v, str) and v.strip().lower() == "none" else v


def as_candidates(values: Sequence[Any] | None) -> list[Candidate]:
    """The candidates of a search, checked: at least one, names unique.

    Raises:
        ValueError: an empty list, a repeated name, or a value that is no format.
    """
    if values is None or isinstance(values, (str, Candidate)) or not isinstance(values, Sequence):
        raise TypeError("candidates must be a list of formats or (input, weight) pairs, e.g. "
                        f"['fp16', 'e4m3', 'int8', 'mxfp4'], got {values!r}")
    out = [Candidate.of(v) for v in values]
    if not out:
        raise ValueError("candidates=[] is empty: give at least one format to choose from, e.g. "
                         "['fp16', 'e4m3', 'int8', 'mxfp4']")
    names = [c.name for c in out]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"candidates: {repeated} appear more than once; each candidate must be distinct "
                         "(give Candidate(..., name=...) to tell two apart)")
    return out
