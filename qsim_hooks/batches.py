"""How a batch is fed to a model: one rule shared by calibration, comparison and the CLI.

``forward(model, batch)`` is INT-FP-QSim's ``batch_process_func``; when none is
given, :func:`default_forward` feeds ``model(**batch)`` for a mapping,
``model(*batch)`` for a tuple or list, and ``model(batch)`` otherwise.
:func:`feed` runs one batch that way and, when the default feeding does not fit
the model's ``forward`` (a DataLoader of ``(images, labels)`` fed as
``model(images, labels)``), raises a ``TypeError`` that says how to fix it,
chained to the model's own. ``forward_loop(model)`` (ModelOpt's habit) is the
other way to give data: a function that runs the model itself;
:func:`run_forward_loop` calls it and counts (and hands on) the model's outputs.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["eval_no_grad", "default_forward", "ForwardFn", "ForwardLoop", "feed", "feeding_hint", "run_forward_loop",
           "check_devices"]

ForwardFn = Callable[[nn.Module, Any], Any]
#: ``forward_loop(model)``: runs the model on the data itself (its return value is not used)
ForwardLoop = Callable[[nn.Module], Any]


def default_forward(model: nn.Module, batch: Any) -> Any:
    """``model(**batch)`` for a mapping, ``model(*batch)`` for a tuple or list, else ``model(batch)``."""
    if isinstance(batch, Mapping):
        return model(**batch)
    if isinstance(batch, (tuple, list)):
        return model(*batch)
    return model(batch)


def _describe(v: Any) -> str:
    if isinstance(v, Tensor):
        return f"Tensor{list(v.shape)}"
    return type(v).__name__


def feeding_hint(model: nn.Module, batch: Any) -> str | None:
    """Why :func:`default_forward` cannot call ``model`` with ``batch`` and what to pass instead; ``None`` when
    the call fits ``model.forward``'s signature (the error came from inside the model)."""
    if isinstance(batch, Mapping):
        args: tuple[Any, ...] = ()
        kwargs = dict(batch)
        how = f"model(**batch) (a mapping with keys {list(batch)[:6]})"
        fix = f"forward=lambda m, b: m(b[{next(iter(batch))!r}])" if batch else "forward=lambda m, b: m()"
    elif isinstance(batch, (tuple, list)):
        args, kwargs = tuple(batch), {}
        how = (f"model(*batch) (a {type(batch).__name__} of {len(batch)}: "
               f"{', '.join(_describe(v) for v in batch[:4])}{', ...' if len(batch) > 4 else ''})")
        fix = "forward=lambda m, b: m(b[0]) (a DataLoader of (inputs, labels))"
    else:
        args, kwargs = (batch,), {}
        how = f"model(batch) ({_describe(batch)})"
        fix = "forward=lambda m, b: m(...) (how one batch runs the model)"
    try:
        sig = inspect.signature(model.forward)
    except (TypeError, ValueError):
        return None
    try:
        sig.bind(*args, **kwargs)
    except TypeError as exc:
        return (f"the default feeding called {how}, which does not fit {type(model).__name__}.forward{sig} "
                f"({exc}); say how a batch runs the model: {fix}, or forward_loop=fn, a function that runs the "
                "model on your data itself (fn(model))")
    return None


def _tensors(v: Any, depth: int = 0) -> Iterator[Tensor]:
    if isinstance(v, Tensor):
        yield v
    elif depth < 3 and isinstance(v, Mapping):
        for x in v.values():
            yield from _tensors(x, depth + 1)
    elif depth < 3 and isinstance(v, (tuple, list)):
        for x in v:
            yield from _tensors(x, depth + 1)


def check_devices(model: nn.Module, batch: Any) -> None:
    """Warn when every parameter of ``model`` is on one kind of device and every tensor of ``batch`` on
    another (a CUDA model fed CPU tensors, or the reverse): the model's own error, if any, says only
    ``Expected all tensors to be on the same device``. Models that move their inputs themselves (accelerate's
    hooks) are left alone."""
    kinds = {p.device.type for p in model.parameters()}
    if len(kinds) != 1 or any(hasattr(m, "_hf_hook") for m in model.modules()):
        return
    fed = {t.device.type for t in _tensors(batch)}
    if len(fed) == 1 and fed != kinds:
        have, got = kinds.pop(), fed.pop()
        warnings.warn(f"{type(model).__name__}: the model's parameters are on {have} but the batch's tensors are "
                      f"on {got}; move the data (forward=lambda m, b: m(b.to({have!r})), or .to({have!r}) in "
                      f"your loader) or the model (model.to({got!r})) first", UserWarning, stacklevel=3)


def feed(model: nn.Module, batch: Any, forward: ForwardFn | None = None) -> Any:
    """Run one batch: ``forward(model, batch)``, or :func:`default_forward` with a clear error when it does not
    fit the model (a ``TypeError`` naming the call, the signature and the fix, chained to the model's own).
    A batch on another kind of device than the model's is warned about (:func:`check_devices`)."""
    check_devices(model, batch)
    if forward is not None:
        return forward(model, batch)
    try:
        return default_forward(model, batch)
    except TypeError as exc:
        hint = feeding_hint(model, batch)
        if hint is None:
            raise
        raise TypeError(hint) from exc


def run_forward_loop(model: nn.Module, forward_loop: ForwardLoop,
                     on_output: Callable[[Any], None] | None = None) -> int:
    """Call ``forward_loop(model)``; returns how many times the model was called (its top-level forward),
    handing each output to ``on_output``. The counting hook is removed on every way out."""
    if not callable(forward_loop):
        raise TypeError(f"forward_loop must be a function that runs the model (fn(model)), got "
                        f"{type(forward_loop).__name__}")
    calls = 0

    def check(module: nn.Module, args: Any, kwargs: Any) -> None:
        if calls == 0:  # the first call says it: the loop feeds the same way every time
            check_devices(module, (args, kwargs))

    def seen(module: nn.Module, args: Any, out: Any) -> None:
        nonlocal calls
        calls += 1
        if on_output is not None:
            on_output(out)

    handles = (model.register_forward_pre_hook(check, with_kwargs=True), model.register_forward_hook(seen))
    try:
        forward_loop(model)
    finally:
        for h in handles:
            h.remove()
    return calls


@contextmanager
def eval_no_grad(model: nn.Module) -> Iterator[None]:
    """Eval mode and no autograd for the block; the training flags come back afterwards."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for m, training in flags:
            m.training = training
