"""Calibration on an FSDP2 model agrees with one process's calibration on all the ranks' batches.

Each rank calibrates the sharded model on its own batches; ``qh.calibrate`` merges the observers across
ranks (max: MAX; histograms: exact re-binning and SUM). The reference calibrates the un-sharded model on
every rank's batches in this process. Weights are observed as the logical tensor (FSDP's all-gathered
weight in forward, the gathered DTensor outside it), activations per rank, so:

* ``max``: every amax equal, bit for bit;
* ``percentile`` (histograms): every amax equal, bit for bit (a weight's histogram is counted once per
  rank, a whole-number multiple that leaves every percentile where it was);
* a weight is observed once per rank, as the logical tensor read before the batches, not again as FSDP's
  gathered copy in forward (``numel``: ranks x the weight's size);
* the calibration used by a session on the sharded model, in both orders (shard then attach, attach
  then shard inside the block): outputs bit-exact and 3 QAT steps within the QAT tolerance of one
  process using the single-process calibration.
"""

from __future__ import annotations

import pytest
import torch

import qsim_hooks as qh

from .common import CFG, LR, assert_qat_matches, batch, mlp, mse_loss, params, qat, reference_qat, shard
from .harness import result, scenario

METHODS = ("max", "percentile")


def _batches(rank: int) -> list[torch.Tensor]:
    return [batch(rank), batch(100 + rank)]


def _amax(cal: qh.Calibration) -> dict[str, list[float]]:
    return {"/".join(k): list(pc.amax) if isinstance(pc.amax, tuple) else [pc.amax] for k, pc in cal.points.items()}


def _numel(cal: qh.Calibration) -> dict[str, int]:
    return {"/".join(k): pc.numel for k, pc in cal.points.items()}


@scenario(2, 4)
def calibrate_sharded(rank: int, world: int) -> dict:
    out: dict = {}
    model = shard(mlp()).eval()
    cals = {m: qh.calibrate(model, CFG, _batches(rank), method=m) for m in METHODS}
    out["amax"] = {m: _amax(c) for m, c in cals.items()}
    out["numel"] = _numel(cals["max"])
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    with qh.quantized(model, CFG, calibration=cals["max"]):
        with torch.no_grad():
            out["infer"] = model(batch(rank))
        out["losses"] = qat(model, opt, mse_loss(batch(rank)))
    out["params"] = params(model)
    out["after"] = model(batch(rank)).detach()
    return out


@scenario(2)
def calibration_then_shard_in_block(rank: int, world: int) -> dict:
    out: dict = {}
    model = shard(mlp()).eval()
    cal = qh.calibrate(model, CFG, _batches(rank), method="max")
    fresh = mlp()
    with qh.quantized(fresh, CFG, calibration=cal):  # a calibration made sharded, a model sharded in the block
        shard(fresh)
        opt = torch.optim.SGD(fresh.parameters(), lr=LR)
        out["losses"] = qat(fresh, opt, mse_loss(batch(rank)))
    out["params"] = params(fresh)
    out["after"] = fresh(batch(rank)).detach()
    return out


def _reference(world: int) -> dict[str, qh.Calibration]:
    model = mlp().eval()
    data = [b for r in range(world) for b in _batches(r)]
    return {m: qh.calibrate(model, CFG, data, method=m) for m in METHODS}


@pytest.mark.parametrize("world", [2, 4])
def test_sharded_calibration_equals_one_process(world):
    ref = _reference(world)
    for r, got in enumerate(result(world, calibrate_sharded)):
        for m in METHODS:
            assert got["amax"][m] == _amax(ref[m]), f"rank {r}, method {m}"
        assert len(got["amax"]["max"]) == 4  # both layers' input and weight: every point calibrated
        # each rank observed a weight once (the logical tensor, before the batches; FSDP's gathered copy in
        # forward is not observed again, so no observer holds a copy of it) and its own batches' inputs
        want = {k: n * world if "/weight/" in k else n for k, n in _numel(ref["max"]).items()}
        assert got["numel"] == want, f"rank {r}"


@pytest.mark.parametrize("world", [2, 4])
def test_sharded_calibration_used_sharded_matches_one_process(world):
    ref = reference_qat(world, calibration=_reference(world)["max"])
    for r, got in enumerate(result(world, calibrate_sharded)):
        torch.testing.assert_close(got["infer"], ref["infer"][r], rtol=0, atol=0)
        assert_qat_matches(got, ref, r)


def test_sharded_calibration_in_a_block_that_shards_matches_one_process():
    ref = reference_qat(2, calibration=_reference(2)["max"])
    for r, got in enumerate(result(2, calibration_then_shard_in_block)):
        assert_qat_matches(got, ref, r)
