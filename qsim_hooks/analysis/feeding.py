"""How the analyses run a model: which batches, in which mode, and which tensor of the output they compare.

Shared by every experiment of :mod:`qsim_hooks.analysis`; batches are fed by
:func:`qsim_hooks.batches.default_forward` unless the caller gives ``forward``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from ..config import QuantConfig

__all__ = ["Forward", "OutputFn", "Metric", "first_tensor", "batch_list", "eval_no_grad", "model_outputs",
           "check_model_cfg"]

Forward = Callable[[nn.Module, Any], Any]
OutputFn = Callable[[Any], Tensor]
Metric = Callable[[nn.Module, Sequence[Any]], float]


def _find_tensor(out: Any) -> Tensor | None:
    if isinstance(out, Tensor):
        return out
    if isinstance(out, Mapping):  # dicts and Hugging Face ModelOutput (its non-None fields, in order)
        items: Iterable[Any] = out.values()
    elif isinstance(out, (tuple, list)):
        items = out
    else:
        return None
    for item in items:
        t = _find_tensor(item)
        if t is not None:
            return t
    return None


def first_tensor(out: Any) -> Tensor:
    """The output itself when it is a tensor, else the first tensor found depth-first.

    Raises:
        TypeError: when the output holds no tensor (pass ``output=fn`` to pick one).
    """
    t = _find_tensor(out)
    if t is None:
        raise TypeError(f"the model's output ({type(out).__name__}) holds no tensor to compare; "
                        "pass output=fn, a function from the output to the tensor to compare")
    return t


def batch_list(batch: Any, batches: Iterable[Any] | None) -> list[Any]:
    """The batches of a call that takes ``batch=`` (one) or ``batches=`` (several), checked."""
    if batches is not None:
        if batch is not None:
            raise TypeError("pass either batch= (one batch) or batches= (several), not both")
        if isinstance(batches, Tensor):
            raise TypeError("batches= must be an iterable of batches (a list); "
                            "for one tensor batch pass batch=")
        out = list(batches)
        if not out:
            raise ValueError("batches= is empty: give at least one batch")
        return out
    if batch is None:
        raise TypeError("no input: pass batch= (one batch) or batches= (several)")
    return [batch]


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


def model_outputs(model: nn.Module, batches: Sequence[Any], forward: Forward, output: OutputFn) -> list[Tensor]:
    """The compared tensor of each batch's output, detached."""
    outs = []
    for b in batches:
        t = output(forward(model, b))
        if not isinstance(t, Tensor):
            raise TypeError(f"output= must return a torch.Tensor, got {type(t).__name__}")
        outs.append(t.detach())
    return outs


def check_model_cfg(model: Any, cfg: Any) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(cfg, QuantConfig):
        raise TypeError(f"cfg must be a qsim_hooks.QuantConfig, got {type(cfg).__name__}")
