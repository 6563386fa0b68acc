"""Overhead of instrumentation at inference, and issue 19's inference targets, met or not.

Models: torchvision resnet50 (CPU, eval, no_grad, batch 8, 224x224; every conv/linear input, weight and
output) and a small BERT with SDPA attention (4 layers, hidden 256, 4 heads, sequence 128, batch 8; random
weights; its six attention points and its Linears). Each configuration's forward time is a ratio to the
same model un-instrumented, measured in the same run: the configurations are interleaved in rounds
(every one attached, warmed up and timed once per round, so a slow spell of this shared machine hits all
alike), each keeps its minimum over the rounds, and the range of its per-round ratios is printed beside
it. The fused kernels compile on first use; the first round's warm-up absorbs that.

    PYTHONPATH=. .venv/bin/python tools/bench_overhead.py [--rounds 5] [--calls 2] [--only resnet|bert]
        [--previous] [--intfp] [--threads 1 --clock cpu] [--backend auto|eager|compiled] [--profile] [--json]

``--previous`` adds the quantized configurations with :mod:`qsim_hooks.reuse` off (the path before it);
``--intfp`` adds INT-FP-QSim's way (qtorch E4M3 everywhere, weights every call: slow).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torchvision
from _timing import CLOCKS, best_time, summary
from _timing import Target as Met  # tools/ is on sys.path when a script runs
from rich.console import Console
from rich.table import Table

import qsim_hooks as qh
from qsim_hooks import reuse

Setup = Callable[[torch.nn.Module], Callable[[], None]]  # attach something, return what removes it


@dataclass
class Config:
    model: str
    label: str
    setup: Setup | None = None  # None: the un-instrumented reference
    times: list[float] = field(default_factory=list)


@dataclass(frozen=True)
class Target:
    label: str
    model: str
    config: str
    bound: float


TARGETS = (
    Target("resnet50 b8, e4m3 on every input/weight/output", "resnet50", "e4m3 input/weight/output", 1.15),
    Target("resnet50 b8, int8 dynamic per-tensor", "resnet50", "int8 dynamic per-tensor input/weight/output", 1.2),
    Target("resnet50 b8, all formats None", "resnet50", "formats all None", 1.01),
    Target("BERT sdpa, e4m3 six attention points + every Linear", "bert", "e4m3 six attention points + Linears",
           1.3),
    Target("BERT sdpa, e4m3 Linears only", "bert", "e4m3 Linears only (attention=None)", 1.15),
)


def _session(cfg: qh.QuantConfig, reuse_on: bool = True) -> Setup:
    def setup(model: torch.nn.Module) -> Callable[[], None]:
        reuse.set_enabled(reuse_on)
        s = qh.attach(model, cfg)

        def undo() -> None:
            s.detach()
            reuse.set_enabled(True)
        return undo
    return setup


def _hooks(make: Callable[[torch.nn.Module], list]) -> Setup:
    def setup(model: torch.nn.Module) -> Callable[[], None]:
        handles = make(model)
        return lambda: [h.remove() for h in handles]
    return setup


def _copy_hooks(model: torch.nn.Module) -> list:
    handles = []
    for m in model.modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
            handles.append(m.register_forward_pre_hook(lambda mod, args: (args[0].clone(),)))
            handles.append(m.register_forward_hook(lambda mod, a, out: out.clone()))
    return handles


def _intfp_qsim_way(model: torch.nn.Module) -> list:
    """INT-FP-QSim's cost model: qtorch E4M3 on every input, weight and output, weights re-quantized each call."""
    from qtorch.quant import float_quantize  # deferred: qtorch compiles a C++ extension on import

    q = lambda t: float_quantize(t.contiguous(), 4, 3, "nearest")  # noqa: E731
    handles = []
    for m in model.modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
            def pre(mod, args):
                q(mod.weight)  # the re-quantized weight (cost is what matters here)
                return (q(args[0]),)
            handles.append(m.register_forward_pre_hook(pre))
            handles.append(m.register_forward_hook(lambda mod, a, out: q(out)))
    return handles


def _resnet(batch: int, previous: bool, intfp: bool) -> tuple[torch.nn.Module, Callable[[], Any], list[Config]]:
    torch.manual_seed(0)
    model = torchvision.models.resnet50().eval()
    x = torch.randn(batch, 3, 224, 224)
    e4m3 = qh.QuantConfig(input="e4m3", weight="e4m3", output="e4m3")
    int8 = qh.QuantConfig(input="int8", weight="int8", output="int8")
    configs = [Config("resnet50", "un-instrumented"),
               Config("resnet50", "hooks doing only a tensor copy", _hooks(_copy_hooks)),
               Config("resnet50", "formats all None", _session(qh.QuantConfig())),
               Config("resnet50", "e4m3 input/weight/output", _session(e4m3)),
               Config("resnet50", "int8 dynamic per-tensor input/weight/output", _session(int8))]
    if previous:
        configs += [Config("resnet50", "e4m3, reuse off (the previous path)", _session(e4m3, False)),
                    Config("resnet50", "int8, reuse off (the previous path)", _session(int8, False))]
    if intfp:
        configs.append(Config("resnet50", "INT-FP-QSim way (qtorch e4m3, weights every call)",
                              _hooks(_intfp_qsim_way)))
    return model, lambda: model(x), configs


def _bert(previous: bool) -> tuple[torch.nn.Module, Callable[[], Any], list[Config]]:
    from transformers import BertConfig, BertModel  # deferred: transformers is a benchmark-only dependency

    cfg = BertConfig(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024,
                     vocab_size=1000)
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    model = BertModel(cfg).eval()
    ids = torch.randint(0, 1000, (8, 128))
    everywhere = qh.QuantConfig(input="e4m3", weight="e4m3", output="e4m3")  # Linears + q,k,scores,probs,v,context
    linears = qh.QuantConfig(input="e4m3", weight="e4m3", output="e4m3", attention=None)
    configs = [Config("bert", "un-instrumented"),
               Config("bert", "e4m3 six attention points + Linears", _session(everywhere)),
               Config("bert", "e4m3 Linears only (attention=None)", _session(linears))]
    if previous:
        configs += [Config("bert", "e4m3 six points + Linears, reuse off (the previous path)",
                           _session(everywhere, False)),
                    Config("bert", "e4m3 Linears only, reuse off (the previous path)", _session(linears, False))]
    return model, lambda: model(ids), configs


def _measure(models: list[tuple[torch.nn.Module, Callable[[], Any], list[Config]]], rounds: int,
             calls: int, clock: Callable[[], float]) -> None:
    with torch.no_grad():
        for rnd in range(rounds):
            for model, run, configs in models:
                for c in configs:
                    undo = c.setup(model) if c.setup is not None else None
                    try:
                        c.times.append(best_time(run, calls, 2 if rnd == 0 else 1, clock))
                    finally:
                        if undo is not None:
                            undo()


def _profile(model: torch.nn.Module, run: Callable[[], Any], config: Config) -> str:
    """torch.profiler's table (self CPU time, top operators) of one forward under ``config``."""
    from torch.profiler import ProfilerActivity, profile  # deferred: only for --profile

    undo = config.setup(model) if config.setup is not None else None
    try:
        with torch.no_grad():
            run()
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                run()
    finally:
        if undo is not None:
            undo()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=14, max_name_column_width=40)


def _rows(configs: list[Config]) -> list[dict[str, Any]]:
    ref = configs[0]
    out = []
    for c in configs:
        per_round = [t / r for t, r in zip(c.times, ref.times)]
        out.append({"model": c.model, "config": c.label, "ms": min(c.times) * 1e3,
                    "ratio": min(c.times) / min(ref.times), "range": (min(per_round), max(per_round))})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--calls", type=int, default=2, help="timed forwards per configuration and round (min kept)")
    ap.add_argument("--only", choices=("resnet", "bert"))
    ap.add_argument("--previous", action="store_true", help="also the quantized configs with reuse off")
    ap.add_argument("--intfp", action="store_true", help="also INT-FP-QSim's way (slow)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--clock", choices=tuple(CLOCKS), default="wall",
                    help="wall: elapsed time; cpu: this thread's CPU time (with --threads 1 it is all the work, "
                         "and a machine shared with other jobs disturbs it less)")
    ap.add_argument("--profile", action="store_true",
                    help="then print torch.profiler's operator table for each model's first quantized config")
    ap.add_argument("--backend", choices=("auto", "eager", "compiled"), default="auto",
                    help="kernel backend (default auto: eager until compiling pays, which a short run may never "
                         "reach; compiled: the fused kernels' steady state, compiled in the first warm-up)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    qh.formats.set_backend(args.backend)
    # the coverage warnings at detach (SDPA's P·V with attention=None) say nothing about time
    warnings.filterwarnings("ignore", message="qsim_hooks: .* GEMM call", category=RuntimeWarning)
    if args.clock == "cpu" and args.threads != 1:
        ap.error("--clock cpu measures one thread: use it with --threads 1")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    load0 = os.getloadavg()
    started = datetime.datetime.now(datetime.timezone.utc)
    models = []
    if args.only != "bert":
        models.append(_resnet(args.batch, args.previous, args.intfp))
    if args.only != "resnet":
        models.append(_bert(args.previous))
    _measure(models, args.rounds, args.calls, CLOCKS[args.clock])
    rows = [r for _, _, configs in models for r in _rows(configs)]
    by = {(r["model"], r["config"]): r for r in rows}
    targets = [{"target": t.label, "ratio": by[(t.model, t.config)]["ratio"], "range": by[(t.model, t.config)]["range"],
                "bound": t.bound, "met": by[(t.model, t.config)]["ratio"] <= t.bound}
               for t in TARGETS if (t.model, t.config) in by]
    load1 = os.getloadavg()
    where = (f"{started:%Y-%m-%d %H:%M} UTC, {platform.node() or 'this machine'}, {os.cpu_count()} cores, torch "
             f"threads={torch.get_num_threads()}, {args.clock} clock, kernels={qh.formats.get_backend()}, load average "
             f"{load0[0]:.1f} -> {load1[0]:.1f}; {args.rounds} rounds x {args.calls} calls, min per config")
    if args.json:
        print(json.dumps({"where": where, "configs": rows, "targets": targets}, indent=2))
        summary([Met(r["target"], r["ratio"], r["bound"], *r["range"]) for r in targets], "issue 19 inference targets",
                out=sys.stderr)
        return
    console = Console(width=max(Console().width, 120))
    t = Table(title=f"Inference overhead, ratio = time / the same model un-instrumented ({where})")
    for c in ("model", "config", "ms", "ratio", "per-round range"):
        t.add_column(c, justify="left" if c in ("model", "config") else "right")
    for r in rows:
        t.add_row(r["model"], r["config"], f"{r['ms']:.1f}", f"{r['ratio']:.3f}",
                  f"{r['range'][0]:.3f}-{r['range'][1]:.3f}")
    console.print(t)
    summary([Met(r["target"], r["ratio"], r["bound"], *r["range"]) for r in targets], "issue 19 inference targets")
    if args.profile:
        for model, run, configs in models:
            quantized = next(c for c in configs if c.setup is not None and c.label.startswith("e4m3"))
            console.print(f"\n{configs[0].model}, {quantized.label}: one forward, by operator")
            console.print(_profile(model, run, quantized), markup=False, highlight=False)


if __name__ == "__main__":
    main()
