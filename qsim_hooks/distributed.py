"""Sharded models: weight parametrizations on DTensor parameters and on FSDP2 (``fully_shard``) modules.

Three things make a parametrization faithful and removable on a sharded model:

* **DTensor weights** (tensor parallel, or FSDP2 outside its forward): :func:`quantize_dtensor` quantizes
  the *logical* tensor (``full_tensor()``, differentiable), then hands back a DTensor with the weight's
  own mesh and placements, so a per-tensor scale is taken over the whole tensor, a per-channel one over
  the global axis, and blocks run along the logical axis: the numbers are those of one process.
* **FSDP2's parameter swap**: FSDP records, for every parameter, the module and attribute it swaps the
  sharded and unsharded parameter into. A parametrization moves the Parameter into
  ``parametrizations.<name>.original``; :func:`follow_fsdp` points FSDP's record there while a session
  is attached (so FSDP's all-gathered weight is what the quantizer sees) and back to the owner on exit.
* **Classes stacked on a parametrized class** (``fully_shard`` applied inside a session makes
  ``FSDPParametrizedLinear``): :func:`remove_parametrization` takes the parametrization off under the
  wrapper and rebuilds the wrapper on the original class (FSDP's own class cache first).
* **Memory** (:func:`recompute_for_backward`): a GEMM in an FSDP-managed layer saves how to recompute
  its quantized weight, not the tensor; backward makes it again from the weight FSDP gathers again.
  A weight FSDP gathers as a DTensor (FSDP + TP) keeps its quantized local shard for backward, as do
  formats that would not give the same bits twice; calibration observes a sharded weight once
  (:func:`first_call_only`), so it keeps no copy of a gathered one.
* **Tensor-parallel activations** are rank shards: :func:`sharded_activation_warnings` names them.

The one design reason: qsim-hooks keeps no copy of a weight. Under FSDP2 a quantized weight exists only
while FSDP holds its layer unsharded.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterable, Iterator
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn
from torch.distributed.tensor import DTensor, Replicate
from torch.nn.utils import parametrize

from . import marks
from .formats import CallableFormat, Format, Rounding
from .points import QuantPoint
from .undo import UndoStack

__all__ = ["is_dtensor", "quantize_dtensor", "follow_fsdp", "recompute_for_backward",
           "remove_parametrization", "fsdp_params", "sharded_activation_warnings", "sharded_weight",
           "first_call_only"]

try:  # FSDP2's module base and its class cache (torch >= 2.6)
    from torch.distributed.fsdp import FSDPModule
    from torch.distributed.fsdp._fully_shard._fully_shard import get_cls_to_fsdp_cls
except ImportError:  # pragma: no cover - older torch: no FSDP2, nothing to follow
    FSDPModule = None  # type: ignore[assignment,misc]
    get_cls_to_fsdp_cls = None  # type: ignore[assignment]


def is_dtensor(t: object) -> bool:
    return isinstance(t, DTensor)


def quantize_dtensor(point: QuantPoint, w: DTensor) -> DTensor:
    """Quantize the logical tensor of ``w``; the result has ``w``'s mesh and placements.

    Differentiable: the gradient goes back through the format's estimator and reaches ``w`` with its
    placements (``full_tensor``'s backward takes the rank's shard).
    """
    mesh = w.device_mesh
    full = w.full_tensor()
    q = point(full)
    return DTensor.from_local(q, mesh, [Replicate()] * mesh.ndim, run_check=False).redistribute(
        mesh, w.placements)


# ---------------------------------------------------------------------------
# FSDP2's record of where each parameter lives
# ---------------------------------------------------------------------------
def fsdp_params(model: nn.Module | Iterable[nn.Module]) -> Iterator:
    """Every ``FSDPParam`` of every ``fully_shard``-ed module of ``model`` (or of the modules given)."""
    if FSDPModule is None:
        return
    for m in (model.modules() if isinstance(model, nn.Module) else model):
        if isinstance(m, FSDPModule):
            for group in m._get_fsdp_state()._fsdp_param_groups:
                yield from group.fsdp_params


def _places(info) -> range:
    """The places FSDP swaps one parameter into: -1 the main one, then each shared module."""
    return range(-1, len(info.shared_modules))


def _get(info, i: int) -> tuple[nn.Module, str]:
    if i < 0:
        return info.module, info.param_name
    return info.shared_modules[i], info.shared_param_names[i]


def _set(info, i: int, module: nn.Module, name: str) -> None:
    if i < 0:
        info.module, info.param_name = module, name
    else:
        info.shared_modules[i], info.shared_param_names[i] = module, name


def _ours(plist: nn.Module) -> bool:
    """Only qsim-hooks quantizers on this list (weights.WeightQuantizer; weights imports this module)."""
    return len(plist) > 0 and all(isinstance(getattr(p, "point", None), QuantPoint) for p in plist)


def _to_original(model: nn.Module) -> None:
    """FSDP's records of (module, name) where ``module.<name>`` is parametrized by us -> the ``original``."""
    for fp in fsdp_params(model):
        info = fp._module_info
        for i in _places(info):
            module, name = _get(info, i)
            plists = getattr(module, "parametrizations", None)
            if plists is not None and parametrize.is_parametrized(module, name) and _ours(plists[name]):
                _set(info, i, plists[name], "original")


def _to_owner(model: nn.Module) -> None:
    """FSDP's records that name one of our ``parametrizations.<name>`` lists -> its owner's ``<name>``."""
    owners: dict[int, tuple[nn.Module, str]] = {}
    for m in model.modules():
        plists = m.__dict__.get("_modules", {}).get("parametrizations")
        if plists is not None:
            for name, plist in plists.items():
                if _ours(plist):
                    owners[id(plist)] = (m, name)
    for fp in fsdp_params(model):
        info = fp._module_info
        for i in _places(info):
            module, name = _get(info, i)
            if name == "original" and id(module) in owners:
                _set(info, i, *owners[id(module)])


def follow_fsdp(model: nn.Module) -> UndoStack:
    """Point FSDP2 at the parametrized weights now; on undo, at their owners again. And let no quantized
    weight of an FSDP-managed layer outlive the layer's forward (:func:`recompute_for_backward`).

    The undo scans the model when it runs, so a model sharded *inside* the session (FSDP then recorded
    the ``original`` of our parametrizations) is put right as well as one sharded before it.
    """
    stack = UndoStack()
    with stack.all_or_nothing():
        _to_original(model)
        stack.callback(_to_owner, model)
        stack.push(recompute_for_backward(model))
    return stack


# ---------------------------------------------------------------------------
# memory: the GEMM's saved quantized weight is recomputed in backward, from FSDP's re-gathered weight
# ---------------------------------------------------------------------------
class _Requant(NamedTuple):
    """What a saved quantized weight is packed into: how to make it again, not its values."""

    point: QuantPoint
    fmt: Format
    amax: Tensor | None
    original: Tensor  # FSDP's unsharded Parameter: its storage is freed after forward and refilled for backward
    size: tuple[int, ...]
    stride: tuple[int, ...]
    offset: int  # of the saved view, from the start of the quantized weight
    label: str


def _recomputable(fmt: Format) -> bool:
    """Whether quantizing again gives the same bits: no stochastic rounding, no user callable, no format with
    its own calling rules (each may hold state or draw anew)."""
    return type(fmt).__call__ is Format.__call__ and not isinstance(fmt, CallableFormat) and not _stochastic(fmt)


def _stochastic(fmt: Any) -> bool:
    """Whether a format (or a format inside it) rounds stochastically: a second run would draw anew."""
    if isinstance(fmt, Rounding):
        return fmt == Rounding.STOCHASTIC
    if dataclasses.is_dataclass(fmt) and not isinstance(fmt, type):
        return any(_stochastic(getattr(fmt, f.name)) for f in dataclasses.fields(fmt))
    return False


class _Weight(NamedTuple):
    plist: nn.Module  # the parametrization list: its ``original`` is what FSDP swaps in
    owner: nn.Module
    label: str


def _our_weights(model: nn.Module) -> dict[int, _Weight]:
    """id(point) -> the weight it quantizes, for every weight of ``model`` qsim-hooks quantizes."""
    out: dict[int, _Weight] = {}
    for m in model.modules():
        plists = m.__dict__.get("_modules", {}).get("parametrizations")
        for plist in (plists.values() if plists is not None else ()):
            if _ours(plist):
                for q in plist:
                    out[id(q.point)] = _Weight(plist, m, q.point.describe())
    return out


def _fsdp_managed(m: nn.Module) -> bool:
    return getattr(m, "_is_fsdp_managed_module", False)


def _pack(weights: dict[int, _Weight], t: Tensor) -> Any:
    """A saved tensor: our quantized weight (or a view of it) made from FSDP's unsharded weight -> a recipe."""
    point = marks.marked_by(t)
    hit = weights.get(id(point)) if point is not None else None
    if hit is None or not _fsdp_managed(hit.owner) or point.format is None or not _recomputable(point.format):
        return t
    original = hit.plist.original
    base = t if t._base is None else t._base
    if isinstance(original, DTensor) or base.numel() != original.numel() or base.dtype != original.dtype \
            or not base.is_contiguous() or not original.is_contiguous():
        return t  # not FSDP's gathered weight quantized as it is: keep the tensor
    return _Requant(point, point.format, point.amax, original, tuple(t.size()), tuple(t.stride()),
                    t.storage_offset() - base.storage_offset(), hit.label)


def _unpack(packed: Any) -> Tensor:
    if not isinstance(packed, _Requant):
        return packed
    w = packed.original
    if w.untyped_storage().size() == 0:
        raise RuntimeError(f"{packed.label}: FSDP has not all-gathered the weight again for backward, so its "
                           "quantized copy cannot be recomputed")
    # no statistics, no observer: a recomputation. Grad mode is backward's: off, or on under create_graph (then
    # the recomputed weight is differentiable again, as the saved one was)
    with torch._C.DisableTorchFunction():
        q = packed.point._quantize(packed.fmt, w, packed.amax)
    return q.as_strided(packed.size, packed.stride, q.storage_offset() + packed.offset)


def recompute_for_backward(model: nn.Module) -> UndoStack:
    """While a model with FSDP-managed quantized weights runs with autograd, a GEMM that saves one of those
    quantized weights saves how to recompute it instead: a saved-tensor hook pair, pushed when the model
    (or one of its containers, called on its own) starts running on a thread and popped when it returns.
    The layers get no hook of their own.

    FSDP2 frees a layer's gathered weight after forward and gathers it again for backward, and the GEMM's
    saved copy of the unquantized weight shares that storage; a quantized weight is a new tensor FSDP does
    not free, so kept it would add up to a full unsharded copy of every weight on every rank by the end of
    forward. Recomputing costs one quantization per layer in backward and gives the same bits (a
    deterministic function of the weight FSDP gathers again; stochastic rounding and user callables keep
    their tensor, as does a model run under saved-tensor hooks someone else pushed: activation
    checkpointing recomputes the layer anyway). Nothing is pushed for a model without FSDP.
    """
    weights = _our_weights(model)
    local = threading.local()

    def pre(module: nn.Module, args: Any) -> None:
        depth = getattr(local, "depth", 0)
        local.depth = depth + 1
        if depth:
            return
        local.pushed = torch.is_grad_enabled() and not torch.compiler.is_compiling() \
            and torch._C._autograd._top_saved_tensors_default_hooks(False) is None \
            and any(_fsdp_managed(w.owner) for w in weights.values())
        if local.pushed:
            torch._C._autograd._push_saved_tensors_default_hooks(lambda t: _pack(weights, t), _unpack)

    def post(module: nn.Module, args: Any, out: Any) -> None:
        depth = getattr(local, "depth", 0)
        if not depth:
            return
        local.depth = depth - 1
        if depth == 1 and local.pushed:
            local.pushed = False
            torch._C._autograd._pop_saved_tensors_default_hooks()

    stack = UndoStack()
    if not weights:
        return stack
    with stack.all_or_nothing():
        for name, m in model.named_modules():  # the model and its containers (a parametrized layer is a leaf)
            if "parametrizations" not in name.split(".") and (
                    m is model or any(n != "parametrizations" for n, _ in m.named_children())):
                stack.push(m.register_forward_pre_hook(pre))
                stack.push(m.register_forward_hook(post, always_call=True))
    return stack


# ---------------------------------------------------------------------------
# calibration: a sharded weight is observed once, as the logical tensor
# ---------------------------------------------------------------------------
def sharded_weight(named: dict[str, nn.Module], key: tuple[str, str, str]) -> bool:
    """Whether the weight point ``key`` parametrizes a DTensor (FSDP2's shard, a tensor-parallel weight)."""
    module, point, tensor = key
    plists = getattr(named.get(module), "parametrizations", None) if point == "weight" else None
    return plists is not None and tensor in plists and isinstance(plists[tensor].original, DTensor)


def first_call_only(observer: Any) -> Any:
    """``observer`` for its first call; later calls pass nothing on."""
    left = [observer]

    def once(x: Any) -> None:
        if left:
            left.pop()(x)
    return once


# ---------------------------------------------------------------------------
# taking a parametrization off under a wrapper class
# ---------------------------------------------------------------------------
def _parametrized_class(cls: type, name: str) -> type | None:
    for c in cls.__mro__:
        if name in c.__dict__ and isinstance(c.__dict__[name], property) and c.__name__.startswith("Parametrized"):
            return c
    return None


def remove_parametrization(module: nn.Module, name: str) -> None:
    """``remove_parametrizations(module, name, leave_parametrized=False)``, also under a wrapper class.

    ``fully_shard`` applied to a parametrized module makes its class ``FSDP<ParametrizedX>``; PyTorch's
    removal would look for the property on that class and restore the wrong base. Here the module is
    given the parametrized class for the removal and the wrapper is rebuilt on what removal restored.
    """
    top = type(module)
    pcls = _parametrized_class(top, name)
    if pcls is None or pcls is top:
        parametrize.remove_parametrizations(module, name, leave_parametrized=False)
        return
    module.__class__ = pcls
    try:
        parametrize.remove_parametrizations(module, name, leave_parametrized=False)
    finally:
        base = type(module)
        module.__class__ = top if base is pcls else _rewrap(top, pcls, base)


def _rewrap(top: type, old: type, base: type) -> type:
    """``top`` with ``old`` replaced by ``base`` among its bases (FSDP's cached class when it has one)."""
    cache = get_cls_to_fsdp_cls() if get_cls_to_fsdp_cls is not None else {}
    if cache.get(old) is top:
        new = cache.get(base)
        if new is None:
            new = cache[base] = _rebuild(top, old, base)
        return new
    return _rebuild(top, old, base)


def _rebuild(top: type, old: type, base: type) -> type:
    body = {k: v for k, v in top.__dict__.items() if k not in ("__dict__", "__weakref__")}
    bases = tuple(base if b is old else b for b in top.__bases__)
    return type(top.__name__.replace(old.__name__, base.__name__, 1), bases, body)


# ---------------------------------------------------------------------------
# what cannot be simulated faithfully: activations of tensor-parallel layers
# ---------------------------------------------------------------------------
def _tp_placements(modules: Iterable[nn.Module]) -> dict[int, tuple]:
    """id(module) -> the tensor-parallel placements of its weight, for the weights FSDP2 manages (FSDP + TP:
    FSDP records the DTensor layout it was given; FSDP's own dims are no split of the activations)."""
    out: dict[int, tuple] = {}
    for fp in fsdp_params(modules):
        spec = getattr(fp, "_unsharded_dtensor_spec", None) if fp.is_dtensor else None
        if fp._module_info.param_name == "weight":
            out[id(fp._module_info.module)] = tuple(spec.placements) if spec is not None else ()
    return out


def _sharded_roles(module: nn.Module, fsdp_tp: dict[int, tuple]) -> tuple[set[str], tuple]:
    """The activations of ``module`` that are this rank's shard under tensor parallelism, and the placements.

    Under FSDP alone every rank sees its whole activations (FSDP gathers the weight); under FSDP + TP the
    weight's tensor-parallel placements (``fsdp_tp``) say what is split."""
    w = getattr(module, "weight", None)
    if getattr(module, "_is_fsdp_managed_module", False):
        placements = fsdp_tp.get(id(module), ())
    else:
        placements = tuple(w.placements) if isinstance(w, DTensor) else ()
    if not any(p.is_shard() for p in placements):
        return set(), placements
    if isinstance(module, nn.Linear):  # colwise: Shard(0), the output is split; rowwise: Shard(1), the input
        dims = {p.dim for p in placements if p.is_shard()}
        return ({"output"} if 0 in dims else set()) | ({"input"} if 1 in dims else set()), placements
    return {"input", "output"}, placements  # another layer type: its split is not known here, so both may be


def sharded_activation_warnings(points: dict, modules: dict[str, nn.Module]) -> list[str]:
    """One message per input/output point whose tensor is a tensor-parallel shard (its scale would be)."""
    out = []
    fsdp_tp = _tp_placements(modules.values())
    for (name, role, _), qp in points.items():
        if role not in ("input", "output") or qp.format is None or name not in modules:
            continue
        roles, placements = _sharded_roles(modules[name], fsdp_tp)
        if role in roles:
            out.append(f"module {name or '<model>'!r}: its weight is a tensor-parallel DTensor "
                       f"({placements}), so its {role} is this rank's shard; "
                       f"{qp.format.name} on it takes any scale over the shard, not over the logical tensor "
                       "(not what one process computes; an unscaled elementwise format is unaffected)")
    return out
