"""Cost of simulated accumulation: a 4-layer BERT (the one of tools/bench_overhead.py) and torchvision
resnet18, each configuration's forward time as a ratio to the un-instrumented forward of the same run.

Configurations run interleaved, one call each per round, over several rounds; each one's minimum is kept.
CPU, eval, no_grad, ``--threads`` intra-op threads (default 1: on a shared machine a second thread mostly
waits for a core); operands are not quantized, so the ratio is the accumulator's cost alone. Every target of
issue 15 is printed with met / not met. Memory: the engine's temporaries are bounded by tiles (docs/accumulators.md).

    PYTHONPATH=. .venv/bin/python tools/bench_accumulator.py --batch 1 --seq 64 --only bert   # the targets
    PYTHONPATH=. .venv/bin/python tools/bench_accumulator.py [--batch 8] [--rounds 3] [--only bert|resnet18]
    PYTHONPATH=. .venv/bin/python tools/bench_accumulator.py --errors   # relative error vs K (the docs' figures)
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
from rich.console import Console
from rich.table import Table

import qsim_hooks as qh
from qsim_hooks.accumulate import Accumulator, accumulate_matmul
from qsim_hooks.formats import FloatFormat

CONFIGS: dict[str, Accumulator | None] = {
    "plain (no session)": None,
    "fp16 chunk-exact c128>fp32": Accumulator("fp16", order="chunked", chunk=128),
    "fp16 pairwise c128>fp32": Accumulator("fp16", order="pairwise", chunk=128),
    "fp16 sequential c128>fp32": Accumulator("fp16", chunk=128),
    "hopper_fp8 (align 14, promote 128)": qh.hopper_fp8(),
}
#: issue 15's targets: (model, configuration) -> the largest ratio to the plain forward
TARGETS = {("bert", "fp16 chunk-exact c128>fp32"): 4.0, ("bert", "fp16 sequential c128>fp32"): 30.0}


def _bert(batch: int, seq: int) -> tuple[torch.nn.Module, Callable[[], object]]:
    from transformers import BertConfig, BertModel

    cfg = BertConfig(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024,
                     vocab_size=1000)
    cfg._attn_implementation = "sdpa"
    model = BertModel(cfg).eval()
    ids = torch.randint(0, 1000, (batch, seq), generator=torch.Generator().manual_seed(0))
    return model, lambda: model(input_ids=ids)


def _resnet18(batch: int, seq: int) -> tuple[torch.nn.Module, Callable[[], object]]:
    import torchvision

    model = torchvision.models.resnet18().eval()
    x = torch.randn(batch, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    return model, lambda: model(x)


def measure(name: str, build, batch: int, seq: int, rounds: int) -> list[tuple[str, float]]:
    model, run = build(batch, seq)
    best = {k: float("inf") for k in CONFIGS}
    with torch.no_grad():
        for _ in range(rounds):
            for label, acc in CONFIGS.items():
                if acc is None:
                    run()  # warm
                    t0 = time.perf_counter()
                    run()
                else:
                    with qh.quantized(model, qh.QuantConfig(accumulator=acc)):
                        t0 = time.perf_counter()
                        run()
                best[label] = min(best[label], time.perf_counter() - t0)
    return list(best.items())


ERROR_CONFIGS: dict[str, Accumulator] = {
    "fp22 (e8m13) sequential": Accumulator(FloatFormat(8, 13)),
    "bf16 sequential": Accumulator("bf16"),
    "fp16 sequential": Accumulator("fp16"),
    "fp16 pairwise": Accumulator("fp16", order="pairwise"),
    "fp16 sequential c128>fp32": Accumulator("fp16", chunk=128),
    "hopper_fp8 no promotion": qh.hopper_fp8(promote_every=None),
    "hopper_fp8 promote 128": qh.hopper_fp8(),
}


def errors(ks: list[int], console: Console) -> None:
    """Relative error ||sim - exact|| / ||exact|| (and the largest per-output one) of 8x8 outputs whose
    operands are uniform in [0, 4) on the E4M3 grid (positive: the sums grow with K, as activations do)."""
    e4m3 = FloatFormat(4, 3, specials="fn")
    table = Table(title="relative error of the simulated sum vs K (8x8 outputs, E4M3 operands in [0, 4)): "
                        "norm-wise / largest per output")
    table.add_column("accumulator")
    for k in ks:
        table.add_column(f"K={k}", justify="right")
    g = torch.Generator().manual_seed(0)
    data = {k: (e4m3.cast(torch.rand(8, k, generator=g) * 4), e4m3.cast(torch.rand(k, 8, generator=g) * 4))
            for k in ks}
    for label, acc in ERROR_CONFIGS.items():
        cells = []
        for k in ks:
            a, b = data[k]
            exact = a.double() @ b.double()
            d = accumulate_matmul(a, b, acc).double() - exact
            cells.append(f"{(d.norm() / exact.norm()).item():.1e} / {(d.abs() / exact.abs()).max().item():.1e}")
        table.add_row(label, *cells)
    console.print(table)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--only", choices=["bert", "resnet18"], default=None)
    ap.add_argument("--errors", action="store_true", help="print relative error vs K and exit")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    console = Console()
    if args.errors:
        errors([256, 1024, 4096, 16384], console)
        return
    models = {"bert": _bert, "resnet18": _resnet18}
    for name, build in models.items():
        if args.only not in (None, name):
            continue
        rows = measure(name, build, args.batch, args.seq, args.rounds)
        base = rows[0][1]
        table = Table(title=f"{name}, batch {args.batch}" + (f", sequence {args.seq}" if name == "bert" else "")
                      + f", min of {args.rounds} interleaved rounds, {args.threads} thread(s)")
        for col in ("configuration", "seconds", "x plain", "target"):
            table.add_column(col, justify="left" if col == "configuration" else "right")
        for label, t in rows:
            target = TARGETS.get((name, label))
            verdict = "" if target is None else f"<= {target:g}x: {'met' if t / base <= target else 'NOT met'}"
            table.add_row(label, f"{t:.4f}", f"{t / base:.1f}", verdict)
        console.print(table)


if __name__ == "__main__":
    main()
