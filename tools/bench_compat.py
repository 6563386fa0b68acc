"""qsim_hooks.compat against INT-FP-QSim itself: resnet18, E4M3 inputs and weights, FP16 outputs, CPU.

Both run in this process on the same torch, each on its own copy of one random-weight resnet18 (eval,
no_grad, one thread): ``compat.replace_layers`` instruments its copy, the old ``replace_layers`` swaps the
layers of the other. The configurations are interleaved over several rounds and each one's minimum is
kept; the ratios printed are from this one run. The logits of the two are also compared (bit-identical is
what compat promises). The old tool is imported from ``.venv-intfpqsim`` (tools/compat_golden/setup.sh);
without it only the fp32 and compat rows are printed.

    .venv/bin/python tools/bench_compat.py [--batch 1] [--size 224] [--rounds 5] [--json]

Target (issue 13): compat at least 2.5x faster than the old tool.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import site
import sys
import time

import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's qsim_hooks (a script's sys.path starts at tools/)
OLD_VENV = ROOT / ".venv-intfpqsim"

from qsim_hooks import compat  # noqa: E402


def _old_tool():
    """INT-FP-QSim's replace_layers and formats from .venv-intfpqsim, or None when it is not set up."""
    sites = sorted(OLD_VENV.glob("lib/python*/site-packages"))
    if not sites:
        return None
    site.addsitedir(str(sites[0]))  # its .pth files add the patched int-fp-qsim copy
    from int_fp_qsim import formats  # deferred: only present where tools/compat_golden/setup.sh ran
    from int_fp_qsim.replace import replace_layers

    return replace_layers, formats


def _resnet18() -> torch.nn.Module:
    import torchvision

    torch.manual_seed(0)
    return torchvision.models.resnet18().eval()


def _forward_time(model: torch.nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        t0 = time.perf_counter()
        model(x)
        return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=1, help="batch (default 1, the old README's quickstart)")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = ap.parse_args()
    torch.set_num_threads(1)
    x = torch.randn(args.batch, 3, args.size, args.size, generator=torch.Generator().manual_seed(1))
    models = {"fp32": _resnet18(), "compat": _resnet18()}
    compat.replace_layers(models["compat"], compat.E4M3, compat.E4M3, compat.FP16)
    old = _old_tool()
    if old is not None:
        replace_layers, f = old
        models["INT-FP-QSim"] = replace_layers(_resnet18(), f.E4M3, f.E4M3, f.FP16)
    with torch.no_grad():
        logits = {name: m(x) for name, m in models.items()}  # warm-up (compat's fused kernels compile here)
    best = {name: float("inf") for name in models}
    for _ in range(args.rounds):
        for name, m in models.items():
            best[name] = min(best[name], _forward_time(m, x))
    out = {"batch": args.batch, "size": args.size, "rounds": args.rounds, "threads": 1,
           "seconds": best, "compat_over_fp32": best["compat"] / best["fp32"]}
    if old is not None:
        out["old_over_compat"] = best["INT-FP-QSim"] / best["compat"]
        a, b = logits["compat"], logits["INT-FP-QSim"]
        out["logits_bit_identical"] = bool(torch.equal(a.view(torch.int32), b.view(torch.int32)))
    compat.detach(models["compat"])
    if args.json:
        print(json.dumps(out, indent=1))
        return
    print(f"resnet18 E4M3/E4M3/FP16, batch {args.batch} at {args.size}x{args.size}, CPU, 1 thread, "
          f"min of {args.rounds} interleaved rounds")
    for name, s in best.items():
        print(f"  {name:12s} {s * 1e3:9.1f} ms  ({s / best['fp32']:.2f}x fp32)")
    if old is None:
        print(f"  INT-FP-QSim not measured: {OLD_VENV.name} is missing (tools/compat_golden/setup.sh)")
    else:
        print(f"  compat is {out['old_over_compat']:.2f}x faster than INT-FP-QSim (target >= 2.5x); "
              f"logits bit-identical: {'yes' if out['logits_bit_identical'] else 'NO'}")


if __name__ == "__main__":
    main()
