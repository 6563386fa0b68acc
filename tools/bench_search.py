"""Time of a whole mixed-precision search (sensitivity per candidate, solve, verification) against one plain
forward, on torchvision resnet18 (random weights, CPU, eval, no_grad).

Rounds interleave the plain forward and the search; each one's minimum is kept and the ratio printed from
the same run (a slow spell of a shared machine hits both alike). The issue's target: <= 40 forwards with
``--depth 2`` (one format per block) and 4 candidates, batch 8, 224 x 224.

    .venv/bin/python tools/bench_search.py [--batch 8] [--size 224] [--depth 2] [--rounds 2] [--json]
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torchvision
from rich.console import Console

import qsim_hooks as qh

CANDIDATES = ["fp16", "e4m3", "int8", "mxfp4"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--depth", type=int, default=2, help="module-name components per unit (0: per layer)")
    ap.add_argument("--budget", type=float, default=6.0)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    torch.manual_seed(0)
    model = torchvision.models.resnet18().eval()
    x = torch.randn(args.batch, 3, args.size, args.size)
    gran = "layer" if args.depth == 0 else args.depth
    best = {"forward": float("inf"), "search": float("inf")}
    result = None
    with torch.no_grad():
        model(x)  # warm-up
    for _ in range(args.rounds):
        t = time.perf_counter()
        with torch.no_grad():
            model(x)
        best["forward"] = min(best["forward"], time.perf_counter() - t)
        t = time.perf_counter()
        result = qh.search(model, [x], candidates=CANDIDATES, budget=args.budget, granularity=gran)
        best["search"] = min(best["search"], time.perf_counter() - t)
    ratio = best["search"] / best["forward"]
    out = {"model": "resnet18 (random weights)", "batch": args.batch, "size": args.size, "granularity": gran,
           "units": len(result.units), "candidates": CANDIDATES, "budget": args.budget,
           "forward_s": best["forward"], "search_s": best["search"], "forwards_per_search": ratio,
           "chosen": result.best.source, "cost": result.cost, "predicted_sqnr_db": result.predicted_sqnr_db,
           "measured_sqnr_db": result.measured_sqnr_db, "threads": torch.get_num_threads()}
    if args.json:
        print(json.dumps(out, indent=2))
        return
    con = Console()
    con.print(f"resnet18, batch {args.batch}, {args.size}px, {len(result.units)} units, {len(CANDIDATES)} "
              f"candidates, {torch.get_num_threads()} threads, min of {args.rounds} interleaved rounds")
    con.print(f"forward {best['forward'] * 1e3:.1f} ms, search {best['search']:.2f} s: "
              f"{ratio:.1f} forwards (target <= 40)")
    con.print(result.summary(), markup=False)


if __name__ == "__main__":
    main()
