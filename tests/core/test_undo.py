"""The undo stack: reverse order, keep going past errors, the first error re-raised, idempotent handles,
child stacks, rollback of a half-done block, attribute restore."""

import sys

import pytest
import torch
from torch import nn

from qsim_hooks.undo import Removable, Undo, UndoStack


def test_undone_in_reverse_order_and_each_once():
    log = []
    stack = UndoStack()
    for i in range(3):
        stack.callback(log.append, i)
    assert len(stack) == 3
    stack.close()
    assert log == [2, 1, 0] and len(stack) == 0
    stack.close()  # twice: nothing more
    assert log == [2, 1, 0]


def test_push_takes_removable_handles_and_callables():
    m = nn.Linear(2, 2)
    stack = UndoStack()
    h = stack.push(m.register_forward_pre_hook(lambda mod, a: None))  # a torch RemovableHandle
    assert isinstance(h, Undo) and isinstance(h, Removable) and len(m._forward_pre_hooks) == 1
    called = []
    stack.push(lambda: called.append(1))
    with pytest.raises(TypeError, match="callable or an object with remove"):
        stack.push(3)
    stack.close()
    assert not m._forward_pre_hooks and called == [1]


def test_an_error_does_not_stop_the_rest_and_the_first_one_is_raised():
    log = []
    stack = UndoStack()

    def fail(msg):
        log.append(msg)
        raise RuntimeError(msg)

    stack.callback(log.append, "a")
    stack.callback(fail, "first-pushed")
    stack.callback(log.append, "b")
    stack.callback(fail, "last-pushed")
    with pytest.raises(RuntimeError, match="last-pushed") as info:  # undone first, so raised
        stack.close()
    assert log == ["last-pushed", "b", "first-pushed", "a"]
    if sys.version_info >= (3, 11):  # exception notes
        assert any("first-pushed" in n for n in info.value.__notes__)
    assert len(stack) == 0


def test_a_handle_removed_early_leaves_the_stack_and_runs_once():
    log = []
    stack = UndoStack()
    stack.callback(log.append, 0)
    h = stack.callback(log.append, 1)
    with h:
        pass  # a context manager: removed on exit
    h.remove()
    assert log == [1] and h.removed and len(stack) == 1
    stack.close()
    assert log == [1, 0]


def test_child_stack_closes_with_its_parent_or_on_its_own():
    log = []
    parent = UndoStack()
    parent.callback(log.append, "parent")
    child = parent.child()
    child.callback(log.append, "child")
    parent.close()
    assert log == ["child", "parent"]
    log.clear()
    child = parent.child()
    child.callback(log.append, "child-2")
    child.close()  # on its own: it also leaves the parent
    assert log == ["child-2"] and len(parent) == 0
    parent.close()
    assert log == ["child-2"]


def test_all_or_nothing_rolls_back_only_what_the_block_pushed():
    log = []
    stack = UndoStack()
    stack.callback(log.append, "before")
    with pytest.raises(KeyError, match="boom"):
        with stack.all_or_nothing():
            stack.callback(log.append, "in-1")
            stack.callback(log.append, "in-2")
            raise KeyError("boom")
    assert log == ["in-2", "in-1"] and len(stack) == 1
    with stack.all_or_nothing():
        stack.callback(log.append, "kept")
    assert len(stack) == 2


def test_rollback_error_does_not_hide_the_blocks_error():
    stack = UndoStack()
    with pytest.raises(KeyError, match="the block's") as info:
        with stack.all_or_nothing():
            stack.callback(lambda: (_ for _ in ()).throw(RuntimeError("undo failed")))
            raise KeyError("the block's")
    if sys.version_info >= (3, 11):  # exception notes
        assert any("undo failed" in n for n in info.value.__notes__)


def test_setattr_restores_the_old_value_or_deletes_a_new_attribute():
    class Obj:
        pass

    o = Obj()
    o.a = 1
    stack = UndoStack()
    stack.setattr(o, "a", 2)
    stack.setattr(o, "b", torch.ones(1))
    assert o.a == 2 and hasattr(o, "b")
    stack.close()
    assert o.a == 1 and not hasattr(o, "b")


def test_a_stack_is_removable_and_a_context_manager():
    log = []
    with UndoStack() as stack:
        stack.callback(log.append, 1)
    assert log == [1]
    s2 = UndoStack()
    s2.callback(log.append, 2)
    assert isinstance(s2, Removable)
    s2.remove()
    s2.remove()
    assert log == [1, 2]
