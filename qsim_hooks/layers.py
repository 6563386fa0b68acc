"""The layer registry: which module types are instrumented like Linear/Conv, and how.

A :class:`LayerSpec` says which of a layer type's tensors are weights and
along which axes they and the layer's activations are scaled. Three tables are
searched, most specific first: a config's own ``QuantConfig(layers=...)``,
what :func:`register_layer` added for the process, and :data:`DEFAULT_LAYERS`
(torch's Linear, MultiheadAttention's in-projections, convolutions and
transposed convolutions). A type matches its subclasses too, and the match is
on the type before parametrizations. New layouts (transformers' ``Conv1D``, a
mixture-of-experts weight) are one more entry here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import partial

from torch import nn
from torch.nn.utils import parametrize

from .undo import Undo

__all__ = ["LayerSpec", "register_layer", "DEFAULT_LAYERS", "lookup"]


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
    """

    weights: tuple[str, ...] = ("weight",)
    weight_channel_axis: int = 0
    weight_reduction_axis: int = 1
    activation_axis: int = -1

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
_registered: dict[type, LayerSpec] = {}


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
    """The spec of ``module``'s type (before parametrizations; nearest base class first in each table)."""
    t = parametrize.type_before_parametrizations(module)
    for table in (extra or {}, _registered, DEFAULT_LAYERS):
        for base in t.__mro__:
            if base in table:
                return table[base]
    return None
