"""The active-session record an instrumented module carries, and the claim that refuses nesting.

A module an attached session instruments carries a record of that session in its ``__dict__`` (pushed onto
the session's undo stack), so attaching a second session to it can be refused even when the first
session's object was dropped: the record lives on the model. ``copy.deepcopy`` of an instrumented module
is refused (the copy would share the session's hooks and parametrized class, and break when the session
removes them); a pickled copy carries a record without a session: the copy's hooks are the original
session's, and only that session removes them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from .undo import UndoStack
from .weights import WeightQuantizer

__all__ = ["claim", "record_of", "RECORD"]

RECORD = "_qsim_hooks_session"  # the attribute an instrumented module carries while attached


class _Record:
    """What an instrumented module carries: its session (and its name in the session's model)."""

    __slots__ = ("session", "label")

    def __init__(self, session: Any | None, label: str = "?") -> None:
        self.session = session
        self.label = label

    def __deepcopy__(self, memo: dict) -> _Record:
        raise RuntimeError(f"copy.deepcopy: module {self.label!r} is instrumented by an attached qsim_hooks "
                           "session; a copy would share its hooks and parametrized class and break when the session "
                           "exits. Copy the model before attaching or after the with-block (or .detach() first)")

    def __reduce__(self) -> tuple:
        return (_Record, (None,))


def record_of(m: nn.Module) -> _Record | None:
    r = m.__dict__.get(RECORD)
    return r if isinstance(r, _Record) else None


def claim(modules: Mapping[str, nn.Module], session: Any, undo: UndoStack) -> None:
    """Refuse modules another session instruments, then mark every one of them for ``session``."""
    for name, m in modules.items():
        label = name or "<model>"
        r = record_of(m)
        if r is not None and r.session is not None:
            raise RuntimeError(
                f"module {label!r} is already instrumented by an attached qsim_hooks session; leave its "
                "with-block or call .detach() on it (qsim_hooks.detach(model) finds it if the session "
                "object was not kept) before attaching another")
        if r is not None or _has_our_parametrization(m):
            raise RuntimeError(f"module {label!r} carries qsim_hooks instrumentation copied from another "
                               "session (a copy of an instrumented model?); copy the model outside the with-block")
    for name, m in modules.items():
        record = _Record(session, name or "<model>")
        m.__dict__[RECORD] = record
        undo.callback(_unmark, m, record)


def _unmark(m: nn.Module, record: _Record) -> None:
    if m.__dict__.get(RECORD) is record:
        del m.__dict__[RECORD]


def _has_our_parametrization(m: nn.Module) -> bool:
    plists = getattr(m, "parametrizations", None)
    if plists is None:
        return False
    return any(isinstance(p, WeightQuantizer) for pl in plists.values() for p in pl)
