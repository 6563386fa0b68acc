"""Cost of the propagated per-layer error (``compare(..., per_layer=True)``) on torchvision resnet18.

Each layer is run in a simulated pass and a full-precision pass, each stopped after that layer's last call,
so with N layers of similar cost the extra work per batch should be about N/2 simulated plus N/2
full-precision forwards. This prints the measured extra time against that estimate (``ratio``: 1.0 = as
estimated). Configurations run interleaved, one call each per round; each one's minimum is kept. CPU,
eval, no_grad, random weights, e4m3 inputs and weights.

    PYTHONPATH=. .venv/bin/python tools/bench_propagation.py [--batch 2] [--size 32] [--rounds 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import time

import torch

import qsim_hooks as qh
from qsim_hooks.formats import kernels


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    kernels.set_backend("eager")
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    x = torch.randn(args.batch, 3, args.size, args.size, generator=torch.Generator().manual_seed(0))
    cfg = qh.QuantConfig(input="e4m3", weight="e4m3")

    def fp() -> None:
        with torch.no_grad():
            model(x)

    def sim() -> None:
        with torch.no_grad(), qh.quantized(model, cfg):
            model(x)

    runs = {"full-precision forward": fp, "simulated forward (attach included)": sim,
            "compare": lambda: qh.compare(model, cfg, x, stats=False),
            "compare(per_layer=True)": lambda: qh.compare(model, cfg, x, stats=False, per_layer=True)}
    best = {k: float("inf") for k in runs}
    for fn in runs.values():
        fn()  # warm-up
    for _ in range(args.rounds):
        for name, fn in runs.items():
            t0 = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t0)
    n = len(qh.compare(model, cfg, x, stats=False, per_layer=True).per_layer)
    for name, t in best.items():
        print(f"{name:40s} {t * 1e3:9.1f} ms")
    extra = best["compare(per_layer=True)"] - best["compare"]
    estimate = n / 2 * (best["full-precision forward"] + best["simulated forward (attach included)"])
    print(f"{n} layers, batch {args.batch}, {args.size}x{args.size}, {args.threads} thread(s), best of "
          f"{args.rounds} rounds")
    times = best["compare(per_layer=True)"] / best["compare"]
    print(f"per-layer extra {extra * 1e3:.1f} ms; estimate N/2 x (fp + sim forward) {estimate * 1e3:.1f} ms; "
          f"ratio {extra / estimate:.2f}; per_layer / plain compare {times:.1f}x")


if __name__ == "__main__":
    main()
