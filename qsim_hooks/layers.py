"""The layer registry: which modules are instrumented like Linear/Conv, and how.

A :class:`LayerSpec` says which of a layer's tensors are weights and along which
axes they and the layer's activations are scaled. Tables are searched most
specific first: a config's own ``QuantConfig(layers=...)``, what
:func:`register_layer` added for the process, :data:`DEFAULT_LAYERS` (torch's
Linear, MultiheadAttention's in-projections, convolutions and transposed
convolutions) and :data:`NAMED_LAYERS` (classes of client libraries, matched by
qualified name so that none is imported: transformers' ``Conv1D``). A type
matches its subclasses too, on the type before parametrizations.

Modules no table names are recognised by what they hold (:func:`by_shape`): a
stack of weight matrices (a floating Parameter of 3 or more dims, the last two
and the first at least 2: a mixture-of-experts module's ``gate_up_proj``) or a
leaf module's 2-D ``weight`` (a router's ``F.linear(x, self.weight)``). Their
points are *functional* (``LayerSpec.functional``): applied where the weights
enter a GEMM, in the layout that GEMM reveals, never by hooks, since only the
call says which axis of a stack is reduced (``(E, out, in)`` and ``(E, in, out)``
are both in use) and a leaf that holds a matrix need not multiply by it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from functools import partial

from torch import nn
from torch.nn.utils import parametrize

from .undo import Undo

__all__ = ["LayerSpec", "register_layer", "DEFAULT_LAYERS", "NAMED_LAYERS", "lookup", "by_shape", "candidates"]


@dataclass(frozen=True)
class LayerSpec:
    """How to instrument a layer type.

    Args:
        weights: names of the weight tensors to fake-quantize.
        weight_channel_axis: output-channel axis of those weights
            (0 for Linear/Conv, 1 for ConvTranspose).
        weight_reduction_axis: the axis a dot product runs over (block formats
            run along it): 1 for Linear/Conv, 0 for ConvTranspose.
        activation_axis: the feature axis of inputs/outputs (-1 for Linear,
            1 for NCHW convolutions).
        functional: the points apply where the weights enter a GEMM (the
            interception), not by hooks and parametrizations; the axes above are
            then those of each weight matrix as its GEMM uses it, rows (output
            channels) first: a stacked weight is quantized matrix by matrix.
    """

    weights: tuple[str, ...] = ("weight",)
    weight_channel_axis: int = 0
    weight_reduction_axis: int = 1
    activation_axis: int = -1
    functional: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.weights, str):
            object.__setattr__(self, "weights", (self.weights,))
        object.__setattr__(self, "weights", tuple(self.weights))
        for w in self.weights:
            if not isinstance(w, str) or not w:
                raise TypeError(f"LayerSpec.weights must be names (str), got {w!r}")


_CONV = LayerSpec(activation_axis=1)
_CONVT = LayerSpec(weight_channel_axis=1, weight_reduction_axis=0, activation_axis=1)
#: torch's own layers (a config's ``layers`` or register_layer overrides a type)
DEFAULT_LAYERS: Mapping[type, LayerSpec] = {
    nn.Linear: LayerSpec(),
    # the bare in-projection Parameters (packed, or separate when kdim/vdim differ); out_proj is a Linear
    nn.MultiheadAttention: LayerSpec(("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight")),
    nn.Conv1d: _CONV, nn.Conv2d: _CONV, nn.Conv3d: _CONV,
    nn.ConvTranspose1d: _CONVT, nn.ConvTranspose2d: _CONVT, nn.ConvTranspose3d: _CONVT,
}
#: classes of client libraries by qualified name (``module.qualname``), matched without importing them.
#: transformers' Conv1D stores its weight (in, out) and runs ``torch.addmm(bias, x, weight)``.
NAMED_LAYERS: Mapping[str, LayerSpec] = {
    "transformers.pytorch_utils.Conv1D": LayerSpec(weight_channel_axis=1, weight_reduction_axis=0),
}
_registered: dict[type, LayerSpec] = {}
#: what :func:`lookup` answers for a module no table names and :func:`by_shape` does not recognise (a session's
#: functional candidates: see :func:`candidates`)
_candidates: ContextVar[Callable[[nn.Module], LayerSpec | None] | None] = ContextVar("qsim_hooks_candidates",
                                                                                    default=None)


def register_layer(layer_type: type, weights: str | Sequence[str] = ("weight",), *,
                   weight_channel_axis: int = 0, weight_reduction_axis: int = 1,
                   activation_axis: int = -1) -> Undo:
    """Register a module type (and its subclasses) to be instrumented like Linear/Conv, for the process.

    Returns a handle whose ``remove()`` puts back what was registered for the type before.
    """
    if not (isinstance(layer_type, type) and issubclass(layer_type, nn.Module)):
        raise TypeError(f"register_layer: layer_type must be an nn.Module subclass, got {layer_type!r}")
    spec = LayerSpec(tuple([weights] if isinstance(weights, str) else weights),
                     weight_channel_axis, weight_reduction_axis, activation_axis)
    old = _registered.get(layer_type)
    _registered[layer_type] = spec
    return Undo(partial(_unregister, layer_type, old))


def _unregister(layer_type: type, old: LayerSpec | None) -> None:
    if old is None:
        _registered.pop(layer_type, None)
    else:
        _registered[layer_type] = old


def lookup(module: nn.Module, extra: Mapping[type, LayerSpec] | None = None) -> LayerSpec | None:
    """The spec of ``module``: by type (before parametrizations; nearest base class first in each table), by
    qualified class name (:data:`NAMED_LAYERS`), then by what it holds (:func:`by_shape`)."""
    t = parametrize.type_before_parametrizations(module)
    for table in (extra or {}, _registered, DEFAULT_LAYERS):
        for base in t.__mro__:
            if base in table:
                return table[base]
    for base in t.__mro__:
        spec = NAMED_LAYERS.get(f"{base.__module__}.{base.__qualname__}")
        if spec is not None:
            return spec
    spec = by_shape(module)
    if spec is None:
        fn = _candidates.get()
        if fn is not None:
            return fn(module)
    return spec


def _is_stack(p: nn.Parameter) -> bool:
    return p.dim() >= 3 and p.shape[0] >= 2 and p.shape[-1] >= 2 and p.shape[-2] >= 2


def by_shape(module: nn.Module) -> LayerSpec | None:
    """A functional spec for a module holding weights no registered type names (``None`` otherwise).

    Stacked weights (floating Parameters of 3+ dims whose first and last two dims are at least 2: expert
    matrices ``(E, out, in)`` or ``(E, in, out)``), or else a leaf module's 2-D ``weight`` (a router).
    Embedding tables are not layers: their lookups are no GEMM (a table used as an output projection is
    still quantized there, as a functional use: see :mod:`qsim_hooks.intercept`).
    """
    if isinstance(module, (nn.Embedding, nn.EmbeddingBag)):
        return None
    params = [(n, p) for n, p in module._parameters.items() if p is not None and p.is_floating_point()]
    stacks = tuple(n for n, p in params if _is_stack(p))
    if stacks:
        return LayerSpec(stacks, functional=True)
    w = module._parameters.get("weight")
    if w is not None and w.is_floating_point() and w.dim() == 2 and next(module.children(), None) is None:
        return LayerSpec(("weight",), functional=True)
    return None


@contextmanager
def candidates(fn: Callable[[nn.Module], LayerSpec | None]) -> Iterator[None]:
    """While the block runs (in this context), :func:`lookup` answers ``fn(module)`` for modules it does not
    know: a session resolves its functional candidates (every module's formats) with the same rules."""
    token = _candidates.set(fn)
    try:
        yield
    finally:
        _candidates.reset(token)
