"""What a configuration costs: weight storage in bits, or bit-operations, counted exactly from the plan.

Two cost models and a user's own:

* ``"bits"``: the parameter-weighted average storage of the weights of every registered layer (ModelOpt's
  *effective bits*): each weight tensor costs its element bits times its elements plus its scales (a block
  format's block scales, counted per block from the tensor's shape, ragged last blocks included; NVFP4's
  fp32 tensor scale; an integer's or scaled float's fp32 scale per tensor, channel or block); a weight left
  in full precision costs its dtype's bits. For shapes that split evenly into blocks this is
  ``fmt.info.bits_per_value`` per element (MXFP4 4.25, NVFP4 4.5 plus 32 bits per tensor).
* ``"bitops"``: per layer, multiply-accumulates x weight element bits x input element bits, summed and
  divided by the model's multiply-accumulates (so 64 means "as if every MAC were 8 x 8 bits"). MACs are
  counted from the shapes a forward saw: Linear (output elements x in_features), Conv (output elements x
  in_channels / groups x kernel elements), ConvTranspose (input elements x out_channels / groups x kernel
  elements); attention's activation-by-activation matmuls are not counted.
* a function ``cost(layer: LayerCost) -> float``, summed over the layers.

Costs are kept as exact integers (or fractions), so "cost <= budget" is decided without rounding: the
budget is a float, a float is a fraction, and the comparison is between fractions.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from torch import Tensor, nn
from torch.nn.utils import parametrize

from ..formats import Format
from ..planning import Plan

__all__ = ["LayerCost", "CostModel", "cost_model", "weight_bits", "macs_of", "MacCounter", "layer_costs",
           "COST_MODELS"]

COST_MODELS = ("bits", "bitops")
Number = int | Fraction
_FP32_SCALE_BITS = 32  # an integer's (or scaled float's) scale, and NVFP4's tensor level, are fp32


@dataclass(frozen=True)
class LayerCost:
    """One layer as a cost model sees it under one configuration.

    Attributes:
        module: the module's name; ``type``: its class name.
        input: its input format (``None``: full precision); ``weight``: its weight format.
        weights: ``(tensor name, shape, dtype bits, format)`` of each weight tensor the plan lists.
        macs: multiply-accumulates counted in the forward (``None``: not counted: unknown layer type, or
            no forward was run).
        input_bits: the bits of the input dtype the forward saw (``None``: not seen).
    """

    module: str
    type: str
    input: Format | None
    weight: Format | None
    weights: tuple[tuple[str, tuple[int, ...], int, Format | None], ...] = ()
    macs: int | None = None
    input_bits: int | None = None

    @property
    def numel(self) -> int:
        return sum(math.prod(shape) for _, shape, _, _ in self.weights)


def _groups(scaling: Any, shape: tuple[int, ...]) -> int:
    """How many scales a tensor of ``shape`` has under ``scaling`` (tensor, channel, or block)."""
    numel = math.prod(shape)
    if scaling.granularity == "tensor" or not shape:
        return 1
    axis = scaling.resolved_axis % len(shape)
    length = shape[axis]
    if scaling.granularity == "channel":
        return length
    return (numel // length if length else 0) * -(-length // scaling.block_size)


def _element_bits(fmt: Format, who: str) -> int:
    bits = fmt.info.bits
    if bits is None:
        raise ValueError(f"{who}: format {fmt.name!r} has no known bit width (a callable format?), so its cost "
                         "cannot be counted; pass cost=fn, a function of a LayerCost")
    return int(bits)


def weight_bits(fmt: Format | None, shape: tuple[int, ...], dtype_bits: int, who: str = "weight") -> int:
    """The storage of one weight tensor of ``shape`` in ``fmt``, in bits, scales included (see module doc)."""
    numel = math.prod(shape)
    if fmt is None:
        return numel * dtype_bits
    bits = numel * _element_bits(fmt, who)
    scaling = getattr(fmt, "scaling", None)
    if scaling is None:
        return bits  # a cast: no scale
    scale_bits = int(getattr(fmt, "scale_bits", _FP32_SCALE_BITS))
    bits += _groups(scaling, shape) * scale_bits
    if getattr(fmt, "tensor_scale", False):
        bits += _FP32_SCALE_BITS
    return bits


# ---------------------------------------------------------------------------
# multiply-accumulates, from the shapes of a forward
# ---------------------------------------------------------------------------
def _first_tensor(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> Tensor | None:
    for v in (*args, *kwargs.values()):
        if isinstance(v, Tensor):
            return v
    return None


def _linear_macs(m: nn.Linear, x: Tensor | None, out: Tensor) -> int:
    return out.numel() * m.in_features


def _conv_macs(m: nn.modules.conv._ConvNd, x: Tensor | None, out: Tensor) -> int:
    return out.numel() * (m.in_channels // m.groups) * math.prod(m.kernel_size)


def _conv_transpose_macs(m: nn.modules.conv._ConvTransposeNd, x: Tensor | None, out: Tensor) -> int:
    if x is None:
        raise ValueError(f"{type(m).__name__}: its input was not seen, so its MACs cannot be counted")
    return x.numel() * (m.out_channels // m.groups) * math.prod(m.kernel_size)


#: layer type -> MACs of one call from (module, input, output); subclasses match (the first listed wins)
_MAC_COUNTERS: tuple[tuple[type, Callable[[Any, Tensor | None, Tensor], int]], ...] = (
    (nn.Linear, _linear_macs),
    (nn.modules.conv._ConvTransposeNd, _conv_transpose_macs),
    (nn.modules.conv._ConvNd, _conv_macs),
)


def macs_of(module: nn.Module, x: Tensor | None, out: Any) -> int | None:
    """Multiply-accumulates of one call of ``module`` (``None`` for a type without a counter)."""
    t = parametrize.type_before_parametrizations(module)
    for base, fn in _MAC_COUNTERS:
        if issubclass(t, base) and isinstance(out, Tensor):
            return int(fn(module, x, out))
    return None


@dataclass
class MacCounter:
    """Forward hooks that count each module's calls, MACs and input dtype; :meth:`remove` takes them off."""

    calls: dict[str, int] = field(default_factory=dict)
    macs: dict[str, int | None] = field(default_factory=dict)
    input_bits: dict[str, int] = field(default_factory=dict)
    _handles: list[Any] = field(default_factory=list)

    @classmethod
    def attach(cls, model: nn.Module, names: Iterable[str]) -> MacCounter:
        counter = cls()
        named = dict(model.named_modules(remove_duplicate=False))
        try:
            for name in dict.fromkeys(names):
                counter.calls[name] = 0
                counter.macs[name] = 0
                counter._handles.append(named[name].register_forward_hook(counter._hook(name), with_kwargs=True))
        except BaseException:
            counter.remove()
            raise
        return counter

    def _hook(self, name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
            self.calls[name] += 1
            x = _first_tensor(args, kwargs)
            if x is not None and x.is_floating_point():
                self.input_bits.setdefault(name, x.element_size() * 8)
            n = macs_of(module, x, out)
            prev = self.macs[name]
            self.macs[name] = None if n is None or prev is None else prev + n
        return hook

    def remove(self) -> None:
        for h in reversed(self._handles):
            h.remove()
        self._handles.clear()


def layer_costs(model: nn.Module, plan: Plan, counter: MacCounter | None = None) -> dict[str, LayerCost]:
    """Every module of ``plan`` as a :class:`LayerCost` (formats from the plan, MACs from ``counter``)."""
    named = dict(model.named_modules(remove_duplicate=False))
    by_module: dict[str, dict[str, Any]] = {}
    for e in plan:
        d = by_module.setdefault(e.module, {"type": e.module_type, "input": None, "weight": None, "weights": []})
        if e.point == "input":
            d["input"] = e.format
        elif e.point == "weight":
            t = getattr(named[e.module], e.tensor)
            d["weights"].append((e.tensor, tuple(t.shape), t.element_size() * 8, e.format))
            if d["weight"] is None:
                d["weight"] = e.format
    out = {}
    for name, d in by_module.items():
        macs = counter.macs.get(name) if counter is not None else None
        bits = counter.input_bits.get(name) if counter is not None else None
        out[name] = LayerCost(name, d["type"], d["input"], d["weight"], tuple(d["weights"]), macs, bits)
    return out


# ---------------------------------------------------------------------------
# the cost models
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class CostModel:
    """A cost: each layer's exact share (:meth:`layer`), and the divisor that turns the sum into the figure.

    The configuration's cost is ``sum(layer(l) for every layer) / scale(layers)``.
    """

    name: str
    unit: str
    layer: Callable[[LayerCost], Number]
    scale: Callable[[Iterable[LayerCost]], int]

    def total(self, layers: Mapping[str, LayerCost]) -> Fraction:
        """The exact cost of a configuration given all its layers."""
        return Fraction(sum(self.layer(lc) for lc in layers.values()), self.scale(layers.values()))


def _bits_layer(lc: LayerCost) -> int:
    return sum(weight_bits(f, shape, dbits, f"module {lc.module!r} weight {tname!r}")
               for tname, shape, dbits, f in lc.weights)


def _bits_scale(layers: Iterable[LayerCost]) -> int:
    n = sum(lc.numel for lc in layers)
    if not n:
        raise ValueError("cost='bits': the model has no weights in registered layers to count")
    return n


def _bitops_layer(lc: LayerCost) -> int:
    if not lc.weights:
        return 0  # an attention module: its matmuls are not counted
    if lc.macs is None:
        raise ValueError(f"cost='bitops': module {lc.module!r} ({lc.type}) has no multiply-accumulate counter "
                         "(Linear, Conv and ConvTranspose have one) or was not run; pass cost=fn, a function "
                         "of a LayerCost")
    w = lc.weights[0]
    wbits = w[2] if lc.weight is None else _element_bits(lc.weight, f"module {lc.module!r} weight")
    abits = lc.input_bits or 32
    if lc.input is not None:
        abits = _element_bits(lc.input, f"module {lc.module!r} input")
    return lc.macs * wbits * abits


def _bitops_scale(layers: Iterable[LayerCost]) -> int:
    n = sum(lc.macs or 0 for lc in layers if lc.weights)
    if not n:
        raise ValueError("cost='bitops': no multiply-accumulate was counted (did the layers run on the data?)")
    return n


def _user_layer(fn: Callable[[LayerCost], Any]) -> Callable[[LayerCost], Fraction]:
    name = getattr(fn, "__name__", type(fn).__name__)

    def layer(lc: LayerCost) -> Fraction:
        v = fn(lc)
        try:
            f = float(v)
        except (TypeError, ValueError):
            raise TypeError(f"cost function {name}: must return a number, got {type(v).__name__} for module "
                            f"{lc.module!r}") from None
        if not math.isfinite(f):
            raise ValueError(f"cost function {name}: returned {f} for module {lc.module!r}; costs must be finite")
        return Fraction(f)
    return layer


def cost_model(cost: Any) -> CostModel:
    """``"bits"``, ``"bitops"`` or a function ``cost(layer: LayerCost) -> float`` as a :class:`CostModel`."""
    if cost == "bits":
        return CostModel("bits", "bits per weight", _bits_layer, _bits_scale)
    if cost == "bitops":
        return CostModel("bitops", "bit-ops per MAC", _bitops_layer, _bitops_scale)
    if callable(cost) and not isinstance(cost, str):
        return CostModel(getattr(cost, "__name__", "cost"), "", _user_layer(cost), lambda layers: 1)
    raise ValueError(f"cost={cost!r} is not allowed; use one of {list(COST_MODELS)} or a function "
                     "cost(layer: LayerCost) -> float")
