"""What the always-on GEMM interception (coverage accounting) costs, as a fraction of a plain forward.

Issue 11's target: the coverage accounting costs at most 2% of a forward when stats are off. The
interception (:mod:`qsim_hooks.intercept`) is one ``TorchFunctionMode`` entered at the model's forward: it
sees every torch function call, reads every GEMM's operands (which point produced each, whether it is a
registered weight used functionally) and counts the call (:class:`qsim_hooks.coverage.Recorder`). On models
whose every GEMM runs inside its own layer (resnet50's convs, BERT's Linears with attention off) it changes
no value, so the same session can run without it: this script times, interleaved in rounds,

- the un-instrumented forward,
- the session as it is (``qh.quantized(model, cfg, stats=False)``),
- the same session with the interception not attached (a patched ``attach_interception``; outputs checked
  bit-identical to the session's, or the row is not reported),
- the same session with only the per-call record (``Recorder.add``) made a no-op,

and prints (session - no interception) / plain (the interception's cost) and (session - no record) / plain
(the bookkeeping alone): the median of the per-round paired differences (each config's minimum over
``--calls`` calls in that round), their quartiles, and the difference of the overall minima.

    PYTHONPATH=. .venv/bin/python tools/bench_coverage.py [--rounds 5] [--calls 2] [--threads 1 --clock cpu]
        [--backend compiled|auto|eager] [--only resnet|bert]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import platform
import statistics
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any
from unittest import mock

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _timing import CLOCKS, best_time  # noqa: E402  (tools/ is on sys.path when a script runs)

import qsim_hooks as qh  # noqa: E402
from qsim_hooks import coverage, reuse, session  # noqa: E402
from qsim_hooks.undo import UndoStack  # noqa: E402

TARGET = 0.02  # issue 11: at most 2% of a forward


def _models() -> list[tuple[str, torch.nn.Module, Callable[[], Any], qh.QuantConfig]]:
    import torchvision
    from transformers import BertConfig, BertModel  # deferred: benchmark-only dependency

    torch.manual_seed(0)
    r50 = torchvision.models.resnet50().eval()
    x = torch.randn(8, 3, 224, 224)
    bcfg = BertConfig(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024,
                      vocab_size=1000)
    bcfg._attn_implementation = "sdpa"
    bert = BertModel(bcfg).eval()
    ids = torch.randint(0, 1000, (8, 128))
    e4m3 = qh.QuantConfig(input="e4m3", weight="e4m3", output="e4m3")
    linears = qh.QuantConfig(input="e4m3", weight="e4m3", output="e4m3", attention=None)
    return [("resnet50 b8 224, e4m3 input/weight/output", r50, lambda: r50(x), e4m3),
            ("BERT 4x256 seq 128 b8 sdpa, e4m3 Linears (attention=None)", bert, lambda: bert(ids), linears)]


def _first(out: Any) -> torch.Tensor:
    return out if isinstance(out, torch.Tensor) else out[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--calls", type=int, default=2)
    ap.add_argument("--only", choices=("resnet", "bert"))
    ap.add_argument("--backend", choices=("auto", "eager", "compiled"), default="compiled",
                    help="kernel backend, pinned for the run (default compiled: auto switches from eager to "
                         "compiled part-way, which would land in some rounds and not others)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1, with the CPU clock)")
    ap.add_argument("--clock", choices=tuple(CLOCKS), default="cpu",
                    help="cpu (default): this thread's CPU time, all the work with --threads 1, and what a "
                         "machine shared with other jobs disturbs least; wall: elapsed time")
    args = ap.parse_args()
    if args.clock == "cpu" and args.threads != 1:
        ap.error("--clock cpu measures one thread: use it with --threads 1")
    torch.set_num_threads(args.threads)
    clock = CLOCKS[args.clock]
    qh.formats.set_backend(args.backend)
    warnings.filterwarnings("ignore", category=RuntimeWarning)  # coverage / flush warnings: not about time
    now = datetime.datetime.now(datetime.timezone.utc)
    print(f"{now:%Y-%m-%d %H:%M} UTC, {platform.processor() or platform.machine()}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), {args.clock} clock, "
          f"kernels {args.backend}, "
          f"load {os.getloadavg()[0]:.1f}")
    variants = {"plain": None, "session": contextlib.nullcontext,
                "no interception": lambda: mock.patch.object(session, "attach_interception",
                                                             lambda *a, **k: UndoStack()),
                "no record": lambda: mock.patch.object(coverage.Recorder, "add", lambda self, *a, **k: None)}
    with torch.no_grad():
        for label, model, run, cfg in _models():
            if args.only and not label.lower().startswith(args.only):
                continue
            outs: dict[str, torch.Tensor] = {}
            times: dict[str, list[float]] = {k: [] for k in variants}
            # without the interception nothing clears the reuse cache at the end of a forward (its hook does):
            # clear it after each call, as the session does, or a later forward could be handed stale results
            bare = lambda run=run: (run(), reuse.forget())[0]  # noqa: E731
            for _ in range(args.rounds):
                for name, patch in variants.items():
                    if patch is None:
                        times[name].append(best_time(run, args.calls, 1, clock))
                        continue
                    call = bare if name == "no interception" else run
                    with patch(), qh.quantized(model, cfg, stats=False):
                        outs.setdefault(name, _first(call()).clone())
                        times[name].append(best_time(call, args.calls, 1, clock))
            print(f"\n{label}")
            best = {k: min(v) for k, v in times.items()}
            for name in variants:
                print(f"  {name:16s} {best[name] * 1e3:8.1f} ms  {best[name] / best['plain']:.3f}x plain")
            for name, what in (("no interception", "the interception (accounting + operand reading)"),
                               ("no record", "the per-call record alone")):
                if not torch.equal(outs[name], outs["session"]):
                    print(f"  {what}: not reported (outputs differ without it: the interception does work here)")
                    continue
                # per round, the paired difference (the same spell of the machine hits both): its median and
                # quartiles; and the difference of the minima
                per = sorted((s - o) / p for s, o, p in zip(times["session"], times[name], times["plain"]))
                med, q1, q3 = (statistics.median(per), *statistics.quantiles(per, n=4)[::2]) if len(per) > 1 \
                    else (per[0], per[0], per[0])
                cost = (best["session"] - best[name]) / best["plain"]
                verdict = "met" if med <= TARGET else "not met"
                print(f"  {what}: median {100 * med:+.1f}% of a plain forward over {len(per)} rounds "
                      f"(quartiles {100 * q1:+.1f}% .. {100 * q3:+.1f}%; minima {100 * cost:+.1f}%), "
                      f"target <= {100 * TARGET:.0f}%: {verdict}")
    print(f"\nload at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
