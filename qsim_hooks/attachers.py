"""Attach dispatch: how each kind of point is installed on a model, one row per kind (:data:`ATTACHERS`).

The session (:mod:`qsim_hooks.session`) makes the points and hands each module's points of one kind to
that kind's row; the row's function installs them and returns what removes them, which the session
pushes onto its undo stack. A new kind of point is one row here (and its name in
``planning.POINT_KINDS``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from torch import nn

from . import activations, attention, distributed, offload, weights
from .planning import POINT_KINDS
from .points import QuantPoint
from .undo import Removable, UndoStack

__all__ = ["ATTACHERS", "Key", "PointKind", "Site"]

Key = tuple[str, str, str]


@dataclass(frozen=True)
class Site:
    """Where one kind of point attaches: one module, its points of that kind, and all the session's points.

    ``points`` is keyed by the weight's name (weights), the role (input, output)
    or the point's name (attention).
    """

    name: str
    module: nn.Module
    points: Mapping[str, QuantPoint]
    session_points: Mapping[Key, QuantPoint]


@dataclass(frozen=True)
class PointKind:
    """How the points of one kind attach.

    Attributes:
        attach: installs one site's points and returns what removes them.
        also: names of plan modules that need a site of this kind although they
            have no points of it (a module applying a child layer functionally).
        after: run once on the model after every site of this kind (and undone with them).
    """

    attach: Callable[[Site], Removable]
    also: Callable[[Mapping[str, nn.Module], Mapping[Key, QuantPoint]], Iterable[str]] | None = None
    after: Callable[[nn.Module], Removable] | None = None


def _attach_weights(site: Site) -> UndoStack:
    stack = UndoStack()
    with stack.all_or_nothing():
        for tensor, point in site.points.items():
            stack.push(weights.attach_weight(site.module, tensor, point))
    return stack


def _after_weights(model: nn.Module) -> UndoStack:
    """Once all weights are parametrized: accelerate's offload maps and FSDP2's records learn the new names."""
    stack = UndoStack()
    with stack.all_or_nothing():
        stack.push(offload.wrap_offload_maps(model))
        stack.push(distributed.follow_fsdp(model))
    return stack


def _attach_attention(site: Site) -> UndoStack:
    borrowed = attention.borrowed_points(site.module, site.name, site.session_points)
    return attention.attach_attention(site.module, site.name, site.points, borrowed)


#: point kind -> how it attaches; the one place a new kind of point is added. Sites attach kind by kind in
#: this order (per module: input hook, output hook, then the attention scope's hooks, as before).
ATTACHERS: dict[str, PointKind] = {
    # offloading hooks and FSDP2 look weights up by name: they learn the parametrized names once all are attached
    "weight": PointKind(_attach_weights, after=_after_weights),
    "input": PointKind(lambda s: activations.attach_input(s.module, s.points["input"])),
    "output": PointKind(lambda s: activations.attach_output(s.module, s.points["output"])),
    "attention": PointKind(_attach_attention, also=attention.borrowing_modules),
}
assert tuple(ATTACHERS) == POINT_KINDS
