"""Cost of a calibration pass on torchvision resnet50 (CPU, eval, no_grad, batch 8, 224x224).

A calibration pass is the model's forward with a histogram observer at the
input of every conv / linear layer (quantization off, as during
``qh.calibrate``). Printed as a ratio to the plain forward measured in the
same run: rounds interleave the configurations and the minimum per
configuration is kept, so a slow spell of a shared machine hits all alike.
Target: <= 2x. Also printed: a whole ``qh.calibrate`` call over a few batches
(pass plus computing the amax of every point) per method, as a ratio to the
same number of plain forwards.

    .venv/bin/python tools/bench_calibration.py [--batch 8] [--repeats 5] [--batches 4] [--json]
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torchvision
from _timing import best_time  # tools/ is on sys.path when a script runs
from rich.console import Console
from rich.table import Table

import qsim_hooks as qh
from qsim_hooks.calibration.api import make_observers


def _time(fn, repeats: int, warmup: int = 1) -> float:
    return best_time(fn, repeats, warmup)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--batches", type=int, default=4, help="batches of the whole-calibrate() rows")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    torch.manual_seed(0)
    model = torchvision.models.resnet50().eval()
    x = torch.randn(args.batch, 3, args.size, args.size)
    cfg = qh.QuantConfig(input="int8")  # a scaled format at every conv / linear input

    def observed(method: str, bins: int = 2048):
        session = qh.attach(model, cfg)
        inst = make_observers(session.points, method, bins)
        inst.lend(session)  # undone by session.detach()
        return session, inst

    configs = [("plain forward", None, "1.0 (reference)"),
               ("pass, histogram (2048 bins) at every input", "percentile", "<= 2"),
               ("pass, max observer at every input", "max", "-")]
    best = {label: float("inf") for label, _, _ in configs}
    n_points = 0
    with torch.no_grad():
        for rnd in range(args.repeats):
            for label, method, _ in configs:
                session = inst = None
                if method is not None:
                    session, inst = observed(method)
                    n_points = len(inst.observers)
                try:
                    best[label] = min(best[label], _time(lambda: model(x), 1, warmup=1 if rnd == 0 else 0))
                finally:
                    if session is not None:
                        session.detach()
    base = best["plain forward"]
    out = [{"config": label, "seconds": best[label], "ratio": best[label] / base, "target": target}
           for label, _, target in configs]
    # whole calibrate() calls: the pass over N batches plus computing every amax
    data = [x] * args.batches
    for method in ("max", "percentile", "entropy", "mse"):
        t0 = time.perf_counter()
        qh.calibrate(model, cfg, data, method=method, progress=False)
        t = time.perf_counter() - t0
        out.append({"config": f"calibrate(method={method!r}), {args.batches} batches", "seconds": t,
                    "ratio": t / (base * args.batches), "target": "-"})
    if args.json:
        print(json.dumps(out, indent=2))
        return
    t = Table(title=f"calibration on resnet50 CPU eval no_grad, batch {args.batch}, {args.size}x{args.size}, "
                    f"{n_points} observed inputs, threads={torch.get_num_threads()}")
    for c in ("config", "ms", "ratio", "target"):
        t.add_column(c, justify="left" if c == "config" else "right")
    for r in out:
        t.add_row(r["config"], f"{r['seconds'] * 1e3:.1f}", f"{r['ratio']:.3f}", r["target"])
    Console().print(t)


if __name__ == "__main__":
    main()
