"""Plain-text tables for ``str()`` of data objects (``print(qh.plan(...))``).

Rich tables are :mod:`qsim_hooks.report`'s; this is the dependency-free
fallback a value's ``__str__`` can use from the bottom of the package.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["plain_table"]


def plain_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str], empty: str = "") -> str:
    """Left-aligned columns separated by two spaces, a header line first; ``empty`` when there are no rows."""
    if not rows:
        return empty
    width = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in columns}
    lines = ["  ".join(c.ljust(width[c]) for c in columns)]
    lines += ["  ".join(str(r[c]).ljust(width[c]) for c in columns) for r in rows]
    return "\n".join(lines)
