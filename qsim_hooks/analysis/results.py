"""Result objects of the analyses: lists of row dicts that also render, export and print briefly.

A :class:`SweepResult` or :class:`SensitivityResult` *is* a list of its row dicts (indexing, ``len``,
iteration, slicing, JSON all work as before), with ``.rows`` (a plain list), ``.to_pandas()`` (pandas is
optional), ``.render()`` (the rich table) and short ``repr`` / ``__rich__`` / ``_repr_html_`` for the REPL
and notebooks. They are lists rather than wrappers so that code written against the old bare lists keeps
working.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from .. import report, report_propagation
from ..report_layout import FittedTable
from ..report_values import fmt_db

__all__ = ["ResultRows", "SweepResult", "SensitivityResult", "PerLayerResult", "to_pandas"]

PANDAS_HINT = "pip install pandas (any version from 1.5 on)"


def to_pandas(rows: Iterable[Mapping[str, Any]]) -> Any:
    """A ``pandas.DataFrame`` of the rows (one column per key).

    Raises:
        ImportError: pandas is not installed (the message says how to install it).
    """
    try:  # deferred: pandas is optional, and slow to import
        import pandas
    except ImportError:
        raise ImportError(f"to_pandas() needs pandas, which is not installed: {PANDAS_HINT}") from None
    return pandas.DataFrame([dict(r) for r in rows])


class ResultRows(list):
    """Rows of an analysis (a list of dicts) with a table, an export and a short repr."""

    what = "rows"

    @property
    def rows(self) -> list[dict[str, Any]]:
        """The rows as a plain list of dicts."""
        return list(self)

    def to_pandas(self) -> Any:
        """The rows as a ``pandas.DataFrame`` (pandas is optional: ``pip install pandas``)."""
        return to_pandas(self)

    def table(self, **options: Any) -> FittedTable:
        raise NotImplementedError

    def render(self, console: Any = None, **options: Any) -> None:
        """Print the table (``console``: a rich Console, stdout by default)."""
        report.print_table(self.table(**options), report.wide_console(console))

    def summary(self) -> str:
        return f"{len(self)} {self.what}"

    def __repr__(self) -> str:
        return f"<qsim_hooks.{type(self).__name__}: {self.summary()}>"

    def __rich__(self) -> FittedTable:
        return self.table()

    def _repr_html_(self) -> str:
        return self.table()._repr_html_()


class SweepResult(ResultRows):
    """What :func:`qsim_hooks.sweep` returns: one row per format (``format``, ``roles``, ``output_sqnr_db``,
    ``max_abs_error``, ``top1_agreement``, ``metric``, ``metric_full``)."""

    what = "formats"

    def table(self, **options: Any) -> FittedTable:
        return report.sweep_table(self, **options)

    def summary(self) -> str:
        shown = ", ".join(f"{r['format']} {fmt_db(r['output_sqnr_db'])} dB" for r in self[:4])
        roles = self[0]["roles"] if self else "-"
        return f"{len(self)} formats on {roles}: {shown}{', ...' if len(self) > 4 else ''}"


class SensitivityResult(ResultRows):
    """What :func:`qsim_hooks.sensitivity` returns: the ranking, best ranked first (keys in its docstring)."""

    what = "layers"

    def table(self, **options: Any) -> FittedTable:
        return report.sensitivity_table(self, **options)

    def summary(self) -> str:
        if not self:
            return "no layers"
        first = self[0]
        mode = first.get("mode", "one")
        head = f"{len(self)} units ranked ({mode}); first: {first['layer'] or '<model>'} " \
               f"{fmt_db(first['output_sqnr_db'])} dB"
        if first.get("gain_db") is not None:
            head += f" (+{fmt_db(first['gain_db'])} dB)"
        return head


class PerLayerResult(ResultRows):
    """``Comparison.per_layer`` (``compare(..., per_layer=True)``): one row per layer in execution order
    (``layer``, ``type``, ``formats``, ``accumulated_sqnr_db``, ``added_sqnr_db``, ``calls``, ``numel``;
    :mod:`qsim_hooks.propagation` says how they are measured), and ``notes``: the layers left out, and why."""

    what = "layers"

    def __init__(self, rows: Iterable[Mapping[str, Any]] = (), notes: Iterable[str] = ()) -> None:
        super().__init__(dict(r) for r in rows)
        self.notes = list(notes)

    def table(self, **options: Any) -> FittedTable:
        return report_propagation.propagation_table(self, notes=self.notes, **options)

    def summary(self) -> str:
        return report_propagation.propagation_summary(self)
