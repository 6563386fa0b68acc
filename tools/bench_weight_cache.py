"""Cost of not caching the no-grad quantized weight: torchvision resnet50 (CPU, eval, no_grad, 224x224,
batch 1 and 2, weights only quantized), the case where weight quantization weighs most.

Three ways to get the quantized weight, each a ratio to the un-instrumented model, interleaved in
several rounds (every configuration once per round), each configuration's minimum kept:

* ``no cache``: what qsim-hooks does, the weight quantized at every access;
* ``version cache``: the old cache keyed on ``_version`` (stale after ``p.data.mul_``: not an option,
  shown for its cost only);
* ``content cache``: a cache that compares the weight with a private copy at every access (it sees every
  write, numpy views included, and doubles the weight memory).

    .venv/bin/python tools/bench_weight_cache.py [--rounds 5] [--batches 1,2] [--format e4m3]

(``PYTHONPATH=.`` when the environment's installed qsim_hooks is another checkout: a script's
``sys.path`` starts at ``tools/``, not the working directory; the table's title names the one timed.)
"""

from __future__ import annotations

import argparse

import torch
import torchvision
from _timing import best_time  # tools/ is on sys.path when a script runs
from rich.console import Console
from rich.table import Table

import qsim_hooks as qh
from qsim_hooks.weights import WeightQuantizer

_plain_forward = WeightQuantizer.forward


def _version_cached(self: WeightQuantizer, w: torch.Tensor) -> torch.Tensor:
    key = (w._version, w.data_ptr(), self.point.version)
    c = self.__dict__.get("_bench_cache")
    if c is not None and c[0] == key:
        return c[1]
    out = _plain_forward(self, w)
    self.__dict__["_bench_cache"] = (key, out)
    return out


def _content_cached(self: WeightQuantizer, w: torch.Tensor) -> torch.Tensor:
    c = self.__dict__.get("_bench_cache")
    if c is not None and c[0].shape == w.shape and torch.equal(c[0], w):
        return c[1]
    out = _plain_forward(self, w)
    self.__dict__["_bench_cache"] = (w.detach().clone(), out)
    return out


WAYS = {"no cache": _plain_forward, "version cache": _version_cached, "content cache": _content_cached}


def _once(model: torch.nn.Module, x: torch.Tensor, fmt: str, way: str | None, calls: int) -> float:
    """Seconds per forward: the best of ``calls`` forwards after one untimed one (that fills any cache)."""
    if way is None:
        return best_time(lambda: model(x), calls)
    WeightQuantizer.forward = WAYS[way]
    try:
        with qh.quantized(model, weight=fmt):
            return best_time(lambda: model(x), calls)
    finally:
        WeightQuantizer.forward = _plain_forward


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--calls", type=int, default=2)
    ap.add_argument("--batches", default="1,2")
    ap.add_argument("--format", default="e4m3")
    args = ap.parse_args()
    torch.manual_seed(0)
    model = torchvision.models.resnet50(weights=None).eval()
    xs = {b: torch.randn(b, 3, 224, 224) for b in map(int, args.batches.split(","))}
    configs = [(b, way) for b in xs for way in (None, *WAYS)]
    best = dict.fromkeys(configs, float("inf"))
    with torch.no_grad():
        for _ in range(args.rounds):
            for b, way in configs:
                best[(b, way)] = min(best[(b, way)], _once(model, xs[b], args.format, way, args.calls))
    table = Table(title=f"resnet50, 224x224, CPU, {torch.get_num_threads()} threads, no_grad, weights {args.format} "
                        f"(min of {args.rounds} rounds x {args.calls} calls; {qh.__file__})")
    for col in ("batch", "weight access", "ms / forward", "x plain", "x version cache"):
        table.add_column(col)
    for (b, way), t in best.items():
        vs = "" if way is None else f"{t / best[(b, 'version cache')]:.3f}"
        table.add_row(str(b), way or "plain", f"{t * 1e3:.1f}", f"{t / best[(b, None)]:.3f}", vs)
    Console().print(table)


if __name__ == "__main__":
    main()
