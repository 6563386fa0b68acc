"""Benchmark: the first quantized forward of a new process, and a small job's wall time, eager vs compiled.

    PYTHONPATH=. .venv/bin/python tools/bench_first_use.py [--later 5] [--cold] [--clock wall|cpu]

Each configuration runs in fresh Python processes (what a user's script or a CLI command is):
torchvision resnet18 (random weights, batch 1, 224x224, CPU eval, no_grad) under
``qh.quantized(model, input="e4m3", weight="e4m3", output="e4m3")``; the child times its first
forward and ``--later`` forwards after it, and the parent times the whole child (interpreter start,
imports, model build, every forward). ``--clock cpu``: the forwards are timed by the child's CPU time
with one torch thread (what a machine shared with other jobs disturbs least; the job's wall time stays).
Every configuration runs twice: once to warm inductor's persistent cache, once measured (``--cold`` adds
a run with an empty cache directory of its own).

Backends: ``auto`` (the default: eager until compiling pays), ``eager``, ``compiled`` (every
kernel fused from the first call). Target (issue 19): with a warm cache, a new process's first
quantized forward <= 2x its later ones (the default backend).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

from _timing import Target as Met  # tools/ is on sys.path when a script runs
from _timing import span, summary

TARGET = 2.0

CHILD = r"""
import json, sys, time
import torch, torchvision
import qsim_hooks as qh
qh.formats.set_backend(sys.argv[1])
clock = time.perf_counter
if sys.argv[3] == "cpu":
    torch.set_num_threads(1)
    clock = time.thread_time
torch.manual_seed(0)
model = torchvision.models.resnet18().eval()
x = torch.randn(1, 3, 224, 224)
times = []
with torch.no_grad(), qh.quantized(model, input="e4m3", weight="e4m3", output="e4m3"):
    for _ in range(1 + int(sys.argv[2])):
        t0 = clock()
        model(x)
        times.append(clock() - t0)
print(json.dumps(times))
"""


def child(backend: str, later: int, env: dict[str, str], clock: str = "wall") -> tuple[list[float], float]:
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", CHILD, backend, str(later), clock], env=env, capture_output=True,
                         text=True, check=True)
    wall = time.perf_counter() - t0
    return json.loads(out.stdout.strip().splitlines()[-1]), wall


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--later", type=int, default=5, help="forwards after the first (default 5)")
    ap.add_argument("--cold", action="store_true", help="also a run with an empty inductor cache")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="the forwards' clock: wall (default threads) or the child's CPU time with one thread")
    args = ap.parse_args(argv)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (os.getcwd(), os.environ.get("PYTHONPATH")) if p))
    rows = []
    for backend in ("auto", "eager", "compiled"):
        child(backend, args.later, env, args.clock)  # warms the cache (and the disk cache of the imports)
        times, wall = child(backend, args.later, env, args.clock)
        rows.append((f"{backend}, warm cache", times, wall))
    warm2, _ = child("auto", args.later, env, args.clock)  # a second measured auto process: the range is over the two
    if args.cold:
        with tempfile.TemporaryDirectory() as d:
            times, wall = child("compiled", args.later, dict(env, TORCHINDUCTOR_CACHE_DIR=d), args.clock)
            rows.append(("compiled, empty cache", times, wall))
    print(f"resnet18, batch 1, 224x224, CPU eval no_grad, e4m3 input/weight/output, a new process per run; "
          f"first forward vs the fastest of {args.later} later ones; {args.clock} clock")
    print(f"{'backend':<22} {'1st fwd s':>10} {'later s':>8} {'1st/later':>10} {'job wall s':>11}")
    for label, times, wall in rows:
        later = min(times[1:])
        print(f"{label:<22} {times[0]:>10.3f} {later:>8.3f} {times[0] / later:>9.2f}x {wall:>11.1f}")
    auto = rows[0][1]
    ratio = auto[0] / min(auto[1:])
    firsts = [t[0] / min(t[1:]) for t in (auto, warm2)]
    summary([Met("resnet18 first quantized forward / later ones (auto backend, warm cache, new process)",
                 ratio, TARGET, *span(firsts))], "issue 19 first-use target")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
