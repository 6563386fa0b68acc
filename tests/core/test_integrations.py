"""Sessions under DistributedDataParallel (2 CPU processes, gloo) and accelerate's dispatch hooks."""

import os
import socket
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

import qsim_hooks as qh

from .model_check import snapshot, verify_unchanged


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
        ddp = nn.parallel.DistributedDataParallel(net)
        opt = torch.optim.SGD(ddp.parameters(), lr=0.1)
        g = torch.Generator().manual_seed(100 + rank)  # each rank its own data
        x = torch.randn(32, 8, generator=g)
        y = (x[:, 0] > 0).long()
        ids = [id(p) for p in net.parameters()]
        snap = snapshot(ddp)
        losses = []
        with qh.quantized(ddp, qh.QuantConfig(input="int8", weight="int4", output="e4m3")) as qs:
            assert len(qs.points) == 6
            for _ in range(10):
                opt.zero_grad()
                loss = F.cross_entropy(ddp(x), y)
                loss.backward()
                opt.step()
                losses.append(loss.item())
        verify_unchanged(ddp, snap, values=False)
        assert [id(p) for p in net.parameters()] == ids
        flat = torch.cat([p.detach().flatten() for p in net.parameters()])
        torch.save({"flat": flat, "losses": losses}, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_qat_under_ddp_two_cpu_processes_gloo():
    with tempfile.TemporaryDirectory() as d:
        mp.spawn(_ddp_worker, args=(2, _free_port(), d), nprocs=2, join=True)
        r0 = torch.load(os.path.join(d, "rank0.pt"))
        r1 = torch.load(os.path.join(d, "rank1.pt"))
    # gradients were all-reduced: both ranks hold identical parameters after training
    assert torch.equal(r0["flat"], r1["flat"])
    assert r0["losses"][-1] < r0["losses"][0] and r1["losses"][-1] < r1["losses"][0]


def test_accelerate_dispatch_and_cpu_offload_hooks():
    import accelerate  # a dev dependency, installed by the test command
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)).eval()
    x = torch.randn(3, 8)
    ref_model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)).eval()
    ref_model.load_state_dict(net.state_dict())
    cfg = qh.QuantConfig(input="int8", weight="int4", output="e4m3")
    with qh.quantized(ref_model, cfg), torch.no_grad():
        expected = ref_model(x)

    dispatched = accelerate.dispatch_model(net, device_map={"": "cpu"})
    snap = snapshot(dispatched)
    with qh.quantized(dispatched, cfg), torch.no_grad():
        got = dispatched(x)
    assert torch.equal(got, expected)
    verify_unchanged(dispatched, snap)

    net2 = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)).eval()
    net2.load_state_dict(ref_model.state_dict())
    offloaded = accelerate.cpu_offload(net2, execution_device=torch.device("cpu"))
    hooks = [getattr(m, "_hf_hook", None) for m in offloaded.modules()]
    maps = [getattr(h, "weights_map", None) for h in hooks]
    snap2 = snapshot(offloaded)
    with qh.quantized(offloaded, cfg), torch.no_grad():
        got2 = offloaded(x)
        got3 = offloaded(x)  # weights reloaded and re-quantized each call
    assert torch.equal(got2, expected) and torch.equal(got3, expected)
    assert [getattr(m, "_hf_hook", None) for m in offloaded.modules()] == hooks
    assert [getattr(h, "weights_map", None) for h in hooks] == maps
    assert offloaded[0].weight.device.type == "meta"  # still offloaded, as accelerate left it
    verify_unchanged(offloaded, snap2, ids=False, values=False)  # accelerate re-creates its meta Parameters
    with torch.no_grad():
        assert torch.allclose(offloaded(x), ref_model(x))
