"""Issue 12, item 4: threads. While a session is attached, the model is quantized in every thread.

Hooks and parametrizations belong to the module, so whichever thread runs an instrumented module
runs its points; the attention scope is entered by that same thread (torch's function-mode stack
and the scope stack are per thread), so attention internals follow the same rule. This is what
``nn.DataParallel`` needs (it runs its replicas in threads). Checked here: a second thread gets the
same quantized result as the thread that attached (layers and attention points), threads running
at once each get it and their statistics add up exactly, a thread running after detach gets full
precision, and ``nn.DataParallel`` on CPU (no accelerator: it runs the module itself, in the
calling thread) gives the session's result.
"""

from __future__ import annotations

import threading

import pytest
import torch
from torch import nn

import qsim_hooks as qh


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(16, 16)
        self.attn = nn.MultiheadAttention(16, 2, batch_first=True)
        self.head = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc(x)
        h, _ = self.attn(h, h, h, need_weights=False)
        return self.head(h)


CFG = qh.QuantConfig(input="e4m3", weight="e4m3", output="e4m3",
                     rules=[qh.Rule(match="*attn", probs="e2m1", scores="e3m2")])


def _net() -> tuple[Net, torch.Tensor]:
    torch.manual_seed(0)
    return Net().eval(), torch.randn(2, 5, 16)


def _in_thread(fn, *args):
    out: dict[str, object] = {}

    def run() -> None:
        try:
            with torch.no_grad():
                out["y"] = fn(*args)
        except BaseException as exc:  # surfaced in the main thread
            out["error"] = exc

    t = threading.Thread(target=run)
    t.start()
    t.join()
    if "error" in out:
        raise out["error"]  # type: ignore[misc]
    return out["y"]


def test_a_second_thread_gets_the_quantized_model_attention_included():
    model, x = _net()
    with torch.no_grad():
        full = model(x)
        with qh.quantized(model, CFG, stats=True) as qs:
            main = model(x)
            other = _in_thread(model, x)
            attn_calls = {r["point"]: r["calls"] for r in qs.stats()
                          if r["module"] == "attn" and r["point"] != "weight"}
        after = _in_thread(model, x)
    assert not torch.equal(main, full)
    assert torch.equal(other, main)
    # the attention scope ran in the second thread too: each internal point was called once per thread
    assert attn_calls == {p: 2 for p in ("input", "output", "q", "k", "scores", "probs", "v", "context")}
    assert torch.equal(after, full)  # detached: every thread is back to full precision


def test_attention_points_off_in_the_second_thread_only_change_when_configured():
    """The attention rule's formats are what makes the outputs differ; without them both threads agree
    with a session that has no attention points (so the second thread really ran the scope)."""
    model, x = _net()
    no_attn = qh.QuantConfig(input="e4m3", weight="e4m3", output="e4m3", attention=None)
    with torch.no_grad():
        with qh.quantized(model, no_attn):
            plain = _in_thread(model, x)
        with qh.quantized(model, CFG):
            scoped = _in_thread(model, x)
    assert not torch.equal(plain, scoped)


def test_threads_running_at_once_each_get_the_result_and_their_stats_add_up():
    model, x = _net()
    n_threads, n_calls = 6, 30
    barrier = threading.Barrier(n_threads)
    results: list[list[torch.Tensor]] = [[] for _ in range(n_threads)]
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            with torch.no_grad():
                barrier.wait()
                for _ in range(n_calls):
                    results[i].append(model(x))
        except BaseException as exc:
            errors.append(exc)

    with torch.no_grad(), qh.quantized(model, CFG) as ref_qs:
        ref = model(x)
    with qh.quantized(model, CFG, stats=True) as qs:
        threads = [threading.Thread(target=work, args=(i,)) for i in range(n_threads)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not errors, errors
    assert ref_qs.attached is False
    for outs in results:
        assert len(outs) == n_calls and all(torch.equal(y, ref) for y in outs)
    total = n_threads * n_calls
    with torch.no_grad(), qh.quantized(model, CFG, stats=True) as one:
        model(x)
    per_call = {(r["module"], r["point"], r["tensor"]): r["numel"] for r in one.stats()}
    for r in qs.stats():
        if r["point"] != "weight":  # a weight point counts its quantizations of the weight
            assert r["calls"] == total, r
            assert r["numel"] == total * per_call[(r["module"], r["point"], r["tensor"])], r


def test_data_parallel_on_cpu_runs_the_module_in_the_calling_thread_quantized():
    """On a machine without an accelerator nn.DataParallel keeps no device ids and calls the module itself;
    a session on the wrapped model (or on the wrapper: names get a ``module.`` prefix) applies."""
    if torch.accelerator.is_available():
        pytest.skip("on an accelerator DataParallel scatters to replicas; this checks its CPU behaviour")
    model, x = _net()
    with torch.no_grad(), qh.quantized(model, CFG):
        ref = model(x)
    dp = nn.DataParallel(model)
    assert dp.device_ids == []
    with torch.no_grad():
        with qh.quantized(model, CFG):
            inner = dp(x)
            in_thread = _in_thread(dp, x)
        with qh.quantized(dp, CFG) as qs:
            outer = dp(x)
        assert {e.module for e in qs.plan.entries} >= {"module.fc", "module.attn", "module.head"}
        assert torch.equal(dp(x), model(x))  # detached
    assert torch.equal(inner, ref) and torch.equal(in_thread, ref) and torch.equal(outer, ref)
