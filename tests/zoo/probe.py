"""The zoo's own instrumentation: every GEMM a model runs, which tensors feed it, and what attention points see.

A :class:`Probe` is independent of qsim-hooks' bookkeeping, so tests and ``tools/coverage_survey.py`` can
check the library against it:

* a ``TorchDispatchMode`` records every GEMM-like aten call (mm, addmm, bmm, baddbmm, convolution,
  _grouped_mm, the fused SDPA / multi-head-attention kernels, ...) with its operand shapes, and follows
  parameters through the ops that only reshape, index, cast or copy them (``MOVES``), so each operand is
  known as a raw parameter, the output of a qsim-hooks ``WeightQuantizer`` (``"quant"``), or an activation;
* a ``TorchFunctionMode`` labels each aten call with the torch function that issued it (``linear``,
  ``matmul``, ``einsum:<equation>``, ``_grouped_mm``, ...). While it is on, ``nn.MultiheadAttention``
  takes its Python path (as it does inside any qsim-hooks session) instead of ``_native_multi_head_attention``;
* global module pre/post hooks give the module that owns each call (the innermost running one);
* :meth:`Probe.watch_session` gives a session's six attention points an observer (their public slot)
  that logs the shape of what each point sees (and, for ``probs``, its range and row sums) and which
  GEMM it fed (``roles``, ``result`` on the GEMM event).

Events are plain dicts in ``probe.events``; :func:`attention_like`, :func:`sequences`,
:func:`point_checks` and :func:`einsum_axes` read them.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.modules import module as module_mod
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.weak import WeakTensorKeyDictionary

from qsim_hooks.weights import WeightQuantizer

__all__ = ["Probe", "POINTS", "GEMMS", "FUSED", "attention_like", "sequences", "point_checks", "einsum_axes",
           "pattern"]

POINTS = ("q", "k", "scores", "probs", "v", "context")
#: aten GEMM-like ops -> the positions of their two matrix operands
GEMMS = {"mm": (0, 1), "addmm": (1, 2), "bmm": (0, 1), "baddbmm": (1, 2), "addbmm": (1, 2), "mv": (0, 1),
         "addmv": (1, 2), "_addmm_activation": (1, 2), "dot": (0, 1), "convolution": (0, 1), "_grouped_mm": (0, 1),
         "_scaled_mm": (0, 1)}
#: fused attention kernels -> the positions of their tensor operands (q, k, v; MHA also its weights)
FUSED = {"_scaled_dot_product_flash_attention_for_cpu": (0, 1, 2), "_scaled_dot_product_efficient_attention": (0, 1, 2),
         "_scaled_dot_product_flash_attention": (0, 1, 2), "_scaled_dot_product_cudnn_attention": (0, 1, 2),
         "_native_multi_head_attention": (0, 1, 2, 5, 7), "_transformer_encoder_layer_fwd": (0, 3, 5)}
SOFTMAX = {"_softmax", "_safe_softmax"}
#: ops that only move, index or cast a tensor: a parameter stays "the same weight" through them
MOVES = {"view", "_unsafe_view", "reshape", "t", "transpose", "permute", "expand", "select", "slice", "index",
         "index_select", "gather", "unsqueeze", "squeeze", "clone", "_to_copy", "alias", "detach", "split",
         "split_with_sizes", "unbind", "as_strided", "repeat", "repeat_interleave", "cat", "stack", "lift_fresh",
         "_reshape_alias", "contiguous", "flatten", "unflatten", "chunk", "narrow", "movedim"}


def _ptr(t: Tensor) -> int | None:
    try:
        return t.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError):
        return None


def _shape(t: Any) -> list[int] | None:
    return list(t.shape) if isinstance(t, Tensor) else None


def _fn_name(func: Any, args: tuple) -> str:
    """``linear``, ``Tensor.matmul`` (also for ``@``), ``einsum:<equation>``, ..."""
    name = (getattr(func, "__name__", None) or str(func)).replace("__rmatmul__", "matmul").replace("__matmul__",
                                                                                                   "matmul")
    if name == "einsum" and args and isinstance(args[0], str):
        return f"einsum:{args[0].replace(' ', '')}"
    q = getattr(func, "__qualname__", "") or ""
    return f"Tensor.{name}" if q.startswith(("Tensor.", "TensorBase.")) else name


class Probe(TorchDispatchMode):
    """The tool's own instrumentation of one model (see the module docstring); ``with probe: ...``."""

    def __init__(self, model: nn.Module, grid: Callable[[Tensor], Tensor] | None = None) -> None:
        super().__init__()
        self.grid = grid  # a reference cast: each GEMM event then says which operands it leaves unchanged
        self.scaled = WeakTensorKeyDictionary()  # tensors that are a number times an on-grid tensor (or views)
        self.names: dict[int, str] = {}
        self.types: dict[str, str] = {}
        for n, m in model.named_modules(remove_duplicate=False):
            self.names.setdefault(id(m), n)
            self.types[n] = type(m).__name__
        self.param_at: dict[int, tuple[str, ...]] = defaultdict(tuple)
        self.param_info: dict[str, dict[str, Any]] = {}
        for n, p in model.named_parameters(remove_duplicate=False):
            ptr = _ptr(p)
            if ptr is not None:
                self.param_at[ptr] += (n,)
            owner = n.rsplit(".", 1)[0] if "." in n else ""
            self.param_info[n] = {"shape": list(p.shape), "owner": owner,
                                  "owner_type": type(model.get_submodule(owner)).__name__}
        self.quantizers: dict[int, tuple[str, ...]] = {}  # id(WeightQuantizer) -> parameter names
        self.taint = WeakTensorKeyDictionary()
        self.stack: list[str | None] = []
        self.events: list[dict[str, Any]] = []
        self.pending: list[str] = []
        self.fn: str | None = None
        self._labels = _Labels(self)
        self._hooks: list[Any] = []

    # -- parameters through the ops that only move them ---------------------------------------
    def watch_session(self, model: nn.Module, qs: Any) -> None:
        """Know the session's weight quantizers and observe its attention points."""
        for mname, m in model.named_modules():
            for pname, plist in getattr(m, "parametrizations", {}).items():
                for pm in plist:
                    if isinstance(pm, WeightQuantizer):
                        full = f"{mname}.{pname}" if mname else pname
                        self.quantizers[id(pm)] = self.param_at.get(_ptr(plist.original), (full,))
        for key, qp in qs.points.items():
            if key[1] in POINTS:
                qp.observer = self._observer(key[0], key[1])

    def aliases(self, name: str) -> tuple[str, ...]:
        """Every name of the parameter called ``name`` (tied weights have several)."""
        return next((ns for ns in self.param_at.values() if name in ns), (name,))

    def source(self, t: Any) -> tuple[str, tuple[str, ...]] | None:
        if not isinstance(t, Tensor) or not t.is_floating_point():
            return None
        s = self.taint.get(t)
        if s is not None:
            return s
        names = self.param_at.get(_ptr(t))
        return ("raw", names) if names else None

    def _propagate(self, ins: list[Tensor], out: Any) -> None:
        srcs = [self.source(a) for a in ins if a.is_floating_point() and a.dim() > 0]
        if not srcs or not all(srcs):
            return
        kind = "quant" if any(s[0] == "quant" for s in srcs) else "raw"
        names = tuple(sorted({n for s in srcs for n in s[1]}))
        for o in tree_flatten(out)[0]:
            if isinstance(o, Tensor) and o.is_floating_point():
                self.taint[o] = (kind, names)

    # -- the dispatch mode ---------------------------------------------------------------------
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = func.overloadpacket.__name__
        if name in GEMMS or name in FUSED:
            pos = GEMMS.get(name) or FUSED[name]
            ops = [args[i] if i < len(args) else None for i in pos]
            ev = {"kind": "gemm", "op": name, "fn": self.fn, "module": self.module(), "stack": self.chain(),
                  "shapes": [_shape(o) for o in ops], "sources": [self.source(o) for o in ops],
                  "roles": self.pending, "result": None, "float": all(
                      isinstance(o, Tensor) and o.is_floating_point() for o in ops[:2])}
            if self.grid is not None:
                ev["on_grid"] = [self._on_grid(o) for o in ops]
            self.pending = []
            self.events.append(ev)
        elif name in SOFTMAX:
            self.events.append({"kind": "softmax", "module": self.module(), "stack": self.chain(),
                                "shape": _shape(args[0])})
        elif name in MOVES:
            ins = [a for a in tree_flatten((args, kwargs))[0] if isinstance(a, Tensor)]
            self._propagate(ins, out)
            if self.grid is not None and ins and all(a in self.scaled for a in ins if a.is_floating_point()):
                for o in tree_flatten(out)[0]:
                    if isinstance(o, Tensor) and o.is_floating_point():
                        self.scaled[o] = True
        elif name in ("mul", "div") and self.grid is not None and isinstance(out, Tensor) and len(args) == 2:
            x, c = args if name == "div" or isinstance(args[0], Tensor) and args[0].dim() else args[::-1]
            number = isinstance(c, (int, float)) or (isinstance(c, Tensor) and c.numel() == 1)
            if number and isinstance(x, Tensor) and x.dim() and (x in self.scaled or self._on_grid(x)):
                self.scaled[out] = True
        return out

    def _on_grid(self, t: Any) -> bool | str | None:
        """Whether the reference cast leaves ``t``'s finite values unchanged: ``True``, ``"scaled"`` (a number
        times a tensor it leaves unchanged: a point's output scaled before the GEMM), ``False``; ``None``: no
        floating tensor."""
        if not isinstance(t, Tensor) or not t.is_floating_point():
            return None
        if t in self.scaled:
            return "scaled"
        with torch.utils._python_dispatch._disable_current_modes():
            x = t.detach()
            fin = torch.isfinite(x)
            return bool(torch.equal(self.grid(x)[fin], x[fin]))

    def module(self) -> str:
        return next((n for n in reversed(self.stack) if n is not None), "")

    def chain(self) -> list[str]:
        return [n for n in self.stack if n is not None]

    # -- module hooks and point observers --------------------------------------------------------
    def _pre(self, mod: nn.Module, args: Any) -> None:
        self.stack.append(self.names.get(id(mod)))

    def _post(self, mod: nn.Module, args: Any, out: Any) -> None:
        if self.stack:
            self.stack.pop()
        names = self.quantizers.get(id(mod))
        if names is not None and isinstance(out, Tensor):
            self.taint[out] = ("quant", names)

    def _observer(self, module: str, point: str):
        def observe(x: Any) -> None:
            if not isinstance(x, Tensor) or not x.is_floating_point():
                return
            ev: dict[str, Any] = {"kind": "point", "module": module, "point": point, "shape": list(x.shape)}
            if point == "probs" and x.numel():
                xf = x.detach().float()
                rs = xf.sum(-1)
                live = rs != 0
                ev.update(min=xf.min().item(), max=xf.max().item(), zero_rows=int((~live).sum()),
                          rowsum_dev=(rs[live] - 1).abs().max().item() if live.any() else 0.0,
                          rowsum_max=rs.max().item())
            self.events.append(ev)
            if point in ("scores", "context"):
                last = next((e for e in reversed(self.events) if e["kind"] == "gemm"), None)
                if last is not None and last["result"] is None:
                    last["result"] = point
            else:
                self.pending.append(point)
        return observe

    def __enter__(self) -> Probe:
        self._hooks = [module_mod.register_module_forward_pre_hook(self._pre),
                       module_mod.register_module_forward_hook(self._post, always_call=True)]
        self._labels.__enter__()
        return super().__enter__()

    def __exit__(self, *exc: Any) -> None:
        try:
            super().__exit__(*exc)
        finally:
            self._labels.__exit__(*exc)
            for h in self._hooks:
                h.remove()


class _Labels(TorchFunctionMode):
    """Names the outermost torch function behind each aten call (``probe.fn``)."""

    def __init__(self, probe: Probe) -> None:
        super().__init__()
        self.probe = probe

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.probe.fn is not None:
            return func(*args, **kwargs)
        self.probe.fn = _fn_name(func, args)
        try:
            return func(*args, **kwargs)
        finally:
            self.probe.fn = None


def pattern(name: str) -> str:
    """A module name with its layer indices folded (``model.layers.*.mlp``)."""
    return re.sub(r"(?<=\.)\d+(?=\.|$)", "*", name)


def attention_like(events: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """Modules that own a softmax and two activation-by-activation matmuls, or a fused attention call."""
    per: dict[str, Counter] = defaultdict(Counter)
    for e in events:
        if e["kind"] == "softmax":
            per[e["module"]]["softmax"] += 1
        elif e["kind"] == "gemm" and e["op"] in FUSED:
            per[e["module"]]["fused"] += 1
        elif e["kind"] == "gemm" and e["op"] != "convolution" and e["float"] and not any(e["sources"][:2]):
            per[e["module"]]["act_matmuls"] += 1
    return {m: dict(c) for m, c in per.items() if c["fused"] or (c["softmax"] and c["act_matmuls"] >= 2)}


def sequences(events: list[dict[str, Any]], scopes: set[str], types: dict[str, str]) -> dict[str, list[str]]:
    """Per attention class: the GEMM / softmax calls of its first forward, in order.

    A token is ``<submodule relative to the attention module>:<torch function>`` plus, inside a session,
    the attention roles the scope gave the call (``q+k->scores``).
    """
    out: dict[str, list[str]] = {}
    current: str | None = None
    for e in events:
        if e["kind"] not in ("gemm", "softmax"):
            continue
        scope = next((m for m in e["stack"] if m in scopes), None)
        if scope != current:
            current = scope
            if scope is not None and types[scope] in out:
                current = None  # only the first forward of each class
            elif scope is not None:
                out[types[scope]] = []
        if current is None or scope is None:
            continue
        rel = e["module"][len(scope) + 1:] if e["module"] != scope else "."
        if e["kind"] == "softmax":
            tok = f"{rel}:softmax"
        else:
            tok = f"{rel}:{e['fn'] or '?'}->{e['op']}"
            if e.get("roles") or e.get("result"):
                tok += f"[{'+'.join(e['roles'])}->{e['result']}]"
        out[types[scope]].append(tok)
    return out


def point_checks(events: list[dict[str, Any]], sinks: bool = False) -> dict[str, Counter]:
    """Per attention module: violations of what the six point names promise (message -> count).

    ``sinks``: the attention has sinks (GPT-OSS: a softmax over the scores and a sink column, which is then
    dropped), so a row of probabilities sums to at most 1 instead of exactly 1.
    """
    last: dict[str, dict[str, list[int]]] = defaultdict(dict)
    bad: dict[str, Counter] = defaultdict(Counter)
    for e in events:
        if e["kind"] != "point":
            continue
        m, p, s = e["module"], e["point"], e["shape"]
        seen = last[m]
        seen[p] = s
        q, k, sc, pr, v = (seen.get(n) for n in ("q", "k", "scores", "probs", "v"))
        if p == "scores" and q and k:
            if len(q) < 2 or len(k) < 2 or len(s) < 2:
                bad[m][f"scores: q {q}, k {k}, scores {s} are not matrices"] += 1
                continue
            D, L, S = q[-1], q[-2], s[-1]
            if D not in (k[-1], k[-2]):
                bad[m][f"q/k do not share the head dim: q {q}, k {k}"] += 1
            elif not ((k[-2], k[-1]) in ((S, D), (D, S)) and s[-2] == L):
                bad[m][f"scores {s} is not (L, S) for q {q}, k {k}"] += 1
        elif p == "probs":
            if e.get("min", 0.0) < -1e-6 or e.get("max", 0.0) > 1 + 1e-6:
                bad[m][f"probs {s} outside [0, 1]: min {e['min']:.3g}, max {e['max']:.3g}"] += 1
            elif sinks and e.get("rowsum_max", 0.0) > 1 + 1e-3:
                bad[m][f"probs {s} rows sum to more than 1 ({e['rowsum_max']:.3g})"] += 1
            elif not sinks and e.get("rowsum_dev", 0.0) > 1e-3:
                bad[m][f"probs {s} rows do not sum to 1 (max |sum-1| {e['rowsum_dev']:.3g})"] += 1
            if sc and (len(sc) < 2 or len(s) < 2 or sc[-2:] != s[-2:]):
                bad[m][f"scores {sc} not shaped like probs {s}"] += 1
        elif p == "v" and pr and (len(s) < 2 or s[-2] != pr[-1]):
            bad[m][f"v {s}: axis -2 is not the key length {pr[-1]} of probs {pr}"] += 1
        elif p == "context" and pr and v and (len(s) < 2 or s[-1] != v[-1] or s[-2] != pr[-2]):
            bad[m][f"context {s} is not (L={pr[-2]}, Dv={v[-1]}) for probs {pr}, v {v}"] += 1
    return bad


def einsum_axes(eq: str, roles: list[str]) -> list[str]:
    """For an intercepted einsum: operands whose reduction index is not their last axis (blocks run on -1)."""
    m = re.fullmatch(r"([a-zA-Z]+),([a-zA-Z]+)->([a-zA-Z]*)", eq)
    if not m:
        return [f"einsum {eq!r} not parsed"]
    a, b, c = m.groups()
    red = set(a) & set(b) - set(c)
    out = []
    for sub, role in zip((a, b), roles or ("?", "?")):
        if sub[-1] not in red:
            axes = [i - len(sub) for i, ch in enumerate(sub) if ch in red]
            out.append(f"{role} '{sub}': contracted over axis {axes}, not the last ('{sub[-1]}')")
    return out
