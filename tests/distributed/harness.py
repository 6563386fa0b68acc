"""Rank-side scenarios on CPU gloo processes: one fork per world size runs every registered scenario.

Starting ranks costs far more than the scenarios (a spawned process imports torch, transformers and
qsim-hooks again: ~40 s for 2 ranks, ~75 s for 4 on this machine); a forked one inherits them, so the
ranks are forked from the test process, once per world size for the whole run (memoized), and each rank
runs every scenario registered for its world size, in registration order, a barrier between them. A
scenario returns plain data (tensors, lists, bools), saved per rank; a scenario that raises is recorded
with its traceback (``result["error"]``) and the others still run. Test modules register their scenarios
at import, so a run collects them all before the first fork.
"""

from __future__ import annotations

import datetime
import functools
import os
import socket
import tempfile
import traceback
from collections.abc import Callable

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from qsim_hooks.formats import kernels

__all__ = ["scenario", "run", "result"]

Scenario = Callable[[int, int], dict]
_SCENARIOS: dict[str, tuple[Scenario, tuple[int, ...]]] = {}


def scenario(*worlds: int) -> Callable[[Scenario], Scenario]:
    """Register ``fn(rank, world) -> dict`` to run on every rank of each world size in ``worlds``."""
    def deco(fn: Scenario) -> Scenario:
        _SCENARIOS[f"{fn.__module__}.{fn.__name__}"] = (fn, worlds)
        fn.key = f"{fn.__module__}.{fn.__name__}"  # type: ignore[attr-defined]
        return fn
    return deco


def _worker(rank: int, world: int, port: int, out_dir: str, names: list[str]) -> None:
    torch.set_num_threads(1)
    kernels.set_backend("eager")  # tiny tensors run eager anyway; never compile in a rank
    store = dist.TCPStore("127.0.0.1", port, world, rank == 0)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=60))
    res: dict[str, dict] = {}
    try:
        for name in names:
            try:
                res[name] = _SCENARIOS[name][0](rank, world)
            except Exception:
                res[name] = {"error": traceback.format_exc()}
            dist.barrier()
        torch.save(res, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@functools.cache
def run(world: int) -> tuple[dict[str, dict], ...]:
    """Every scenario registered for ``world``, run on ``world`` forked ranks: one dict per rank."""
    names = [n for n, (_, worlds) in _SCENARIOS.items() if world in worlds]
    with tempfile.TemporaryDirectory() as d:
        mp.start_processes(_worker, args=(world, _free_port(), d, names), nprocs=world, join=True,
                           start_method="fork")
        return tuple(torch.load(os.path.join(d, f"rank{r}.pt")) for r in range(world))


def result(world: int, fn: Scenario) -> list[dict]:
    """Each rank's result of scenario ``fn`` (its traceback raised as a test failure if it failed)."""
    out = [r[fn.key] for r in run(world)]  # type: ignore[attr-defined]
    for rank, r in enumerate(out):
        if "error" in r:
            raise AssertionError(f"rank {rank} of {world}: scenario {fn.__name__} raised\n{r['error']}")
    return out
