"""Every benchmark with an issue-19 target, one after another, and one table of the targets, met or not.

    PYTHONPATH=. .venv/bin/python tools/bench_all.py [--only overhead,block,...] [--quick] [--json]

Each script runs in its own process (as a user would run it), its output passed through; each one's
targets come back through ``$QSIM_BENCH_TARGETS`` (``tools/_timing.summary``). The table at the end says
when and where (date, CPU model, cores, torch version, the load average at the start and at the end:
other jobs on a shared machine slow some rounds, which the per-round ranges show). ``--quick``: fewer
rounds and smaller tensors, to check that everything runs (its figures are not the targets' figures).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))

#: name -> (script, full arguments, --quick arguments)
BENCHES: dict[str, tuple[str, list[str], list[str]]] = {
    # one thread, CPU clock: on a shared machine the wall clock of a two-thread run mostly measures the others;
    # compiled kernels: the steady state (auto compiles only once that pays, which a short run never reaches)
    "overhead": ("bench_overhead.py", ["--threads", "1", "--clock", "cpu", "--backend", "compiled"],
                 ["--threads", "1", "--clock", "cpu", "--rounds", "2", "--calls", "1"]),
    "block": ("bench_block.py", ["--names", "mxfp8_e4m3,mxfp8_e5m2,mxfp6_e3m2,mxfp4,nvfp4"],
              ["--names", "mxfp8_e4m3,mxfp4,nvfp4", "--numel", str(1 << 22), "--repeats", "3"]),
    "formats": ("bench_formats.py", [], ["--numel", str(1 << 22), "--repeats", "3", "--no-qtorch"]),
    # the steady state too (a QAT run takes thousands of steps; auto fuses each kernel once that pays), one thread
    "training": ("bench_training.py", ["--clock", "cpu", "--backend", "compiled"],
                 ["--rounds", "1", "--batch", "2", "--size", "112"]),
    "first_use": ("bench_first_use.py", [], ["--later", "2"]),
}


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default=None, help=f"comma-separated, of {', '.join(BENCHES)} (default: all)")
    ap.add_argument("--quick", action="store_true", help="fewer rounds, smaller tensors: a smoke run")
    ap.add_argument("--json", action="store_true", help="print the targets as JSON at the end")
    args = ap.parse_args(argv)
    names = list(BENCHES) if args.only is None else [n.strip() for n in args.only.split(",") if n.strip()]
    bad = [n for n in names if n not in BENCHES]
    if bad or not names:
        ap.error(f"--only {args.only!r}: each must be one of {', '.join(BENCHES)}")
    started = datetime.datetime.now(datetime.timezone.utc)
    load0 = os.getloadavg()
    where = (f"{started:%Y-%m-%d %H:%M} UTC, {cpu_model()}, {os.cpu_count()} cores, torch {torch.__version__}, "
             f"python {platform.python_version()}")
    print(f"bench_all: {where}; load average at start {load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f}"
          f"{'; --quick (smoke run, not the targets figures)' if args.quick else ''}", flush=True)
    failed = []
    seconds = {}
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "targets.jsonl")
        env = dict(os.environ, QSIM_BENCH_TARGETS=path,
                   PYTHONPATH=os.pathsep.join(p for p in (os.getcwd(), os.environ.get("PYTHONPATH")) if p))
        for name in names:
            script, full, quick = BENCHES[name]
            cmd = [sys.executable, os.path.join(HERE, script), *(quick if args.quick else full)]
            print(f"\n=== {name}: {' '.join(cmd[1:])}", flush=True)
            t0 = time.perf_counter()
            rc = subprocess.run(cmd, env=env).returncode
            seconds[name] = time.perf_counter() - t0
            if rc != 0:
                failed.append(f"{name} (exit {rc})")
        targets = []
        if os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                targets = [json.loads(line) for line in f if line.strip()]
    load1 = os.getloadavg()
    print(f"\nbench_all: {where}; load average {load0[0]:.2f} at start, {load1[0]:.2f} {load1[1]:.2f} "
          f"{load1[2]:.2f} at the end; took {sum(seconds.values()) / 60:.1f} min "
          f"({', '.join(f'{n} {s:.0f} s' for n, s in seconds.items())})")
    width = max([len(t["target"]) for t in targets] + [6])
    print(f"{'target':<{width}}  {'measured':>9}  {'rounds':>13}  {'bound':>7}  met")
    for t in targets:
        rng = "-" if t["lo"] is None else f"{t['lo']:.2f}-{t['hi']:.2f}{t['unit']}"
        print(f"{t['target']:<{width}}  {t['measured']:>8.2f}{t['unit']}  {rng:>13}  <= {t['bound']:g}{t['unit']}  "
              f"{'met' if t['met'] else 'not met'}")
    print(f"{sum(t['met'] for t in targets)} of {len(targets)} targets met")
    for f in failed:
        print(f"FAILED: {f}")
    if args.json:
        print(json.dumps({"where": where, "load_start": load0, "load_end": load1, "quick": args.quick,
                          "seconds": seconds, "failed": failed, "targets": targets}, indent=2))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
