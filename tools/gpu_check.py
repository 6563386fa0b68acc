"""The GPU check's Python parts (tools/gpu_check.sh runs them after the CUDA tests).

    PYTHONPATH=. .venv/bin/python tools/gpu_check.py            # on a CUDA device
    PYTHONPATH=. .venv/bin/python tools/gpu_check.py --dry      # on the CPU, tiny sizes, eager only

1. **agreement**: every kernel family (ExMy casts with and without a native dtype, scaled floats,
   integers per tensor / channel / block, MX, NVFP4, ABFP, stochastic rounding) on a tensor with
   specials and subnormals: the device's eager kernels and its compiled (Triton) kernels against the
   CPU's eager result, bit for bit (NaN matches NaN). Stochastic rounding draws its noise on the
   device, so there it is compiled against eager on the device with the same seed.
2. **bandwidth**: e4m3, int8 (dynamic per tensor), mxfp4 and nvfp4 on ``--numel`` fp32 elements
   (256M on the GPU): time of ``x.clone()`` (a device-to-device copy) / time of the format, with CUDA
   events, the fastest of ``--repeats``; target >= 0.8.
3. **overhead**: resnet50 batch 64 bf16 eval (resnet18 batch 1 at 64x64 with ``--dry``): forward time
   under each configuration / the un-instrumented forward.

Exit status 1 when any agreement fails (the figures are printed whatever they are).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections.abc import Callable

import torch

import qsim_hooks as qh
from qsim_hooks import formats
from qsim_hooks.formats import IntFormat, Scaling, kernels

BANDWIDTH_TARGET = 0.8


def _probe(n: int) -> torch.Tensor:
    """Random normals over a wide range plus every special a kernel must keep."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, generator=g) * torch.logspace(-12, 12, n).pow(torch.rand(n, generator=g))
    specials = torch.tensor([0.0, -0.0, float("inf"), -float("inf"), float("nan"), 1e-45, -1e-40, 3.4e38, 448.0,
                             464.0, -57344.0, 6.0, 0.25, 2.0**-9, 2.0**-10 - 2.0**-34])
    x[: specials.numel()] = specials
    return x.reshape(-1, 64)


def _formats() -> list[tuple[str, formats.Format]]:
    e4m3_sr = dataclasses.replace(formats.get("e4m3"), rounding="stochastic")
    return [
        ("e4m3", formats.get("e4m3")), ("e5m2", formats.get("e5m2")), ("e3m4", formats.get("e3m4")),
        ("e2m1", formats.get("e2m1")), ("fp16", formats.get("fp16")), ("bf16", formats.get("bf16")),
        ("e4m3 toward_zero", dataclasses.replace(formats.get("e4m3"), rounding="toward_zero")),
        ("e4m3 per-channel scaled", dataclasses.replace(formats.get("e4m3"), scaling=Scaling("channel", axis=0))),
        ("int8 per tensor", formats.get("int8")),
        ("int4 per channel", IntFormat(4, scaling=Scaling("channel", axis=0))),
        ("int4 block 32", IntFormat(4, scaling=Scaling("block", block_size=32, axis=-1))),
        ("int8 nearest_away", IntFormat(8, rounding="nearest_away")),
        *[(n, formats.get(n)) for n in ("mxfp8_e4m3", "mxfp8_e5m2", "mxfp6_e3m2", "mxfp6_e2m3", "mxfp4", "mxint8",
                                         "nvfp4", "abfp8")],
        ("e4m3 stochastic", e4m3_sr),
        ("int8 stochastic", IntFormat(8, rounding="stochastic")),
        ("mxfp4 stochastic", formats.block.mx("e2m1", rounding="stochastic")),
    ]


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> int:
    """How many elements differ (NaN matches NaN)."""
    a, b = a.detach().float().cpu().contiguous(), b.detach().float().cpu().contiguous()
    ok = (a.view(torch.int32) == b.view(torch.int32)) | (torch.isnan(a) & torch.isnan(b))
    return int((~ok).sum())


def agreement(dev: torch.device, numel: int, compiled: str) -> bool:
    x = _probe(numel)
    xd = x.to(dev)
    ok = True
    print(f"agreement on {numel:,} elements: {dev} eager and {dev} {compiled} against CPU eager (bits differing)")
    for name, fmt in _formats():
        stochastic = "stochastic" in name
        out = {}
        for label, backend, where in (("cpu", "eager", torch.device("cpu")), ("eager", "eager", dev),
                                      ("fused", compiled, dev)):
            kernels.set_backend(backend)
            gen = torch.Generator(device=where).manual_seed(7)
            out[label] = fmt(x if where.type == "cpu" else xd, generator=gen)
        kernels.set_backend("auto")
        ref = out["eager"] if stochastic else out["cpu"]
        bad_e = 0 if stochastic else _same_bits(out["eager"], ref)
        bad_f = _same_bits(out["fused"], ref)
        ok = ok and bad_e == 0 and bad_f == 0
        vs = "eager on the device" if stochastic else "cpu"
        verdict = "ok" if not bad_e + bad_f else "FAIL"
        print(f"  {name:<26} eager {bad_e:>6}  {compiled} {bad_f:>6}  (vs {vs})  {verdict}")
    if kernels._compile_failed:
        print("  FAIL: torch.compile fell back to eager: the fused column compared eager kernels")
        ok = False
    return ok


def _device_time(fn: Callable[[], object], dev: torch.device, repeats: int) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        if dev.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            best = min(best, start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - t0)
    return best


def bandwidth(dev: torch.device, numel: int, repeats: int, backend: str) -> None:
    kernels.set_backend(backend)
    x = torch.randn(numel, device=dev).reshape(-1, 4096)
    copy = _device_time(lambda: x.clone(), dev, repeats)
    gbs = 2 * x.numel() * 4 / copy / 1e9
    print(f"bandwidth on {numel:,} fp32 elements ({backend} kernels): clone {copy * 1e3:.2f} ms ({gbs:.0f} GB/s "
          f"read+write); fraction = clone time / format time (target >= {BANDWIDTH_TARGET})")
    for name in ("e4m3", "int8", "mxfp4", "nvfp4"):
        fmt = formats.get(name)
        t = _device_time(lambda fmt=fmt: fmt(x), dev, repeats)
        frac = copy / t
        verdict = "met" if frac >= BANDWIDTH_TARGET else "not met"
        print(f"  {name:<8} {t * 1e3:8.2f} ms  {frac:5.2f} of a copy  {verdict}")
    kernels.set_backend("auto")


def overhead(dev: torch.device, dry: bool, repeats: int, backend: str) -> None:
    import torchvision  # a client of the library, as in the benchmarks

    kernels.set_backend(backend)
    torch.manual_seed(0)
    if dry:
        model, x = torchvision.models.resnet18(), torch.randn(1, 3, 64, 64)
        what = "resnet18 batch 1 64x64"
    else:
        model, x = torchvision.models.resnet50(), torch.randn(64, 3, 224, 224)
        what = "resnet50 batch 64 224x224"
    model = model.eval().to(dev, torch.bfloat16)
    x = x.to(dev, torch.bfloat16)
    configs = [("un-instrumented", None), ("formats all None", qh.QuantConfig()),
               ("e4m3 input/weight/output", qh.QuantConfig(input="e4m3", weight="e4m3", output="e4m3")),
               ("int8 dynamic per-tensor", qh.QuantConfig(input="int8", weight="int8", output="int8")),
               ("mxfp8 input/weight", qh.QuantConfig(input="mxfp8_e4m3", weight="mxfp8_e4m3", output=None))]
    best = {label: float("inf") for label, _ in configs}
    with torch.no_grad():
        for _ in range(3):  # rounds interleave the configurations
            for label, cfg in configs:
                session = qh.attach(model, cfg) if cfg is not None else None
                try:
                    best[label] = min(best[label], _device_time(lambda: model(x), dev, repeats))
                finally:
                    if session is not None:
                        session.detach()
    base = best["un-instrumented"]
    print(f"overhead: {what}, bf16, eval, {backend} kernels; forward time / un-instrumented")
    for label, _ in configs:
        print(f"  {label:<28} {best[label] * 1e3:9.2f} ms  {best[label] / base:5.2f}x")
    kernels.set_backend("auto")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dry", action="store_true", help="CPU, tiny sizes, eager kernels in the fused column")
    ap.add_argument("--numel", type=int, default=None, help="bandwidth elements (default 2^28; --dry 2^16)")
    ap.add_argument("--repeats", type=int, default=None, help="timed calls (default 10; --dry 2)")
    ap.add_argument("--skip", default="", help="comma-separated parts to skip: agreement,bandwidth,overhead")
    args = ap.parse_args(argv)
    if not args.dry and not torch.cuda.is_available():
        print("no CUDA device: run with --dry for the CPU dry run", file=sys.stderr)
        return 2
    dev = torch.device("cpu" if args.dry else "cuda")
    fused = "eager" if args.dry else "compiled"
    numel = args.numel or (1 << 16 if args.dry else 1 << 28)
    repeats = args.repeats or (2 if args.dry else 10)
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    print(f"torch {torch.__version__}, device {torch.cuda.get_device_name() if dev.type == 'cuda' else 'cpu (dry)'}")
    ok = True
    if "agreement" not in skip:
        ok = agreement(dev, 1 << 14 if args.dry else 1 << 20, fused)
    if "bandwidth" not in skip:
        bandwidth(dev, numel, repeats, fused)
    if "overhead" not in skip:
        overhead(dev, args.dry, repeats, fused)
    print("agreement:", "all bit-identical" if ok else "FAILURES above")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
