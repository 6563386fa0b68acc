"""Per-rank peak memory of FSDP2 inference and QAT, with and without qsim-hooks (CPU, gloo, 2 ranks).

    PYTHONPATH=. .venv/bin/python tools/bench_distributed.py [--layers 8] [--width 512] [--rounds 3]

Each rank runs the same model (``--layers`` Linear(width, width) + ReLU, each ``fully_shard``-ed, then the
root) in three configurations, interleaved in ``--rounds`` rounds (the minimum of each is kept):

* ``plain``: FSDP2 alone;
* ``qsim``: inside ``qh.quantized(model, weight="int8", input="int8")``;
* ``qsim-kept``: the same, with the quantized weights kept for backward (a saved-tensor hook pair of the
  caller's makes qsim-hooks leave them alone): what memory would be without its recomputation.

Memory is what glibc's malloc has handed out (``mallinfo2``: arena bytes in use plus mmap-ed blocks,
where PyTorch's CPU tensors and gloo's buffers live), sampled after every aten operation by a dispatch mode,
so the peak is taken at operation granularity. Two figures per configuration: ``step``, the peak during one
step above the memory in use when the step starts (the model's shards, and for QAT the optimizer's state,
are there already), and ``total``, the peak above the memory in use before the model was built (shards,
FSDP's buffers and the step together: the rank's peak for this model).
Kernels run eager (a fused kernel would compile in every rank first).
"""

from __future__ import annotations

import argparse
import ctypes
import os
import socket
import sys
import tempfile

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.distributed.fsdp import fully_shard
from torch.utils._python_dispatch import TorchDispatchMode

import qsim_hooks as qh
from qsim_hooks.formats import kernels

CONFIGS = ("plain", "qsim", "qsim-kept")
MODES = ("inference", "qat")


class _Mallinfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                 "fsmblks", "uordblks", "fordblks", "keepcost")]


_libc = ctypes.CDLL("libc.so.6")
_libc.mallinfo2.restype = _Mallinfo2


def in_use() -> int:
    """Bytes malloc has handed out and not taken back (small chunks in arenas + mmap-ed large blocks)."""
    m = _libc.mallinfo2()
    return m.uordblks + m.hblkhd


class PeakMemory(TorchDispatchMode):
    """The largest :func:`in_use` seen after any aten operation while the mode is active."""

    def __init__(self) -> None:
        super().__init__()
        self.start = in_use()
        self.peak = self.start

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.peak = max(self.peak, in_use())
        return out

    @property
    def above_start(self) -> int:
        return self.peak - self.start


def _model(layers: int, width: int) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(*[m for _ in range(layers) for m in (nn.Linear(width, width), nn.ReLU())])
    for m in model:
        if isinstance(m, nn.Linear):
            fully_shard(m)
    return fully_shard(model)


def _step(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, mode: str) -> PeakMemory:
    with PeakMemory() as pm:
        if mode == "inference":
            with torch.no_grad():
                model(x)
        else:
            model(x).pow(2).mean().backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
    return pm


def _measure(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, config: str,
             mode: str) -> PeakMemory:
    if config == "plain":
        return _step(model, opt, x, mode)
    with qh.quantized(model, weight="int8", input="int8"):
        if config == "qsim":
            return _step(model, opt, x, mode)
        with torch.autograd.graph.saved_tensors_hooks(lambda t: t, lambda t: t):
            return _step(model, opt, x, mode)


def _worker(rank: int, world: int, port: int, args: argparse.Namespace, out: str) -> None:
    torch.set_num_threads(1)
    kernels.set_backend("eager")
    store = dist.TCPStore("127.0.0.1", port, world, rank == 0)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=world)
    try:
        baseline = in_use()
        model = _model(args.layers, args.width)
        opt = torch.optim.SGD(model.parameters(), lr=1e-3)
        x = torch.randn(args.batch, args.width, generator=torch.Generator().manual_seed(rank))
        for config in CONFIGS:  # warm-up: first-call allocations (gloo buffers, optimizer state)
            for mode in MODES:
                _measure(model, opt, x, config, mode)
        best: dict[tuple[str, str, str], int] = {}
        for _ in range(args.rounds):
            for mode in MODES:
                for config in CONFIGS:
                    pm = _measure(model, opt, x, config, mode)
                    for what, b in (("step", pm.above_start), ("total", pm.peak - baseline)):
                        best[config, mode, what] = min(best.get((config, mode, what), b), b)
        torch.save(best, os.path.join(out, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--width", type=int, default=512)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args(argv)
    world = 2
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as d:
        mp.start_processes(_worker, args=(world, port, args, d), nprocs=world, join=True, start_method="fork")
        res = [torch.load(os.path.join(d, f"rank{r}.pt")) for r in range(world)]
    mib = 2.0 ** 20
    full = args.layers * (args.width * args.width + args.width) * 4
    print(f"model: {args.layers} x Linear({args.width}, {args.width}), fp32 weights {full / mib:.2f} MiB unsharded, "
          f"{full / world / mib:.2f} MiB per rank; batch {args.batch}; {world} ranks (gloo, CPU); "
          f"min of {args.rounds} rounds; MiB")
    print(f"{'mode':<10} {'figure':<6} {'rank':>4} " + " ".join(f"{c:>10}" for c in CONFIGS) +
          f" {'qsim/plain':>11} {'kept/plain':>11}")
    for mode in MODES:
        for what in ("step", "total"):
            for r, best in enumerate(res):
                vals = [best[c, mode, what] for c in CONFIGS]
                print(f"{mode:<10} {what:<6} {r:>4} " + " ".join(f"{v / mib:>10.2f}" for v in vals) +
                      f" {vals[1] / vals[0]:>11.2f} {vals[2] / vals[0]:>11.2f}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
