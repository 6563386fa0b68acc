"""The largest difference between each sharded scenario of tests/distributed and the same run in one process.

The tests assert a tolerance (bit-exact, or 1e-5 for QAT); this prints how close each one actually is, the
figures in brackets in the README's "Distributed" table. It runs the tests' own scenarios (CPU, gloo, ranks
forked once per scenario) and references, so the two cannot drift apart:

    PYTHONPATH=. .venv/bin/python tools/distributed_maxdiff.py      # about 2-3 minutes on 2 cores
"""

from __future__ import annotations

from typing import Any

import torch

import qsim_hooks as qh
from tests.distributed import common as c
from tests.distributed import harness
from tests.distributed import test_accelerate as acc
from tests.distributed import test_calibration as cal
from tests.distributed import test_fsdp as fsdp
from tests.distributed import test_llama as llama
from tests.distributed import test_meshes as meshes

KEYS = ("infer", "qweights", "logits", "losses", "params", "after")  # what a scenario returns, per rank or shared
PER_RANK = ("infer", "logits", "losses", "after")  # the reference holds one per rank


def diff(a: Any, b: Any) -> float:
    """max |a - b| over nested dicts / lists of numbers or tensors, in float64."""
    if isinstance(a, dict):
        return max(diff(a[k], b[k]) for k in b)
    if isinstance(a, list) and a and isinstance(a[0], (int, float)):
        return float((torch.tensor(a, dtype=torch.float64) - torch.tensor(b, dtype=torch.float64)).abs().max())
    if isinstance(a, list):
        return max(diff(x, y) for x, y in zip(a, b))
    return c.max_diff(a, b)


def note(out: dict, world: int, label: str, got: dict, ref: dict, rank: int) -> None:
    """Keep the largest difference of each returned key from its reference (rank ``rank``'s, where per rank)."""
    for k in KEYS:
        if k in got and k in ref:
            v = diff(got[k], ref[k][rank] if k in PER_RANK else ref[k])
            out[(world, label, k)] = max(out.get((world, label, k), 0.0), v)


def compare(out: dict, label: str, world: int, scenario: Any, ref: dict, rank_of=lambda r: r) -> None:
    for r, got in enumerate(harness.result(world, scenario)):
        note(out, world, label, got, ref, rank_of(r))


def tp_reference(world: int) -> dict:
    """The tensor-parallel scenario's one-process run (every rank feeds batch 0), as test_fsdp builds it."""
    model = c.mlp()
    opt = torch.optim.SGD(model.parameters(), lr=c.LR)
    with qh.quantized(model, c.TP_CFG):
        with torch.no_grad():
            infer = model(c.batch(0))
        qweights = c.weights(model)
        losses = c.qat(model, opt, c.mse_loss(c.batch(0)))
    return {"infer": [infer] * world, "losses": [losses] * world, "qweights": qweights, "params": c.params(model)}


def main() -> None:
    out: dict[tuple[int, str, str], float] = {}
    for world in (2, 4):
        ref = c.reference_qat(world)
        compare(out, "FSDP2 shard then attach", world, fsdp.shard_then_attach, ref)
        compare(out, "FSDP2 attach then shard", world, fsdp.attach_then_shard, ref)
        compare(out, "TP colwise + rowwise", world, fsdp.tensor_parallel, tp_reference(world))
        cref = cal._reference(world)
        used = c.reference_qat(world, calibration=cref["max"])
        for r, got in enumerate(harness.result(world, cal.calibrate_sharded)):
            for m in cal.METHODS:
                want = cal._amax(cref[m])
                v = max(abs(a - b) for k in want for a, b in zip(got["amax"][m][k], want[k]))
                key = (world, f"calibrate {m}", "amax")
                out[key] = max(out.get(key, 0.0), v)
            note(out, world, "calibrated on the shards, then QAT", got, used, r)
    compare(out, "FSDP2 reshard_after_forward=False", 2, fsdp.shard_then_attach_no_reshard, c.reference_qat(2))
    compare(out, "HSDP 2x2", 4, meshes.hsdp, c.reference_qat(4))
    compare(out, "FSDP2 + TP 2x2", 4, meshes.fsdp_tp, c.reference_qat(2, c.TP_CFG), rank_of=lambda r: r // 2)
    lref = llama.reference(2)
    compare(out, "tiny Llama, FSDP2", 2, llama.llama_fsdp, lref)
    compare(out, "tiny Llama, accelerate FSDP2", 2, acc.accelerate_fsdp2, lref)
    for (world, label, key), v in sorted(out.items()):
        print(f"{world} ranks | {label:<36} | {key:<9} | max |difference| {v:.3g}")


if __name__ == "__main__":
    main()
