"""Attention points on real model code: every zoo architecture, every implementation (tests/zoo).

Per case and implementation, checked against the model run plainly and against tensors computed here,
not against the library's own bookkeeping:

* the plan finds exactly the case's attention classes;
* inside an identity session (fp32 everywhere) an observer on each of the six points of every attention
  module sees what the point's name says: q and k share the head dimension and are no weight of the
  model, scores is (L, S) for them and proportional to q·kᵀ (where no bias is folded into the product),
  probs are probabilities (in [0, 1], rows summing to 1; to 0 for a fully masked row of a decomposed
  SDPA; to at most 1 for GPT-OSS's sinks) shaped like scores, v's axis -2 is the key length, and context
  is probs·v; in the eager implementations probs are bit for bit a softmax output of the plain model (in
  the SDPA ones, close to the eager build's on the rows both compute); DeBERTa's k is the key projection
  itself (not kᵀ/scale);
* the output is bit-identical to the plain model (eager) or within 1e-5 (SDPA), e4m3 on the six points
  changes it, generation with a KV cache gives the plain tokens, nothing is left on the model, and the
  only attention warnings are DeBERTa's (its c2p/p2c products are left alone, named once per module).
"""

from __future__ import annotations

import functools
import warnings
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

import qsim_hooks as qh
from tests.core.model_check import snapshot, verify_unchanged
from tests.zoo import CASES, impl_cases, outputs
from tests.zoo.test_zoo_builds import _one_thread  # noqa: F401  (autouse: tiny models run on one thread)

pytest.importorskip("transformers")
pytest.importorskip("diffusers")

POINTS = ("q", "k", "scores", "probs", "v", "context")
IDENTITY = qh.QuantConfig(input="fp32", weight="fp32", output="fp32")
E4M3 = qh.QuantConfig(rules=[qh.Rule(**{p: "e4m3" for p in POINTS})])
SDPA_RTOL = 1e-5
#: eager paths whose Q·Kᵀ is a baddbmm folding a scale and a bias into the product (BLOOM's ALiBi,
#: diffusers' AttnProcessor): scores is not proportional to q·kᵀ there
FOLDED = {("bloom", "eager"), ("unet", "eager"), ("dit", "eager")}
#: rows of probs that may sum to less than 1 (attention sinks take the rest)
SINKS = {"gpt_oss"}
#: cases whose plain eager and SDPA builds may compute different attention (transformers' Falcon with ALiBi
#: scaled the ALiBi bias in eager only, in some versions): where the plain builds' outputs differ, their SDPA
#: probabilities are not compared with the eager ones (where they agree, they are)
EAGER_SDPA_DIFFER = {"falcon_alibi"}
#: cases whose attention does not fit Q·Kᵀ -> softmax -> P·V, and what their warning must say
MISFIT = {"deberta_v2": "2 other product(s) [torch.bmm x2] took no attention point (their operands came quantized"}


class _Softmaxes(TorchFunctionMode):
    """The plain model's softmax outputs, per attention module (its first forward), recorded independently."""

    def __init__(self, model: nn.Module, names: set[str]) -> None:
        super().__init__()
        self.current: list[str] = []
        self.out: dict[str, Tensor] = {}
        self.handles = []
        for n, m in model.named_modules():
            if n in names:
                self.handles.append(m.register_forward_pre_hook(lambda mod, a, n=n: self.current.append(n)))
                self.handles.append(m.register_forward_hook(lambda mod, a, o: self.current.pop() and None))

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func in (F.softmax, torch.softmax, Tensor.softmax) and self.current:
            self.out.setdefault(self.current[-1], out.detach().clone())
        return out


def _rel(a: list[Tensor], b: list[Tensor]) -> float:
    assert len(a) == len(b) and a
    return max(((x - y).abs().max() / y.abs().max().clamp_min(1e-30)).item() for x, y in zip(a, b))


def _heads_like(x: Tensor, like: Tensor) -> Tensor:
    """``x`` with its head axis (-3) repeated to ``like``'s (grouped-query K/V before the decomposition)."""
    if x.dim() >= 3 and like.dim() >= 3 and x.shape[-3] not in (1, like.shape[-3]):
        return x.repeat_interleave(like.shape[-3] // x.shape[-3], dim=-3)
    return x


def _close(got: Tensor, want: Tensor, what: str) -> None:
    got, want = got.double(), want.double()
    err = ((got - want).abs().max() / want.abs().max().clamp_min(1e-30)).item()
    assert err <= 1e-5, f"{what}: max rel error {err:.3g}"


def check_points(seen: dict[str, Tensor], name: str, impl: str, params: list[Tensor]) -> None:
    """What one module's six points saw (first forward) against what their names say."""
    q, k, s, p, v, c = (seen[n] for n in POINTS)
    assert q.shape[-1] == k.shape[-1], f"q {list(q.shape)} and k {list(k.shape)} do not share the head dim"
    for n, t in (("q", q), ("k", k), ("v", v)):
        assert not any(w.shape == t.shape and torch.equal(w, t) for w in params), f"{n} is a weight of the model"
    assert s.shape[-2:] == (q.shape[-2], k.shape[-2]), f"scores {list(s.shape)} not (L, S) for q, k"
    assert s.shape[-2:] == p.shape[-2:], f"scores {list(s.shape)} not shaped like probs {list(p.shape)}"
    if (name, impl) not in FOLDED:
        r = q.double() @ _heads_like(k, q).double().mT
        scale = ((s.double() * r).sum() / (r * r).sum()).item()
        _close(s, scale * r, "scores vs q·kᵀ")
    assert p.min() >= 0 and p.max() <= 1, f"probs outside [0, 1]: [{p.min():.3g}, {p.max():.3g}]"
    rows = p.double().sum(-1)
    ok = ((rows - 1).abs() <= 1e-5) | (rows == 0)
    if name in SINKS:
        ok = rows <= 1 + 1e-5
    assert ok.all(), f"probs rows sum to {rows[~ok][:4].tolist()}"
    assert v.shape[-2] == p.shape[-1], f"v {list(v.shape)}: axis -2 is not the key length of probs {list(p.shape)}"
    assert c.shape[-1] == v.shape[-1] and c.shape[-2] == p.shape[-2], f"context {list(c.shape)}"
    _close(c, p.double() @ _heads_like(v, p).double(), "context vs probs·v")


def _observe(qs: Any, seen: dict[str, dict[str, Tensor]], counts: dict[tuple[str, str], int]):
    def obs(module: str, point: str):
        def fn(x: Any) -> None:
            counts[(module, point)] = counts.get((module, point), 0) + 1
            seen.setdefault(module, {}).setdefault(point, x.detach().clone())
        return fn
    return qs.observe({k: obs(k[0], k[1]) for k in qs.points if k[1] in POINTS})


@functools.cache
def _eager(name: str) -> tuple[dict[str, Tensor], list[Tensor]]:
    """The eager build's softmax outputs and model outputs (for an SDPA build's decomposed probabilities)."""
    case = CASES[name]
    m = case.build("eager")
    names = {n for n, x in m.named_modules() if type(x).__name__ in case.attention}
    rec = _Softmaxes(m, names)
    with rec:
        out = outputs(case.run(m))
    for h in rec.handles:
        h.remove()
    return rec.out, out


def _deberta_keys(m: nn.Module, case: Any) -> dict[str, Tensor]:
    """DeBERTa's key layers computed from the plain model: key_proj's first output, split into heads."""
    keys: dict[str, Tensor] = {}
    handles = []
    for n, x in m.named_modules():
        if type(x).__name__ == "DisentangledSelfAttention":
            def grab(mod, a, out, n=n, heads=x.num_attention_heads):
                b, t, _ = out.shape
                keys.setdefault(n, out.view(b, t, heads, -1).permute(0, 2, 1, 3).reshape(b * heads, t, -1))
            handles.append(x.key_proj.register_forward_hook(grab))
    case.run(m)
    for h in handles:
        h.remove()
    return keys


@pytest.mark.parametrize("name,impl", impl_cases(), ids=[f"{n}-{i}" for n, i in impl_cases()])
def test_attention_points_see_what_their_names_say(name, impl):
    case = CASES[name]
    m = case.build(impl)
    names = {n for n, x in m.named_modules() if type(x).__name__ in case.attention}
    plan = qh.plan(m, IDENTITY)
    assert {e.module for e in plan if e.point == "q"} == names
    # the plain model, with its softmax outputs recorded
    rec = _Softmaxes(m, names)
    with rec:
        ref = outputs(case.run(m))
    for h in rec.handles:
        h.remove()
    snap, depth = snapshot(m), torch._C._len_torch_function_stack()
    seen: dict[str, dict[str, Tensor]] = {}
    counts: dict[tuple[str, str], int] = {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with qh.quantized(m, IDENTITY) as qs:
            with _observe(qs, seen, counts):
                got = outputs(case.run(m))
            generated = case.generate(m) if case.generate is not None else None
    verify_unchanged(m, snap)
    assert torch._C._len_torch_function_stack() == depth
    # identity formats: the plain model's output
    if impl in case.exact:
        assert all(torch.equal(a, b) for a, b in zip(got, ref)), f"max rel diff {_rel(got, ref):.3g}"
    else:
        assert _rel(got, ref) <= SDPA_RTOL
    # every point of every attention module fired, and saw its tensor
    assert {mod for mod, _ in counts} == names and all(counts.get((mod, p)) for mod in names for p in POINTS)
    params = list(m.parameters())
    eager = None
    if impl.partition("+")[0] == "sdpa" and "eager" in case.impls:
        eager, eager_out = _eager(name)
        if name in EAGER_SDPA_DIFFER and _rel(ref, eager_out) > 1e-3:  # (transformers versions differ here)
            eager = None
    for mod in sorted(names):
        check_points(seen[mod], name, impl, params)
        probs = seen[mod]["probs"]
        if impl in case.exact:  # the very softmax output of the plain model (GPT-OSS: without its sink column)
            want = rec.out[mod][..., :probs.shape[-1]].reshape(probs.shape)
            assert torch.equal(probs, want), f"{mod}: probs are not the plain model's softmax output"
        elif eager is not None:  # the eager build's, on the rows both compute (not fully masked ones)
            want = eager[mod][..., :probs.shape[-1]].reshape(probs.shape)
            live = probs.sum(-1) > 0.5
            assert live.any() and torch.allclose(probs[live], want[live], atol=1e-6)
    if name.startswith("falcon"):  # q is a head of the query (not the hidden states), and so is k (no weight)
        hd = m.config.hidden_size // m.config.num_attention_heads
        assert all(seen[mod]["q"].shape[-1] == seen[mod]["k"].shape[-1] == hd != m.config.hidden_size
                   for mod in names)
    if name == "deberta_v2":
        keys = _deberta_keys(m, case)
        assert all(torch.equal(seen[mod]["k"], keys[mod]) for mod in names)  # k itself, not kᵀ / scale
    # warnings: none where the attention fits; one per module naming it where it does not
    msgs = [str(w.message) for w in caught if str(w.message).startswith("qsim_hooks: attention module")]
    if name in MISFIT:
        assert sorted(msgs) == sorted(set(msgs)) and len(msgs) == len(names)
        assert all(any(repr(mod) in w for w in msgs) for mod in names) and all(MISFIT[name] in w for w in msgs)
    else:
        assert not msgs, msgs
    # generation with a KV cache inside the session: the plain tokens
    if case.generate is not None:
        assert torch.equal(generated, case.generate(m))
    # a real format on the six points changes the output
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with qh.quantized(m, E4M3):
            low = outputs(case.run(m))
    verify_unchanged(m, snap)
    assert all(torch.isfinite(t).all() for t in low) and _rel(low, ref) > 0
