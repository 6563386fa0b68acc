"""Benchmark: a QAT training step (forward + backward) of torchvision resnet50, batch 8, 224x224, CPU.

    PYTHONPATH=. .venv/bin/python tools/bench_training.py [--batch 8] [--rounds 3] [--clock wall|cpu]
        [--backend auto|eager|compiled] [--json]

Two figures, each a ratio to the plain (un-instrumented) step measured in the same run:

* **step time**: ``loss = model(x).square().mean(); loss.backward()`` with the gradients
  zeroed (``set_to_none``) before each step, no optimizer; the configurations are
  interleaved in ``--rounds`` rounds and each keeps its fastest step (the first round's
  first step, which may compile kernels, is an untimed warm-up); ``--clock cpu`` times this
  thread's CPU time with one torch thread (what a machine shared with other jobs disturbs
  least; the backward of a CPU graph runs on the calling thread);
* **peak memory**: the peak of live CPU allocator bytes during one step, from
  ``torch.profiler.profile(profile_memory=True)``: its allocator records (every
  allocation and free of the step, in time order) are summed and the running maximum is
  the peak; the parameters and the input, allocated before the step, are not counted, so the
  figure is what the step itself needs (activations saved for backward, gradients,
  temporaries).

Targets (issue 19): e4m3 on every conv/linear input, weight and output: step <= 1.4x,
peak memory <= 1.3x.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch
import torchvision
from _timing import CLOCKS, span, summary
from _timing import Target as Met  # tools/ is on sys.path when a script runs
from torch.profiler import ProfilerActivity, profile

import qsim_hooks as qh

TIME_TARGET, MEMORY_TARGET = 1.4, 1.3


def _step(model: torch.nn.Module, x: torch.Tensor) -> None:
    model.zero_grad(set_to_none=True)
    model(x).square().mean().backward()


def _timed_step(model: torch.nn.Module, x: torch.Tensor, clock=time.perf_counter) -> float:
    t0 = clock()
    _step(model, x)
    return clock() - t0


def peak_bytes(model: torch.nn.Module, x: torch.Tensor) -> int:
    """Peak live CPU allocator bytes during one step (allocations before it not counted)."""
    model.zero_grad(set_to_none=True)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        _step(model, x)
    model.zero_grad(set_to_none=True)
    # the raw allocator records (prof.events() folds those inside an op into the op's totals)
    records = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                     key=lambda e: e.start_ns())
    live = peak = 0
    for e in records:
        live += e.nbytes()
        peak = max(peak, live)
    return peak


def run(batch: int, rounds: int, size: int, clock=time.perf_counter) -> list[dict]:
    torch.manual_seed(0)
    model = torchvision.models.resnet50().train()
    x = torch.randn(batch, 3, size, size)
    configs = [("plain step", None),
               ("e4m3 input/weight/output", qh.QuantConfig(input="e4m3", weight="e4m3", output="e4m3"))]
    best = {label: float("inf") for label, _ in configs}
    per_round: dict[str, list[float]] = {label: [] for label, _ in configs}
    peaks: dict[str, int] = {}
    for rnd in range(rounds):
        for label, cfg in configs:
            session = qh.attach(model, cfg) if cfg is not None else None
            try:
                if rnd == 0:
                    _step(model, x)  # warm-up (kernel compiles, allocator)
                    peaks[label] = peak_bytes(model, x)
                per_round[label].append(_timed_step(model, x, clock))
                best[label] = min(best[label], per_round[label][-1])
            finally:
                if session is not None:
                    session.detach()
    base_t, base_m = best[configs[0][0]], peaks[configs[0][0]]
    rows = []
    for label, _ in configs:
        rows.append({"config": label, "step_s": best[label], "time_ratio": best[label] / base_t,
                     "range": span(t / b for t, b in zip(per_round[label], per_round[configs[0][0]])),
                     "peak_mib": peaks[label] / 2**20, "memory_ratio": peaks[label] / base_m})
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                    help="wall: elapsed time; cpu: this thread's CPU time, with one torch thread")
    ap.add_argument("--backend", choices=("auto", "eager", "compiled"), default="auto",
                    help="kernel backend (default auto: eager until compiling a kernel pays, which may land part-way "
                         "through the rounds; compiled: fused from the warm-up on)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    qh.formats.set_backend(args.backend)
    if args.clock == "cpu":
        torch.set_num_threads(1)
    rows = run(args.batch, args.rounds, args.size, CLOCKS[args.clock])
    q = rows[-1]
    what = f"resnet50 b{args.batch} {args.size}px QAT step"
    targets = [Met(f"{what} time, e4m3 everywhere", q["time_ratio"], TIME_TARGET, *q["range"]),
               Met(f"{what} peak memory, e4m3 everywhere", q["memory_ratio"], MEMORY_TARGET)]
    if args.json:
        print(json.dumps(rows, indent=2))
        summary(targets, "issue 19 training targets", out=sys.stderr)
        return 0
    print(f"resnet50 QAT step (forward + backward), batch {args.batch}, {args.size}x{args.size}, CPU, "
          f"{torch.get_num_threads()} threads, {args.clock} clock, kernels={qh.formats.get_backend()}; fastest of "
          f"{args.rounds} "
          "interleaved rounds; peak = max live CPU allocator bytes during one step (torch.profiler)")
    print(f"{'config':<28} {'step ms':>9} {'x plain':>8} {'peak MiB':>9} {'x plain':>8}")
    for r in rows:
        print(f"{r['config']:<28} {r['step_s'] * 1e3:>9.1f} {r['time_ratio']:>7.2f}x {r['peak_mib']:>9.1f} "
              f"{r['memory_ratio']:>7.2f}x")
    summary(targets, "issue 19 training targets")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
