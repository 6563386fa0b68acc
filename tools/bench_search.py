"""Time of a whole mixed-precision search (sensitivity per candidate, solve, verification) against one plain
forward, on torchvision resnet18 (random weights, CPU, eval, no_grad).

Rounds interleave the plain forward and the search; each one's minimum is kept and the ratio printed from
the same run (a slow spell of a shared machine hits both alike). The issue's target: <= 40 forwards with
``--depth 2`` (one format per block) and 4 candidates, batch 8, 224 x 224, the whole search (the reference,
the one-at-a-time sensitivity runs, the solve and the verification runs). ``--no-replay`` also times the
search with ``replay=False`` (every one-at-a-time run computes the whole model) in the same rounds.

    PYTHONPATH=. .venv/bin/python tools/bench_search.py [--batch 8] [--size 224] [--depth 2] [--rounds 3]
        [--estimate pass|fisher] [--no-replay] [--json]
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
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--estimate", choices=("pass", "fisher"), default="pass",
                    help="fisher: a cross-entropy loss against the full-precision argmax")
    ap.add_argument("--no-replay", action="store_true", help="also time replay=False in the same rounds")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    torch.manual_seed(0)
    model = torchvision.models.resnet18().eval()
    x = torch.randn(args.batch, 3, args.size, args.size)
    gran = "layer" if args.depth == 0 else args.depth
    with torch.no_grad():
        labels = model(x).argmax(-1)  # warm-up; the fisher loss's labels

    def loss(m, batch):
        return torch.nn.functional.cross_entropy(m(batch), labels)

    kw = dict(candidates=CANDIDATES, budget=args.budget, granularity=gran, estimate=args.estimate,
              loss=loss if args.estimate == "fisher" else None, progress=False)
    runs = {"forward": None, "search": dict(kw)}
    if args.no_replay:
        runs["search, replay=False"] = dict(kw, replay=False)
    best = dict.fromkeys(runs, float("inf"))
    result = None
    for _ in range(args.rounds):
        for name, opts in runs.items():
            t = time.perf_counter()
            if opts is None:
                with torch.no_grad():
                    model(x)
            else:
                result = qh.search(model, [x], **opts)
            best[name] = min(best[name], time.perf_counter() - t)
    ratio = best["search"] / best["forward"]
    out = {"model": "resnet18 (random weights)", "batch": args.batch, "size": args.size, "granularity": gran,
           "units": len(result.units), "candidates": CANDIDATES, "budget": args.budget, "estimate": args.estimate,
           "forward_s": best["forward"], "search_s": best["search"], "forwards_per_search": ratio,
           "target": 40, "met": ratio <= 40, "chosen": result.best.source, "cost": result.cost,
           "predicted": result.best.predicted, "measured": result.best.measured,
           "measured_sqnr_db": result.measured_sqnr_db, "threads": torch.get_num_threads()}
    if args.no_replay:
        out["search_no_replay_s"] = best["search, replay=False"]
        out["forwards_per_search_no_replay"] = best["search, replay=False"] / best["forward"]
    if args.json:
        print(json.dumps(out, indent=2))
        return
    con = Console()
    con.print(f"resnet18, batch {args.batch}, {args.size}px, {len(result.units)} units, {len(CANDIDATES)} "
              f"candidates, {torch.get_num_threads()} threads, min of {args.rounds} interleaved rounds")
    con.print(f"forward {best['forward'] * 1e3:.1f} ms, search ({args.estimate}) {best['search']:.2f} s: "
              f"{ratio:.1f} forwards (target <= 40: {'met' if ratio <= 40 else 'NOT met'})")
    if args.no_replay:
        con.print(f"search with replay=False {best['search, replay=False']:.2f} s: "
                  f"{out['forwards_per_search_no_replay']:.1f} forwards")
    con.print(result.summary(), markup=False)


if __name__ == "__main__":
    main()
