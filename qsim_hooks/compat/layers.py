"""INT-FP-QSim's ``replace_layers``, done by instrumentation instead of replacement.

``replace_layers(model, input_quantizer, weight_quantizer, output_quantizer)`` keeps INT-FP-QSim's
signature and, like it, returns the model, quantized from then on; it swaps no module but attaches a
session (:class:`CompatSession`), kept on the model until :func:`detach`::

    model = replace_layers(model, input_quantizer=E4M3, weight_quantizer=E4M3, output_quantizer=FP16)
    model.eval(); model(x)                # quantized, as with INT-FP-QSim
    compat.session_of(model).report()     # the session: points, stats
    compat.detach(model)                  # the model is again exactly what it was

The layers quantized are INT-FP-QSim's: modules whose exact type (before parametrizations) is a key of
``mapping`` (default :data:`DEFAULT_LAYERS`; a subclass such as ``nn.MultiheadAttention``'s
``NonDynamicallyQuantizableLinear`` out_proj is not one). Static scales come, in this order, from the
``amax_input`` / ``amax_weight`` attributes that INT-FP-QSim's calibration (or the user) set on the layers
before the call, then from ``calibration=``. The old default mapping's attention classes are simulated with
the old placement of their points (:mod:`.attention`).
"""

from __future__ import annotations

import dataclasses
import importlib
import re
import warnings
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..calibration import Calibration, calibration_target
from ..config import QuantConfig, Rule
from ..points import QuantPoint
from ..session import Session
from ..undo import UndoStack
from . import _trt
from .attention import NO_K, attach_old_mha, attention_rules
from .quantizers import IntQuantizer, _Compat

__all__ = ["replace_layers", "DEFAULT_LAYERS", "CompatSession", "session_of", "detach", "apply_calibration",
           "Linear", "Conv1d", "Conv2d", "ConvTranspose2d"]

#: The layer types INT-FP-QSim's default mapping replaced (and compat instruments), matched by exact type.
DEFAULT_LAYERS: tuple[type, ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.ConvTranspose2d)
# INT-FP-QSim's replacement classes (int_fp_qsim.layers.Linear, ...) appear as the values of old mappings;
# compat replaces nothing, so the names stand for the layer types themselves
Linear, Conv1d, Conv2d, ConvTranspose2d = DEFAULT_LAYERS
#: The attention classes of INT-FP-QSim's DEFAULT_MAPPING (module, class), matched by name: compat does not
#: import transformers or diffusers.
OLD_ATTENTION: tuple[tuple[str, str], ...] = (
    ("torch.nn", "MultiheadAttention"),
    ("transformers.models.opt.modeling_opt", "OPTAttention"),
    ("transformers.models.bert.modeling_bert", "BertSelfAttention"),
    ("transformers.models.maskformer.modeling_maskformer", "DetrAttention"),
    ("transformers.models.maskformer.modeling_maskformer_swin", "MaskFormerSwinSelfAttention"),
    ("transformers.models.codegen.modeling_codegen", "CodeGenAttention"),
    ("diffusers.models.attention_processor", "Attention"),
    ("transformers.models.graphormer.modeling_graphormer", "GraphormerMultiheadAttention"),
)
_OLD_ATTENTION_NAMES = {f"{mod}.{cls}" for mod, cls in OLD_ATTENTION} | {
    "torch.nn.modules.activation.MultiheadAttention"}
#: old attention classes whose replacement left the layers inside them unquantized
_CHILDREN_UNTOUCHED = {"diffusers.models.attention_processor.Attention"}
_SESSION_ATTR = "_qsim_hooks_compat_session"


def default_mapping() -> dict[type, type]:
    """INT-FP-QSim's ``DEFAULT_MAPPING`` keys that exist here (importing transformers / diffusers), each to itself.

    ``compat.DEFAULT_MAPPING`` (built on first access) is this dict, for scripts that copy and extend the old
    mapping; its values are not used.
    """
    out: dict[type, type] = {t: t for t in DEFAULT_LAYERS}
    for mod, cls in OLD_ATTENTION:
        try:  # deferred: transformers / diffusers are heavy optional dependencies, imported only here
            t = getattr(importlib.import_module(mod), cls, None)
        except ImportError:
            t = None
        if isinstance(t, type):
            out[t] = t
    return out


def _qualname(t: type) -> str:
    return f"{t.__module__}.{t.__qualname__}"


def _is_old_attention(t: type) -> bool:
    return _qualname(t) in _OLD_ATTENTION_NAMES or issubclass(t, nn.MultiheadAttention)


class CompatSession(Session):
    """The session :func:`replace_layers` attaches; ``detach()`` also removes it from the model."""

    #: hooks compat adds beside the session's own points (the old ``nn.MultiheadAttention`` placement)
    extra: UndoStack | None = None

    def detach(self) -> None:
        try:
            if self.extra is not None:
                self.extra.close()
                self.extra = None
            super().detach()
        finally:
            if self.model.__dict__.get(_SESSION_ATTR) is self:
                del self.model.__dict__[_SESSION_ATTR]


def session_of(model: nn.Module) -> CompatSession | None:
    """The session :func:`replace_layers` attached to ``model`` (``None`` when there is none)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"session_of: model must be a torch.nn.Module, got {type(model).__name__}")
    return model.__dict__.get(_SESSION_ATTR)


def detach(model: nn.Module) -> None:
    """Detach the session :func:`replace_layers` attached: the model is again exactly what it was.

    Safe to call twice (and on a model without one). Attributes the calibration functions set
    (``amax_input`` / ``amax_weight``) are the user's data and stay: :func:`~qsim_hooks.compat.clear_scales`.
    """
    session = session_of(model)
    if session is not None:
        session.detach()


def _exact_types(mapping: Mapping[type, Any] | Iterable[type] | None) -> tuple[type, ...]:
    types = tuple(mapping.keys() if isinstance(mapping, Mapping) else (mapping or ()))
    if not types:
        return DEFAULT_LAYERS  # INT-FP-QSim: ``mapping or DEFAULT_MAPPING``
    for t in types:
        if not (isinstance(t, type) and issubclass(t, nn.Module)):
            raise TypeError(f"replace_layers: mapping keys must be nn.Module types, got {t!r}")
    return types


class _Found:
    """What :func:`_find` found: layer names, and the old attention modules by how compat simulates them."""

    def __init__(self) -> None:
        self.layers: list[str] = []
        self.mha: list[str] = []  # nn.MultiheadAttention: compat's own placement (attention.attach_old_mha)
        self.attention: list[str] = []  # the others: qsim-hooks' attention scope
        self.no_k: list[str] = []  # of those, the ones whose k INT-FP-QSim left unquantized


def _find(model: nn.Module, types: tuple[type, ...]) -> _Found:
    """The modules whose exact type is in ``types`` (layers), and the old attention modules mapped.

    INT-FP-QSim did not look inside a module it replaced: the replacement quantized the layers it rebuilt
    (BERT's query / key / value, OPT's projections, ...) but diffusers' ``Attention`` was kept with only
    its processor swapped, so its ``to_q`` / ``to_k`` / ``to_v`` / ``to_out`` stayed in full precision.
    """
    spec_cfg = QuantConfig()
    found, untouched = _Found(), []
    for name, m in model.named_modules(remove_duplicate=False):
        t = parametrize.type_before_parametrizations(m)
        if any(name.startswith(p) for p in untouched):
            continue
        # INT-FP-QSim's default mapping had the attention classes themselves (exact type) as keys
        mapped = t in types or (types is DEFAULT_LAYERS and _qualname(t) in _OLD_ATTENTION_NAMES)
        if _qualname(t) in _CHILDREN_UNTOUCHED and mapped:
            untouched.append(f"{name}." if name else "")
        if t in types and not _is_old_attention(t):
            if spec_cfg.layer_spec(m) is None:
                raise ValueError(f"replace_layers: module {name or '<model>'!r} ({t.__name__}) is in the mapping "
                                 "but is not a layer compat can instrument (Linear, Conv1d/2d/3d, "
                                 "ConvTranspose1d/2d/3d, or a type registered with qsim_hooks.register_layer)")
            found.layers.append(name)
        elif _is_old_attention(t) and mapped:
            if issubclass(t, nn.MultiheadAttention):
                found.mha.append(name)
            else:
                found.attention.append(name)
                if _qualname(t) in NO_K:
                    found.no_k.append(name)
    return found


def _names(names: list[str]) -> str:
    return "re:" + "|".join(re.escape(n) for n in names)


def _static_value(qp: QuantPoint, value: Any) -> Any:
    """``value`` as the amax ``qp`` takes, or a string saying why it cannot take it."""
    fmt = qp.format
    tgt = calibration_target(fmt, qp.entry.axis)
    if not tgt.ok:
        return tgt.reason
    t = torch.as_tensor(value, dtype=torch.float32).detach()
    if t.numel() > 1 and tgt.granularity == "tensor" and not isinstance(fmt, _Compat):
        return f"per-channel amax, per-tensor format {fmt.name}"  # type: ignore[union-attr]
    if bool((t == 0).any()):
        if not isinstance(fmt, IntQuantizer):
            return "amax 0"
        t = torch.where(t == 0, _trt.ZERO_AMAX, t)  # TensorRT quantizes amax <= 2^-24 to zero: the same
    return t


def set_static(session: Session, key: tuple[str, str, str], value: Any) -> str | None:
    """Give the point ``key`` of ``session`` the static amax ``value``; returns why not, or ``None``."""
    qp = session.points.get(key)
    if qp is None:
        return None
    t = _static_value(qp, value)
    if isinstance(t, str):
        return f"{qp.describe()} ({t})"
    qp.set_amax(t)
    return None


def warn_unused(unused: list[str], source: str) -> None:
    if unused:
        shown = "; ".join(unused[:5]) + (f"; ... ({len(unused)} in all)" if len(unused) > 5 else "")
        warnings.warn(f"{source}: amax not applied to {len(unused)} point(s) whose quantizer cannot take it: "
                      f"{shown}", UserWarning, stacklevel=3)


def _scales_from_attributes(session: Session) -> None:
    """INT-FP-QSim's calibrate-then-replace order: ``amax_input`` / ``amax_weight`` set on the layers."""
    named = dict(session.model.named_modules(remove_duplicate=False))
    unused = []
    for key in list(session.points):
        module, point, tensor = key
        attr = {"input": "amax_input", "weight": "amax_weight"}.get(point)
        value = getattr(named[module], attr, None) if attr and tensor in ("input", "weight") else None
        if value is not None:
            why = set_static(session, key, value)
            if why:
                unused.append(why)
    warn_unused(unused, "replace_layers: amax_input / amax_weight")


def apply_calibration(model: nn.Module | Session, calibration: Calibration) -> list[str]:
    """Set the calibrated amax of every point of ``model``'s replace_layers session that can take it.

    ``model`` is the model :func:`replace_layers` returned (or any Session). Per-channel amax reach the
    compat quantizers as per-channel static scales. Returns the labels of the points that got an amax;
    points whose quantizer cannot take one (an unscaled cast, per-channel scales for a per-tensor
    format) are named in a warning.
    """
    if not isinstance(calibration, Calibration):
        raise TypeError(f"calibration must be a qsim_hooks.Calibration, got {type(calibration).__name__}")
    session = model if isinstance(model, Session) else session_of(model)
    if session is None:
        raise ValueError("apply_calibration: this model has no replace_layers session; call replace_layers first "
                         "(or pass calibration= to it)")
    calibration.validate(session.model)
    applied, unused = [], []
    for key, pc in calibration.points.items():
        why = set_static(session, key, pc.amax_tensor())
        if why:
            unused.append(why)
        elif key in session.points:
            applied.append(pc.label)
    warn_unused(unused, "calibration")
    return applied


def replace_layers(module: nn.Module, input_quantizer: Any = None, weight_quantizer: Any = None,
                   output_quantizer: Any = None, mapping: Mapping[type, Any] | Iterable[type] | None = None,
                   calibration: Calibration | None = None) -> nn.Module:
    """Quantize ``module``'s layers with INT-FP-QSim-style quantizers; returns ``module`` itself.

    Args:
        module: the model (instrumented, not modified, until :func:`detach`).
        input_quantizer, weight_quantizer, output_quantizer: callables or formats (``compat.E4M3``,
            ``"int8"``, a qtorch quantizer, ...); ``None`` = full precision.
        mapping: the layer types to instrument, matched by exact type: INT-FP-QSim's ``{nn.Linear:
            qnn.Linear, ...}`` (its keys are used) or a list of types. Default :data:`DEFAULT_LAYERS`.
        calibration: a :class:`qsim_hooks.Calibration` whose static scales (per channel too) the layers use;
            it wins over ``amax_input`` / ``amax_weight`` attributes found on the layers.
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"replace_layers: module must be a torch.nn.Module, got {type(module).__name__}")
    if session_of(module) is not None:
        raise RuntimeError("replace_layers: this model already has a replace_layers session; "
                           "qsim_hooks.compat.detach(model) first")
    if calibration is not None and not isinstance(calibration, Calibration):
        raise TypeError(f"replace_layers: calibration must be a qsim_hooks.Calibration, got "
                        f"{type(calibration).__name__}")
    types = _exact_types(mapping)
    found = _find(module, types)
    if not (found.layers or found.mha or found.attention):
        warnings.warn(f"replace_layers: the model has no layer of the mapped types "
                      f"({', '.join(t.__name__ for t in types)}); nothing is quantized", UserWarning, stacklevel=2)
    cfg = QuantConfig(input=input_quantizer, weight=weight_quantizer, output=output_quantizer, strict=False,
                      attention=None)
    rules = [Rule(enabled=False, name="not an INT-FP-QSim layer")]
    if found.layers:
        rules.append(Rule(match=_names(found.layers), enabled=True, name="mapping"))
    if found.mha:  # the in-projection and out_proj weights are weight points; the rest is attach_old_mha's
        mha = found.mha + [f"{n}.out_proj" if n else "out_proj" for n in found.mha]
        rules.append(Rule(match=_names(mha), enabled=True, input=None, output=None,
                          name="INT-FP-QSim MultiheadAttention"))
    rules += attention_rules(found.attention, found.no_k, cfg.input, cfg.output)
    cfg = dataclasses.replace(cfg, rules=tuple(rules))
    session = CompatSession(module, cfg).attach()
    try:
        session.extra = UndoStack()
        named = dict(module.named_modules(remove_duplicate=False))
        for name in found.mha:
            session.extra.push(attach_old_mha(named[name], name, cfg.input, cfg.output))
        _scales_from_attributes(session)
        if calibration is not None:
            apply_calibration(session, calibration)
    except BaseException:
        session.detach()
        raise
    module.__dict__[_SESSION_ATTR] = session
    return module
