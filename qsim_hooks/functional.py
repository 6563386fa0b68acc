"""Functional weights: a parameter used as a GEMM weight where no parametrization quantizes it.

A mixture-of-experts stack, a router's bare ``weight``, an embedding table used
as an output projection reach their GEMMs as the parameter itself, a view of it
(``W[e]``, ``W.transpose(-2, -1)``), or a copy made from it by indexing or a cast
(``W[expert_ids]``, ``W.float()``). :class:`ParamTracker` knows which operand came
from which parameter (views by ``_base``; copies by the interception recording
them as they are made, :meth:`ParamTracker.derive`), and :class:`FunctionalWeights`
quantizes the *root* view (the view the model took of the parameter) in the
layout the GEMM reveals, then replays the recorded copies on the result.

Layout: the GEMM names the reduction axis ``k`` and the output axis ``n`` of its
weight operand; every other axis is a stack axis (an expert). The matrices are
laid out as rows ``(stack..., n)`` of length ``k`` and quantized as a Linear
weight is: per-channel scales per row, blocks along ``k``, and a per-tensor scale
per matrix (one scale per expert, not one for the whole stack). A loop over
``W[e]`` and one ``grouped_mm`` on ``W`` thus give the same numbers. The result is
cached per root view by :class:`~qsim_hooks.weights.WeightQuantizer` (the same
cache, with the same invalidation, as parametrized weights).

Which formats apply comes from the plan: :func:`resolve_functional` resolves, with
the same rules, every module no table or shape recognises as a *candidate* (its
bare 2-D-or-more parameters as weights, its input and output for the
activation × activation GEMMs it makes) and returns those entries apart from the
plan. Their points are made when first needed.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from .config import ROLES, QuantConfig
from .layers import LayerSpec, candidates
from .planning import Plan, PlanEntry, resolve
from .points import QuantPoint
from .weights import WeightQuantizer

__all__ = ["Source", "ParamTracker", "FunctionalWeights", "COPIES", "resolve_functional"]

#: value-preserving copies a parameter's GEMM operand may be made by (indexing, casts); views need no record
COPIES: frozenset[Callable[..., Any]] = frozenset({
    Tensor.__getitem__, Tensor.index_select, torch.index_select, Tensor.contiguous, Tensor.clone, torch.clone,
    Tensor.float, Tensor.half, Tensor.bfloat16, Tensor.double, Tensor.to, Tensor.type, Tensor.type_as})


class Step(NamedTuple):
    """One recorded copy: ``func(tensor, *rest, **kwargs)``; ``dims[i]``: the input axis of output axis i
    (``None``: an axis made by gathering along the input's axis 0 or ``dim``)."""

    func: Callable[..., Any]
    rest: tuple
    kwargs: dict
    dims: tuple[int | None, ...]


class Source(NamedTuple):
    """Where a GEMM operand came from: ``param``, the view ``root`` the model took of it, and the copies."""

    param: Tensor
    root: Tensor
    steps: tuple[Step, ...]


def _index_dims(idx: Any, ndim: int) -> tuple[int | None, ...] | None:
    """The axis map of ``src[idx]`` for an index that gathers: integer tensors, with ints, slices, ``None``
    and ``...`` around them (``W[expert_ids]``, ``W[idx, :, 0]``). PyTorch applies the ints and slices
    first (a view), then the tensors: their broadcast axes (``None``: made by gathering) stand where the
    first tensor stood if the tensors are adjacent there, else in front. ``None``: not followed (a bool
    mask, a list, an index without a tensor, which makes a view)."""
    items = list(idx) if isinstance(idx, tuple) else [idx]
    tensors = [i for i in items if isinstance(i, Tensor)]
    if not tensors or any(i.is_floating_point() or i.dtype == torch.bool for i in tensors):
        return None
    if not all(isinstance(i, (Tensor, int, slice)) or i is None or i is Ellipsis for i in items) or \
            any(isinstance(i, bool) for i in items) or sum(i is Ellipsis for i in items) > 1:
        return None
    used = sum(isinstance(i, (Tensor, int, slice)) for i in items)
    if used > ndim:
        return None
    if Ellipsis in items:
        at = items.index(Ellipsis)
        items[at:at + 1] = [slice(None)] * (ndim - used)
    else:
        items += [slice(None)] * (ndim - used)
    kept: list[int | None | str] = []  # the view's axes: an input axis, None (a new axis) or "t" (a tensor's)
    d = 0
    for i in items:
        if i is None:
            kept.append(None)
            continue
        if not isinstance(i, int):
            kept.append("t" if isinstance(i, Tensor) else d)
        d += 1
    gathered = (None,) * max(t.dim() for t in tensors)
    at = [j for j, k in enumerate(kept) if k == "t"]
    rest = tuple(k for k in kept if k != "t")
    if at == list(range(at[0], at[0] + len(at))):  # adjacent: the gathered axes take their place
        return rest[:at[0]] + gathered + rest[at[0]:]  # type: ignore[return-value]
    return gathered + rest  # type: ignore[return-value]


def _dims(func: Callable[..., Any], args: tuple, kwargs: dict, src: Tensor, out: Tensor) -> tuple | None:
    """How the output axes of one copy map to its input axes (``None``: not a copy this module follows)."""
    if func is Tensor.__getitem__:
        dims = _index_dims(args[1] if len(args) > 1 else None, src.dim())
        return dims if dims is not None and len(dims) == out.dim() else None
    if func in (Tensor.index_select, torch.index_select):
        dim = args[1] if len(args) > 1 else kwargs.get("dim")
        if not isinstance(dim, int):
            return None
        dim %= src.dim()
        return tuple(None if i == dim else i for i in range(src.dim()))
    if out.dim() != src.dim() or out.shape != src.shape:
        return None
    return tuple(range(src.dim()))


class ParamTracker:
    """Which parameter each tensor came from, for the length of one forward (``clear()`` after it)."""

    def __init__(self, params: Mapping[int, Tensor]) -> None:
        self.params = params  # id -> Parameter
        self._copies: dict[int, tuple[weakref.ref, Source]] = {}

    def source(self, t: Tensor) -> Source | None:
        p = self.params.get(id(t))
        if p is not None:
            return Source(p, t, ())
        base = t._base
        if base is not None:
            p = self.params.get(id(base))
            if p is not None:
                return Source(p, t, ())
        entry = self._copies.get(id(t))
        if entry is not None and entry[0]() is t:
            return entry[1]
        return None

    def derive(self, func: Callable[..., Any], args: tuple, kwargs: dict, out: Any) -> None:
        """Record ``out = func(*args, **kwargs)`` if ``args[0]`` came from a parameter and the copy is followed."""
        src = args[0] if args else None
        if not isinstance(src, Tensor) or not isinstance(out, Tensor) or out is src:
            return
        s = self.source(src)
        if s is None:
            return
        dims = _dims(func, args, kwargs, src, out)
        if dims is not None:
            self._copies[id(out)] = (weakref.ref(out), Source(s.param, s.root, s.steps + (Step(func, args[1:], kwargs,
                                                                                                 dims),)))

    def clear(self) -> None:
        self._copies.clear()


def _scaled_per_tensor(fmt: Any) -> bool:
    sc = getattr(fmt, "scaling", None)
    return sc is not None and sc.granularity == "tensor"


class _Layout:
    """A weight point seen through one layout: what :class:`WeightQuantizer` calls on the root view."""

    def __init__(self, point: QuantPoint, k: int, n: int | None) -> None:
        self.point, self.k, self.n = point, k, n

    format = property(lambda self: self.point.format)
    observer = property(lambda self: self.point.observer)
    version = property(lambda self: self.point.version)

    def describe(self) -> str:
        return self.point.describe()

    def __call__(self, w: Tensor) -> Tensor:
        k, n = self.k, self.n
        stack = [d for d in range(w.dim()) if d != k and d != n]
        perm = stack + ([n] if n is not None else []) + [k]
        c = w.permute(perm)
        per_matrix = bool(stack) and _scaled_per_tensor(self.point.format)
        if per_matrix:  # one row per matrix: a per-tensor scale becomes one per expert
            q = self.point(c.reshape(math.prod(c.shape[:len(stack)]), -1), rows=True)
        else:
            q = self.point(c.reshape(-1, c.shape[-1]))
        inverse = [perm.index(i) for i in range(w.dim())]
        q = q.reshape(c.shape).permute(inverse)
        if q.stride() != w.stride():  # the layout the model's GEMM was given (the same kernel, the same sums)
            q = torch.empty_like(w, memory_format=torch.preserve_format).copy_(q)
        return q


class FunctionalWeights:
    """Quantized operands for weights used functionally, one cache per (parameter, root view, layout)."""

    def __init__(self) -> None:
        self._quantizers: dict[tuple, WeightQuantizer] = {}

    def quantize(self, point: QuantPoint, src: Source, k: int, n: int | None) -> Tensor | None:
        """The operand ``src`` stands for, from its quantized root; ``None`` when the layout is not one of a
        weight (the reduction or output axis was made by gathering)."""
        for step in reversed(src.steps):
            k2 = step.dims[k]
            n2 = step.dims[n] if n is not None else None
            if k2 is None or (n is not None and n2 is None):
                return None
            k, n = k2, n2
        root = src.root
        key = (id(src.param), root.storage_offset(), tuple(root.shape), tuple(root.stride()), k, n, id(point))
        wq = self._quantizers.get(key)
        if wq is None:
            wq = self._quantizers[key] = WeightQuantizer(_Layout(point, k, n))  # type: ignore[arg-type]
        q = wq.forward(root)
        for step in src.steps:
            q = step.func(q, *step.rest, **step.kwargs)
        return q

    def clear(self) -> None:
        for wq in self._quantizers.values():
            wq._cache = None
        self._quantizers.clear()


def resolve_functional(model: nn.Module, cfg: QuantConfig) -> tuple[Plan, tuple[PlanEntry, ...]]:
    """The plan of ``model`` under ``cfg``, and apart from it the entries of its functional candidates.

    One resolve, so rules treat candidates as the plan's modules (a rule that matches only a candidate
    is used). Modules a rule lists in ``types`` keep their meaning (only what the rule sets).
    """
    lazy: set[int] = set()

    def candidate(m: nn.Module) -> LayerSpec | None:  # called by resolve, after it has checked its arguments
        rule_types = tuple(t for r in cfg.rules for t in r.types)  # type: ignore[union-attr]
        if rule_types and issubclass(parametrize.type_before_parametrizations(m), rule_types):
            return None
        lazy.add(id(m))
        return LayerSpec(tuple(n for n, p in m._parameters.items() if p is not None and p.is_floating_point()
                               and p.dim() >= 2), functional=True)

    with candidates(candidate):
        full = resolve(model, cfg)
    named = dict(model.named_modules(remove_duplicate=False))
    plan: list[PlanEntry] = []
    extra: list[PlanEntry] = []
    for e in full:
        (extra if e.point in ROLES and id(named[e.module]) in lazy else plan).append(e)
    return Plan(tuple(plan)), tuple(extra)
