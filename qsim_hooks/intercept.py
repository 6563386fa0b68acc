"""The model-wide interception: every GEMM a model runs, and what quantized each operand.

While a session is attached and the model (or one of its containers, called on
its own: an encoder in ``generate``) runs, a lean ``TorchFunctionMode`` is on this
thread's mode stack, entered by a forward pre-hook and left by an ``always_call``
forward hook (a per-thread stack of the modules that entered it handles nesting
and re-entrant calls). It looks at the GEMM-like calls of :mod:`qsim_hooks.gemms`,
the one-call attention functions, and a few value-preserving copies; every other
call is passed on after one dict lookup.

At a GEMM the operands are identified by provenance: a point marked what it
produced (:mod:`qsim_hooks.marks`), a parameter is recognised by identity, as a
view (``_base``) or as a copy recorded when it was made (:mod:`.functional`).
Then, by what the operands are, not by class names:

* a weight of a layer ``L`` used outside ``L``'s own forward (torchvision Swin's
  ``F.linear(x, self.qkv.weight)``, MHA's ``out_proj``) gets ``L``'s input point on
  the activation and ``L``'s output point on the result (unless the caller applied
  ``L``'s input point itself, as the MHA decomposition does);
* a functional weight (a stack of expert matrices, a router's or any bare
  parameter, an embedding table used as a projection) is quantized by its owner's
  weight point in the layout the GEMM reveals, with the owner's input and output
  points on the activation and the result;
* an activation × activation GEMM outside attention modules (CLIP's logits, a mask
  einsum) gets its module's input point on both operands and its output point on
  the result; one with a buffer operand (RoPE's ``inv_freq @ positions``) is left
  alone: buffers are constants, not data;
* attention matmuls are the attention scope's: they count as covered when its
  points produced the operands.

Every intercepted GEMM goes through one method, :meth:`Interception.gemm` (the
mode's route for every function of :data:`qsim_hooks.gemms.GEMM_FUNCS`), and its
product is computed in one place, :meth:`Interception.run_gemm`, with the operands
as simulated: that is where a simulation of the GEMM's reduction (accumulator
format, chunking) belongs. Attention matmuls reach it too (the attention scope's
mode sits above this one and passes its quantized operands down); SDPA and MHA
calls outside attention modules do not (:meth:`Interception.attention_call`
counts them, as not simulated).

Every call is recorded (:mod:`qsim_hooks.coverage`). The mode costs one Python
call per torch function while the model runs (measured in ``tools/bench_overhead.py``).
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from . import gemms, reuse
from .coverage import Operand, Recorder, layout_reason
from .functional import COPIES, FunctionalWeights, ParamTracker, Source
from .marks import copy_mark, marked_by
from .planning import PlanEntry
from .points import QuantPoint
from .undo import UndoStack

__all__ = ["Interception", "attach_interception", "MARK_COPIES"]

Key = tuple[str, str, str]
_CALL_IMPL = nn.Module._call_impl.__code__
#: copies that carry a point's mark to their result (and record a parameter's copies)
MARK_COPIES = COPIES | {Tensor.repeat_interleave, torch.repeat_interleave, Tensor.repeat, Tensor.reshape,
                        torch.reshape, Tensor.flatten, torch.flatten, Tensor.expand}


_PARTNER = {"q": "k", "k": "q", "probs": "v", "v": "probs"}


def _needs_axis(p: QuantPoint) -> bool:
    sc = getattr(p.format, "scaling", None)
    return sc is not None and sc.granularity != "tensor"


def _quantize_along(p: QuantPoint, x: Tensor, k: int) -> Tensor:
    """``p(x)`` with ``x``'s reduction axis ``k`` last (where activation formats take their axis)."""
    if k != x.dim() - 1 and _needs_axis(p):
        return p(x.movedim(k, -1)).movedim(-1, k)
    return p(x)


def _off(entry: PlanEntry | None, default_asked: bool, why: str) -> tuple[bool, str]:
    """(asked, reason) of an operand no point covered, from its plan entry."""
    if entry is None:
        return default_asked, why
    if entry.format is not None:
        return True, why
    if entry.decided_by.startswith("cfg"):
        return False, "not configured"
    rule = entry.decided_by  # "rule[i]" for an unnamed rule, else the rule's own name
    return False, f"off by {rule}" if rule.startswith("rule[") else f"off by rule {rule!r}"


class Interception:
    """One session's view of its model for the mode: modules, parameters, points, and the accounting.

    Args:
        named: module name -> module (every name; the first one of a shared module is used).
        points: the session's points by key (points made here on first use are added to it).
        entries: every plan entry by key, the functional candidates' (``lazy``) included.
        layers: names of modules whose points are hooks and parametrizations (registered layers).
        attention: names of attention modules.
        make_point: builds a point for a candidate entry the first time it is needed.
        asked: the global (input, weight) formats are set: the default for a role without an entry.
    """

    def __init__(self, named: Mapping[str, nn.Module], points: dict[Key, QuantPoint], entries: Mapping[Key, PlanEntry],
                 layers: set[str], attention: set[str], make_point: Callable[[PlanEntry], QuantPoint],
                 asked: tuple[bool, bool]) -> None:
        self.names: dict[int, str] = {}
        for n, m in named.items():
            self.names.setdefault(id(m), n)
        self.points, self.entries, self.layers, self.attention = points, entries, layers, attention
        self.make_point, self.asked = make_point, asked
        params: dict[int, Tensor] = {}
        self.owner: dict[int, tuple[str, str]] = {}  # id(param) -> (module, name), functional owners first
        for n, m in named.items():
            for pn, p in m._parameters.items():
                if p is not None and p.is_floating_point():
                    params.setdefault(id(p), p)
                    if id(p) not in self.owner or self.owner[id(p)][0] in layers:
                        self.owner[id(p)] = (n, pn)
        self.buffers = {id(b) for b in (b for m in named.values() for b in m._buffers.values()) if b is not None}
        self.tracker = ParamTracker(params)
        self.weights = FunctionalWeights()
        self.recorder = Recorder({n: type(m).__name__ for n, m in named.items()})
        self.lent = False  # observers lent at full precision (calibration): run as is, record nothing
        # functional owner -> (weight, call) whose layout was not read
        self.unrecognised: dict[str, tuple[str, str]] = {}
        self.local = threading.local()
        #: the session's accumulators (``accumulate.wiring.Accumulation``): ``(g, a, b, module) -> result``
        self.accumulate: Callable[[gemms.Gemm, Tensor, Tensor, str], Any] | None = None

    # -- what an operand is ---------------------------------------------------------
    def point(self, key: Key) -> QuantPoint | None:
        p = self.points.get(key)
        if p is None:
            e = self.entries.get(key)
            if e is None or e.format is None or e.module in self.layers:
                return None
            p = self.points[key] = self.make_point(e)
        return p

    def _mark(self, t: Tensor) -> QuantPoint | None:
        p = marked_by(t)
        return p if p is not None and self.points.get(p.key) is p else None

    def _is_buffer(self, t: Tensor) -> bool:
        return id(t) in self.buffers or (t._base is not None and id(t._base) in self.buffers)

    def current_module(self) -> str:
        """The innermost running module of this model (read from the frames of ``Module._call_impl``)."""
        f = sys._getframe(2)
        while f is not None:
            if f.f_code is _CALL_IMPL:
                name = self.names.get(id(f.f_locals.get("self")))
                if name is not None:
                    return name
            f = f.f_back
        return ""

    # -- the calls ---------------------------------------------------------------------
    def gemm(self, func: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
        """The interception of one GEMM-like call: its operands quantized by the points that own them, the
        product computed by :meth:`run_gemm`, the call recorded for :meth:`Session.coverage`."""
        g = gemms.read(func, args, kwargs)
        if g is None:
            return func(*args, **kwargs)
        if self.lent:  # observers lent at full precision (calibration): the model's own operands, no record
            return self.run_gemm(g, g.a, g.b)
        module = self.current_module()
        marks = (self._mark(g.a), self._mark(g.b))
        srcs = tuple(None if m is not None else self.tracker.source(t) for m, t in zip(marks, (g.a, g.b)))
        wi = next((i for i in (1, 0) if (marks[i] is not None and marks[i].entry.point == "weight")
                   or srcs[i] is not None), None)
        if wi is None:
            return self._activations(g, module, marks)
        return self._weighted(g, module, wi, marks[wi], srcs[wi], marks[1 - wi])

    def run_gemm(self, g: gemms.Gemm, a: Tensor, b: Tensor, module: str | None = None) -> Any:
        """The product of ``g`` on the simulated operands ``a`` and ``b`` (every intercepted GEMM runs here);
        ``module`` owns the GEMM: with an accumulator (:mod:`qsim_hooks.accumulate`) its sums are simulated."""
        if self.accumulate is not None and module is not None:
            out = self.accumulate(g, a, b, module)
            if out is not NotImplemented:
                return out
        return g.call(a, b)

    def _weighted(self, g: gemms.Gemm, module: str, wi: int, wmark: QuantPoint | None, src: Source | None,
                  xmark: QuantPoint | None) -> Any:
        ops = [g.a, g.b]
        if wmark is not None:
            layer = wmark.entry.module
            w_op = Operand("weight", wmark.describe(), True)
        else:
            assert src is not None
            layer, pname = self.owner[id(src.param)]
            key = (layer, "weight", pname)
            wp = self.point(key) if layer not in self.layers else None
            q = self.weights.quantize(wp, src, g.k[wi], g.n[wi]) if wp is not None else None
            if q is not None:
                ops[wi] = q
                w_op = Operand("weight", wp.describe(), True)
            elif wp is not None:
                w_op = Operand("weight", None, True, layout_reason(pname, g.op))
                self.unrecognised.setdefault(layer, (pname, g.op))
            else:
                why = "its parametrization was bypassed" if layer in self.layers else "no point"
                w_op = Operand("weight", None, *_off(self.entries.get(key), self.asked[1], why))
        # the owner's input/output points: a functional owner always, a layer only outside its own forward
        apply = layer not in self.layers or module != layer
        in_p = self.point((layer, "input", "input")) if apply else None
        out_p = self.point((layer, "output", "output")) if apply else None
        if in_p is not None and xmark is in_p:
            in_p = out_p = None  # the caller applied this layer's points itself
        if in_p is not None:
            ops[1 - wi] = _quantize_along(in_p, ops[1 - wi], g.k[1 - wi])
            x_op = Operand("activation", in_p.describe(), True)
        elif xmark is not None:
            x_op = Operand("activation", xmark.describe(), True)
        else:
            own = self.points.get((layer, "input", "input")) if module == layer else None
            if own is not None:  # inside the layer's own forward, after its input hook (a padded copy, say)
                x_op = Operand("activation", own.describe(), True)
            else:
                x_op = Operand("activation", None, *_off(self.entries.get((layer, "input", "input")), self.asked[0],
                                                         "no point"))
        out = self.run_gemm(g, ops[0], ops[1], layer)
        if out_p is not None:
            out = out_p(out)
        self.recorder.add(module, g.op, (x_op, w_op) if wi == 1 else (w_op, x_op))
        return out

    def _activations(self, g: gemms.Gemm, module: str, marks: tuple[QuantPoint | None, ...]) -> Any:
        ops = [g.a, g.b]
        if self._is_buffer(g.a) or self._is_buffer(g.b):
            self.recorder.add(module, g.op, tuple(Operand("activation", m.describe() if m else None, False,
                                                          None if m else "a buffer (a constant) is an operand")
                                                  for m in marks))
            return self.run_gemm(g, g.a, g.b, module)
        in_key = (module, "input", "input")
        in_p = out_p = None
        if module not in self.attention and module not in self.layers:
            in_p, out_p = self.point(in_key), self.point((module, "output", "output"))
        records = []
        for i, m in enumerate(marks):
            if in_p is not None and m is not in_p:
                ops[i], m = _quantize_along(in_p, ops[i], g.k[i]), in_p
            if m is not None:
                records.append(Operand("activation", m.describe(), True))
            elif module in self.attention:
                records.append(Operand("activation", None, self._attention_asked(module, marks[1 - i]),
                                       "an attention matmul its points did not take"))
            else:
                why = "activation x activation GEMM inside a layer" if module in self.layers else "no point"
                records.append(Operand("activation", None, *_off(self.entries.get(in_key), self.asked[0], why)))
        out = self.run_gemm(g, ops[0], ops[1], module)
        if out_p is not None:
            out = out_p(out)
        self.recorder.add(module, g.op, tuple(records))
        return out

    def _attention_asked(self, module: str, other: QuantPoint | None) -> bool:
        """An uncovered operand of an attention module's matmul was asked for if its partner's point (q for k,
        probs for v, ...) is on. When neither operand was covered, the call may be a product whose two points are
        both off (P·V with only q and k configured) or one the scope left alone (DeBERTa's c2p): asked only if
        every operand point of the module is on, so that either reading is against the config."""
        if other is not None and other.entry.module == module and other.entry.point in _PARTNER:
            return self.points.get((module, _PARTNER[other.entry.point], _PARTNER[other.entry.point])) is not None
        return all(self.points.get((module, p, p)) is not None for p in _PARTNER)

    def attention_call(self, func: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
        """SDPA / MHA outside an attention scope: run as is; counted as their GEMMs, none simulated."""
        if self.lent:
            return func(*args, **kwargs)
        module = self.current_module()
        asked = _off(self.entries.get((module, "input", "input")), self.asked[0], "")[0]
        label = gemms.ATTENTION_CALLS[func]
        marks = [self._mark(t) if label.startswith("scaled") and isinstance(t, Tensor) else None for t in args[:3]]
        q, k, v = (Operand("activation", m.describe(), True) if m is not None else
                   Operand("activation", None, asked, "an attention call outside an attention module")
                   for m in marks + [None] * (3 - len(marks)))
        self.recorder.add(module, f"{label}:QK", (q, k))
        self.recorder.add(module, f"{label}:PV", (Operand("activation", None, asked, "probabilities inside an "
                                                          "attention call outside an attention module"), v))
        return func(*args, **kwargs)

    def copy(self, func: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
        out = func(*args, **kwargs)
        if args and isinstance(args[0], Tensor) and isinstance(out, Tensor):
            copy_mark(args[0], out)
            reuse.propagate(args[0], out)
            if func in COPIES:
                self.tracker.derive(func, args, kwargs, out)
        return out

    def scaled(self, func: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
        """``x * c`` or ``x / c`` for a number ``c``: the result carries ``x``'s mark (a scaled grid: MHA scales
        its quantized ``q`` before ``Q·Kᵀ``)."""
        out = func(*args, **kwargs)
        if len(args) == 2 and isinstance(out, Tensor):
            x, c = args if isinstance(args[0], Tensor) else args[::-1]
            if isinstance(x, Tensor) and (isinstance(c, (int, float)) or (isinstance(c, Tensor) and c.dim() == 0)):
                copy_mark(x, out)
        return out

    def end_forward(self) -> None:
        self.tracker.clear()
        reuse.forget()


_ROUTES: dict[Callable[..., Any], Callable[[Interception, Callable[..., Any], tuple, dict], Any]] = {}
_ROUTES.update(dict.fromkeys(gemms.GEMM_FUNCS, Interception.gemm))
_ROUTES.update(dict.fromkeys(gemms.ATTENTION_CALLS, Interception.attention_call))
_ROUTES.update(dict.fromkeys(MARK_COPIES, Interception.copy))
_ROUTES.update(dict.fromkeys((Tensor.__mul__, Tensor.__rmul__, Tensor.mul, torch.mul, Tensor.__truediv__, Tensor.div,
                              torch.div), Interception.scaled))


class _Mode(TorchFunctionMode):
    """The lean mode: one dict lookup for every call that is no GEMM, attention call or followed copy."""

    def __init__(self, state: Interception) -> None:
        super().__init__()
        self.state = state

    def __torch_function__(self, func, types, args=(), kwargs=None):
        route = _ROUTES.get(func)
        if route is None:
            return func(*args, **kwargs) if kwargs else func(*args)
        return route(self.state, func, args, kwargs or {})


def attach_interception(model: nn.Module, state: Interception, also: list[nn.Module] = ()) -> UndoStack:
    """Enter the mode when the model, one of its containers or a module of ``also`` (functional layers, which
    may be called on their own) starts running on a thread; leave it when that call returns."""
    local = state.local

    def pre(mod: nn.Module, args: Any) -> None:
        if torch.compiler.is_compiling():
            return
        stack = getattr(local, "stack", None)
        if stack is None:
            stack = local.stack = []
        if not stack:
            reuse.forget()  # nothing known from before this forward (a layer called on its own, say)
            local.mode = _Mode(state)
            local.mode.__enter__()
        stack.append(id(mod))

    def post(mod: nn.Module, args: Any, out: Any) -> None:
        stack = getattr(local, "stack", None)
        if not stack or stack[-1] != id(mod) or torch.compiler.is_compiling():
            return
        stack.pop()
        if not stack:
            mode, local.mode = local.mode, None
            try:
                mode.__exit__(None, None, None)
            finally:
                state.end_forward()

    handles = UndoStack()
    seen: set[int] = set()
    extra = {id(m) for m in also}
    for name, m in model.named_modules():
        if "parametrizations" in name.split(".") or id(m) in seen:
            continue  # the session's (or a user's) parametrizations: no model code
        leaf = all(n == "parametrizations" for n, _ in m.named_children())  # a parametrized layer is a leaf
        if m is not model and leaf and id(m) not in extra:
            continue
        seen.add(id(m))
        handles.push(m.register_forward_pre_hook(pre, prepend=True))
        handles.push(m.register_forward_hook(post, always_call=True))
    handles.callback(state.weights.clear)
    handles.callback(reuse.forget)
    return handles
