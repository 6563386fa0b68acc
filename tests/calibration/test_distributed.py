"""Data-parallel calibration: 2 CPU processes on gloo merge their statistics and agree on every scale."""

import os
import socket
import tempfile
import warnings

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import qsim_hooks as qh

METHODS = ("max", "percentile", "entropy", "mse")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4), nn.Linear(4, 4)).eval()


def _rank_data(rank: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(100 + rank)
    scale = 1.0 if rank == 0 else 7.0  # rank 1's histograms need a wider range
    return [torch.randn(64, 8, generator=g) * scale for _ in range(2)]


CFG = dict(input="int8", output="int4", weight="int8",
           rules=[qh.Rule(match="2", weight_scaling="channel")])


def _forward(model, batch):
    # layer 3 runs on rank 1 only: its points still agree (rank 0 takes the merged statistics)
    return model(batch) if dist.get_rank() == 1 else model[:3](batch)


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        from qsim_hooks.formats import set_backend

        set_backend("eager")
        model = _model()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # entropy on a 4x4 weight: the warning is tested elsewhere
            out = {m: qh.calibrate(model, qh.QuantConfig(**CFG), _rank_data(rank), method=m, progress=False,
                                   bins=256, forward=_forward).to_dict() for m in METHODS}
        torch.save(out, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_two_gloo_ranks_get_identical_scales_equal_to_one_process_on_all_data():
    with tempfile.TemporaryDirectory() as d:
        mp.spawn(_worker, args=(2, _free_port(), d), nprocs=2, join=True)
        r0 = torch.load(os.path.join(d, "rank0.pt"))
        r1 = torch.load(os.path.join(d, "rank1.pt"))
    model = _model()

    def both(m, batch):  # one process: all of rank 0's data through layers 0-2, rank 1's through all
        if batch[1] == 0:
            m[:3](batch[0])
        else:
            m(batch[0])

    data = [(x, 0) for x in _rank_data(0)] + [(x, 1) for x in _rank_data(1)]
    for m in METHODS:
        assert r0[m]["points"] == r1[m]["points"], m
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            one = qh.calibrate(model, qh.QuantConfig(**CFG), data, method=m, progress=False, bins=256,
                               forward=both).to_dict()
        # exact re-binning: the merged histograms are those of all the data in one process
        a = {(p["module"], p["point"]): p for p in r0[m]["points"]}
        b = {(p["module"], p["point"]): p for p in one["points"]}
        assert a.keys() == b.keys() and ("3", "input") in a
        for k in a:
            assert a[k]["amax"] == b[k]["amax"], (m, k)
            assert a[k]["numel"] == b[k]["numel"] * (2 if k[1] == "weight" else 1), (m, k)
