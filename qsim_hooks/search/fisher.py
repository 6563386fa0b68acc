"""``estimate="fisher"``: every unit's loss under every candidate from one backward pass per batch.

The approach of ModelOpt's ``auto_quantize`` (``method="gradient"``, ``AutoQuantizeGradientSearcher``:
its score is ``sum(grad_output**2 * output_diff**2)`` per layer and recipe) and of the HAWQ line of work
(second-order sensitivity): a second-order Taylor expansion of the task loss in each layer's *output*,
with the empirical Fisher standing in for the Hessian (at a trained model the first-order term averages
out). For a layer with full-precision output ``y`` and ``dy = q(y) - y`` (the layer's output with its input
and weight quantized to the candidate, computed on its full-precision input: the error the layer adds on
its own), and ``g = dL/dy`` of the batch loss ``L = mean_n loss_n``::

    dL ~ 0.5 * dy' F dy,   F = (1/N) sum_n grad(loss_n) grad(loss_n)' = N sum_n g_n g_n'
       = 0.5 * N * sum_n (g_n . dy_n)**2

with ``n`` the samples along the first axis (``N`` of them) and ``g_n``, ``dy_n`` their slices (the
per-sample empirical Fisher, cross terms within a sample kept; ModelOpt's score is its diagonal, without
the constant). A unit's estimate is the sum over its layers (and over their calls), averaged over the
batches; the search sums units (cross-unit terms dropped, as the solver's additivity needs).

Cost: per batch, one full-precision forward and backward (``torch.autograd.grad`` on the layer outputs:
no parameter's ``.grad`` is touched), then one forward per candidate with every searched layer quantized
and each layer's input replaced by its recorded full-precision input (so each output is the layer's own
error). The activations and their gradients of one batch are kept meanwhile.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..analysis.feeding import eval_no_grad
from ..config import QuantConfig
from ..progress import track
from ..session import Session

__all__ = ["fisher_losses"]

Loss = Callable[[nn.Module, Any], Any]


def _check_loss(v: Any) -> Tensor:
    if not isinstance(v, Tensor) or v.numel() != 1:
        raise TypeError(f"loss(model, batch) must return a scalar tensor (the batch's loss, with autograd), got "
                        f"{type(v).__name__}{'' if not isinstance(v, Tensor) else f' of shape {tuple(v.shape)}'}")
    if not v.requires_grad:
        raise ValueError("loss(model, batch) returned a tensor without autograd history: compute it from the "
                         "model's output inside loss (not under torch.no_grad)")
    if not math.isfinite(float(v.detach())):
        raise ValueError(f"loss(model, batch) returned {float(v.detach())}; estimate='fisher' needs a finite loss")
    return v.reshape(())


def _record(model: nn.Module, modules: Sequence[str], batch: Any, loss: Loss
            ) -> tuple[dict[str, list[tuple[tuple[Any, ...], dict[str, Any]]]], dict[str, list[Tensor]],
                       dict[str, list[Tensor]]]:
    """One full-precision forward and backward: each layer's inputs, outputs and output gradients, per call."""
    named = dict(model.named_modules())
    inputs: dict[str, list[tuple[tuple[Any, ...], dict[str, Any]]]] = {m: [] for m in modules}
    outputs: dict[str, list[Tensor]] = {m: [] for m in modules}
    zero = torch.zeros((), requires_grad=True)  # makes every output a node of the graph, frozen weights or not
    handles = []

    def hooks(name: str) -> None:
        def pre(mod: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            inputs[name].append((tuple(a.detach() if isinstance(a, Tensor) else a for a in args),
                                 {k: (v.detach() if isinstance(v, Tensor) else v) for k, v in kwargs.items()}))

        def post(mod: nn.Module, args: Any, out: Any) -> Any:
            if not isinstance(out, Tensor):
                raise TypeError(f"estimate='fisher': module {name!r} returned {type(out).__name__}, not a tensor; "
                                "use estimate='pass'")
            out = out + zero.to(out.dtype)
            outputs[name].append(out)
            return out
        handles.append(named[name].register_forward_pre_hook(pre, with_kwargs=True))
        handles.append(named[name].register_forward_hook(post))

    try:
        for m in modules:
            hooks(m)
        with torch.enable_grad():
            value = _check_loss(loss(model, batch))
            flat = [t for m in modules for t in outputs[m]]
            grads = torch.autograd.grad(value, flat, allow_unused=True)
    finally:
        for h in reversed(handles):
            h.remove()
    it = iter(grads)
    g = {m: [torch.zeros_like(t) if (gr := next(it)) is None else gr.detach() for t in outputs[m]] for m in modules}
    return inputs, {m: [t.detach() for t in ts] for m, ts in outputs.items()}, g


def _quantized_outputs(model: nn.Module, cfg: QuantConfig, modules: Sequence[str], batch: Any, loss: Loss,
                       inputs: Mapping[str, list[tuple[tuple[Any, ...], dict[str, Any]]]],
                       calibration: Any) -> dict[str, list[Tensor]]:
    """Each layer's output under ``cfg`` on its full-precision input (per call)."""
    named = dict(model.named_modules())
    outs: dict[str, list[Tensor]] = {m: [] for m in modules}
    calls = dict.fromkeys(modules, 0)
    handles = []

    def hooks(name: str) -> None:
        def pre(mod: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            i = calls[name]
            calls[name] += 1
            if i >= len(inputs[name]):
                raise RuntimeError(f"estimate='fisher': module {name!r} ran more often quantized than in full "
                                   "precision (data-dependent control flow?); use estimate='pass'")
            return inputs[name][i]

        def post(mod: nn.Module, args: Any, out: Any) -> None:
            outs[name].append(out.detach())
        handles.append(named[name].register_forward_pre_hook(pre, with_kwargs=True, prepend=True))
        handles.append(named[name].register_forward_hook(post))

    with Session(model, cfg, calibration=calibration):
        try:
            for m in modules:
                hooks(m)
            loss(model, batch)  # the model run as the loss runs it (no autograd here: the value is not used)
        finally:
            for h in reversed(handles):
                h.remove()
    return outs


def _estimate(g: Tensor, dy: Tensor) -> float:
    """``0.5 * N * sum_n (g_n . dy_n)**2`` over the first axis (see the module doc)."""
    if g.ndim == 0:
        return 0.5 * float((g.double() * dy.double()) ** 2)
    n = g.shape[0]
    per = (g.double() * dy.double()).reshape(n, -1).sum(1)
    return 0.5 * n * float((per * per).sum())


def fisher_losses(model: nn.Module, batches: Sequence[Any], loss: Loss,
                  units: Mapping[str, Sequence[str]], cfgs: Sequence[QuantConfig], calibration: Any,
                  progress: bool | None) -> list[dict[str, float]]:
    """Per config (one per candidate, every searched layer in it), each unit's estimated loss increase."""
    modules = [m for ms in units.values() for m in ms]
    totals = [dict.fromkeys(modules, 0.0) for _ in cfgs]
    with eval_no_grad(model), track(list(batches), "search: fisher estimate", enabled=progress) as each:
        for batch in each:
            inputs, ys, gs = _record(model, modules, batch, loss)
            for k, cfg in enumerate(cfgs):
                qs = _quantized_outputs(model, cfg, modules, batch, loss, inputs, calibration)
                for m in modules:
                    if len(qs[m]) != len(ys[m]):
                        raise RuntimeError(f"estimate='fisher': module {m!r} ran {len(qs[m])} times quantized and "
                                           f"{len(ys[m])} times in full precision; use estimate='pass'")
                    for y, yq, g in zip(ys[m], qs[m], gs[m]):
                        totals[k][m] += _estimate(g, yq.to(y.dtype) - y)
    nb = len(batches)
    out = []
    for t in totals:
        per_unit = {u: sum(t[m] for m in ms) / nb for u, ms in units.items()}
        bad = [u for u, v in per_unit.items() if not math.isfinite(v)]
        if bad:
            raise ValueError(f"estimate='fisher': units {bad} have a non-finite estimate (an overflow to inf in "
                             "a candidate?); use estimate='pass'")
        out.append(per_unit)
    return out
