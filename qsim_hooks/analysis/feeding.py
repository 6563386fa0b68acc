"""How the analyses run a model: which batches, in which mode, and which tensor of the output they compare.

Shared by every experiment of :mod:`qsim_hooks.analysis`. The data is a :class:`Feed`: batches (fed by
:func:`qsim_hooks.batches.feed`, ``forward(model, batch)`` when the caller gives one) or a
``forward_loop(model)`` that runs the model itself (the outputs are then the model's top-level outputs, in
call order: the function must feed the same data every time it is called).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from ..batches import ForwardLoop, eval_no_grad, feed, run_forward_loop
from ..config import QuantConfig
from ..progress import steps, track

__all__ = ["Forward", "OutputFn", "Metric", "first_tensor", "batch_list", "eval_no_grad", "model_outputs",
           "check_model_cfg", "Feed", "make_feed"]

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


@dataclass(frozen=True)
class Feed:
    """The data of one analysis: ``batches`` (with ``forward``, or the default feeding), or ``forward_loop``."""

    batches: list[Any] | None
    forward: Forward | None = None
    forward_loop: ForwardLoop | None = None

    @property
    def count(self) -> int | None:
        return None if self.batches is None else len(self.batches)

    def run(self, model: nn.Module, *, on_output: Callable[[Any], None] | None = None,
            progress: bool | None = None, label: str = "batches") -> int:
        """Run the model on the data, handing each output to ``on_output``; returns how many runs there were."""
        if self.forward_loop is not None:
            with steps(label, enabled=progress) as advance:
                def seen(out: Any) -> None:
                    advance()
                    if on_output is not None:
                        on_output(out)
                n = run_forward_loop(model, self.forward_loop, seen)
            if n == 0:
                raise ValueError("forward_loop(model) never called the model: it must run the model on the data")
            return n
        assert self.batches is not None
        show = progress if progress is not None or len(self.batches) > 1 else False
        with track(self.batches, label, enabled=show) as each:
            for b in each:
                out = feed(model, b, self.forward)
                if on_output is not None:
                    on_output(out)
        return len(self.batches)


def make_feed(batch: Any, batches: Iterable[Any] | None, forward: Forward | None,
              forward_loop: ForwardLoop | None) -> Feed:
    """The :class:`Feed` of a call that takes ``batch=``, ``batches=`` or ``forward_loop=`` (one of them)."""
    if forward_loop is not None:
        if batch is not None or batches is not None:
            raise TypeError("pass either forward_loop= (a function that runs the model) or batch=/batches=, not both")
        if forward is not None:
            raise TypeError("forward= says how a batch is fed; with forward_loop= there are no batches: drop one")
        if not callable(forward_loop):
            raise TypeError(f"forward_loop must be a function fn(model) that runs the model, got "
                            f"{type(forward_loop).__name__}")
        return Feed(None, None, forward_loop)
    return Feed(batch_list(batch, batches), forward)


def model_outputs(model: nn.Module, data: Feed, output: OutputFn, *, progress: bool | None = None,
                  label: str = "batches") -> list[Tensor]:
    """The compared tensor of each output of the model on ``data``, detached."""
    outs: list[Tensor] = []

    def keep(out: Any) -> None:
        t = output(out)
        if not isinstance(t, Tensor):
            raise TypeError(f"output= must return a torch.Tensor, got {type(t).__name__}")
        outs.append(t.detach())

    data.run(model, on_output=keep, progress=progress, label=label)
    return outs


def check_model_cfg(model: Any, cfg: Any) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(cfg, QuantConfig):
        raise TypeError(f"cfg must be a qsim_hooks.QuantConfig, got {type(cfg).__name__}")
