"""The undo stack: one type for everything a session, a calibration or a capture installs.

Whatever qsim-hooks puts on a user's model (a forward hook, a parametrization,
an attribute swapped on an accelerate hook, an observer set on a point for the
length of a calibration) is pushed onto an :class:`UndoStack` as it is
installed. Closing the stack undoes everything in reverse order, keeps going
past an error and re-raises the first one (the others are attached to it as
notes): ``contextlib.ExitStack``'s order with the error rule a user's model
needs, since stopping half-way would leave it modified. A stack is itself
removable, so stacks nest: a calibration pushes a child stack onto the
session's stack, closes it when done, and a session detached first closes it
with everything else.

Every push returns an :class:`Undo`: a handle whose ``remove()`` runs the undo
once (a second call does nothing) and that is also a context manager, like
``torch.utils.hooks.RemovableHandle``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Protocol, runtime_checkable

__all__ = ["Removable", "Undo", "UndoStack", "MISSING"]


@runtime_checkable
class Removable(Protocol):
    """Anything with ``remove()``: a torch ``RemovableHandle``, an :class:`Undo`, an :class:`UndoStack`."""

    def remove(self) -> None: ...


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


#: what :meth:`UndoStack.setattr` records for an attribute the object did not have
MISSING: Any = _Missing()


class Undo:
    """One undo action. ``remove()`` runs it once; later calls do nothing. A context manager."""

    __slots__ = ("_fn", "_stack")

    def __init__(self, fn: Callable[[], Any], stack: UndoStack | None = None) -> None:
        self._fn: Callable[[], Any] | None = fn
        self._stack = stack

    @property
    def removed(self) -> bool:
        return self._fn is None

    def remove(self) -> None:
        fn, self._fn = self._fn, None
        stack, self._stack = self._stack, None
        if stack is not None:
            stack._forget(self)
        if fn is not None:
            fn()

    def __enter__(self) -> Undo:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.remove()

    def __repr__(self) -> str:
        return f"<Undo {'removed' if self.removed else 'pending'}>"


class UndoStack:
    """Undo actions, undone in reverse order by :meth:`close` (also ``remove()`` and ``with``-exit).

    A closed stack is empty and can be pushed onto again.
    """

    def __init__(self) -> None:
        self._items: dict[int, Undo] = {}  # insertion-ordered; O(1) removal of an item removed on its own
        self._entry: Undo | None = None  # this stack's item in its parent (see child())

    # -- pushing ----------------------------------------------------------
    def push(self, undo: Removable | Callable[[], Any]) -> Undo:
        """Push a removable handle (its ``remove()`` undoes it) or a callable (called to undo)."""
        if isinstance(undo, Removable):
            fn = undo.remove
        elif callable(undo):
            fn = undo
        else:
            raise TypeError(f"UndoStack.push: expected a callable or an object with remove(), got "
                            f"{type(undo).__name__}")
        item = Undo(fn, self)
        self._items[id(item)] = item
        return item

    def callback(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Undo:
        """Push ``fn(*args, **kwargs)`` as an undo action."""
        return self.push(lambda: fn(*args, **kwargs))

    def setattr(self, obj: Any, name: str, value: Any) -> Undo:
        """Set ``obj.<name> = value`` now; the undo puts the old value back (or deletes the attribute)."""
        old = getattr(obj, name, MISSING)
        setattr(obj, name, value)
        return self.push(lambda: _restore(obj, name, old))

    def child(self) -> UndoStack:
        """A new stack pushed onto this one as one item: closed with this one, or on its own before."""
        sub = UndoStack()
        sub._entry = self.push(sub._unwind)
        return sub

    # -- undoing ----------------------------------------------------------
    def close(self) -> None:
        """Undo everything in reverse order; keep going after an error, then raise the first one."""
        entry, self._entry = self._entry, None
        if entry is not None and not entry.removed:
            entry.remove()  # leaves the parent, then unwinds this stack
        else:
            self._unwind()

    remove = close  # a stack is a removable handle too

    @contextmanager
    def all_or_nothing(self) -> Iterator[UndoStack]:
        """Undo what the block pushed onto this stack if the block raises (a half-done attach rolls back)."""
        before = set(self._items)
        try:
            yield self
        except BaseException as exc:
            try:
                _undo_all([u for k, u in reversed(self._items.items()) if k not in before])
            except BaseException as undo_exc:  # the block's error is the one to see
                _note(exc, f"rolling back also raised: {type(undo_exc).__name__}: {undo_exc}")
            raise

    def __enter__(self) -> UndoStack:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"<UndoStack: {len(self._items)} pending>"

    def _forget(self, item: Undo) -> None:
        self._items.pop(id(item), None)

    def _unwind(self) -> None:
        _undo_all(list(reversed(self._items.values())))


def _undo_all(items: list[Undo]) -> None:
    errors: list[BaseException] = []
    for item in items:
        try:
            item.remove()
        except BaseException as exc:  # keep undoing: a half-undone model is the worst outcome
            errors.append(exc)
    if errors:
        first = errors[0]
        for other in errors[1:]:
            _note(first, f"also raised while undoing: {type(other).__name__}: {other}")
        raise first


def _note(exc: BaseException, text: str) -> None:
    if hasattr(exc, "add_note"):  # Python >= 3.11
        exc.add_note(text)


def _restore(obj: Any, name: str, old: Any) -> None:
    if old is MISSING:
        if hasattr(obj, name):
            delattr(obj, name)
    else:
        setattr(obj, name, old)
