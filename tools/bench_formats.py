"""Benchmark: every named format on a 16M-element fp32 CPU tensor, as a ratio to ``x.clone()``.

    .venv/bin/python tools/bench_formats.py            # rich table
    .venv/bin/python tools/bench_formats.py --json     # the same figures as JSON

Each figure is the minimum over ``--repeats`` timed calls after warm-up calls.
The first call of a fused kernel compiles it with torch.compile (15-20 s on
CPU with a cold cache) and is reported separately ("1st call s"), never in a
ratio. The clone baseline is measured in the same run, alternately with each
format, and each ratio uses its own clone minimum, so load from other
processes touches both sides alike. Beside each float format: qtorch's
``float_quantize(x, exp, man, "nearest")`` (imported lazily). Reference rows:
PyTorch's own float8 cast round trips and ``fake_quantize_per_tensor_affine``
with a dynamic amax. Block formats (MX, NVFP4, ...) appear automatically when
the registry names them; a format that fails is reported and skipped.

Targets: every unscaled ExMy cast <= 1.5x clone and INT8 with a dynamic per-tensor amax
<= 2x (issue 2; shown for every intN with that scaling: same kernel); MX <= 1.4x and NVFP4
<= 1.5x (issue 19). Each is printed met / not met at the end, with the range of the
per-call ratios.

The "path" column says what ran: "fused (torch.compile)" (a kernel of
``qsim_hooks.formats.kernels`` through its compiled path; "+ amax": the amax
reduction runs as eager torch around it), "eager kernel" (the same kernel,
not compiled), "native cast" (PyTorch's own dtype cast), "eager" (plain torch
operations). It is found by watching ``kernels.run`` during the first call.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
from _timing import Target as Met  # tools/ is on sys.path when a script runs
from _timing import span, summary

from qsim_hooks import formats
from qsim_hooks.formats import kernels

Fn = Callable[[], Any]


# ---------------------------------------------------------------------------
# timing
# ---------------------------------------------------------------------------
def _time_call(fn: Fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def best_time(fn: Fn, repeats: int, warmup: int) -> float:
    """Minimum wall time of ``repeats`` calls after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    return min(_time_call(fn) for _ in range(repeats))


def paired_times(fn: Fn, baseline: Fn, repeats: int, warmup: int,
                 ratios: list[float] | None = None) -> tuple[float, float]:
    """Minimum wall times of ``fn`` and ``baseline``, timed alternately (``ratios``: gets each pair's ratio).

    Alternating keeps both figures under the same machine load, so their
    ratio holds even when other work comes and goes during the run.
    """
    for _ in range(warmup):
        fn()
        baseline()
    t_fn, t_base = math.inf, math.inf
    for _ in range(repeats):
        a, b = _time_call(fn), _time_call(baseline)
        t_fn, t_base = min(t_fn, a), min(t_base, b)
        if ratios is not None:
            ratios.append(a / b)
    return t_fn, t_base


# ---------------------------------------------------------------------------
# what ran, and what it should cost
# ---------------------------------------------------------------------------
def probe_path(fmt: formats.Format, x: torch.Tensor) -> tuple[str, float]:
    """Call ``fmt(x)`` once (the first call: compiles what needs compiling); say which path ran.

    Returns the path label and the wall time of that first call.
    """
    seen: list[bool] = []
    original = kernels.run

    def spy(name, fn, xx, *args, **kwargs):
        seen.append(bool(kernels._use_compiled(xx, name)))  # what kernels.run is about to choose
        return original(name, fn, xx, *args, **kwargs)

    kernels.run = spy
    try:
        first = _time_call(lambda: fmt(x))
    finally:
        kernels.run = original
    if any(seen) and not kernels._compile_failed:
        path = "fused (torch.compile)"
    elif seen:
        path = "eager kernel"
    elif getattr(fmt, "scaling", None) is None and _native_dtype(fmt) is not None:
        path = "native cast"
    else:
        path = "eager"
    if getattr(fmt, "is_scaled", False) and seen:
        path += " + amax"
    return path, first


def _native_dtype(fmt: formats.Format) -> torch.dtype | None:
    probe = getattr(fmt, "_native_dtype", None)
    return probe() if callable(probe) else None


def target_for(name: str, fmt: formats.Format) -> tuple[str, float] | None:
    """The issue's speed target for this format, as (label, max ratio to clone)."""
    if name.startswith("mx"):
        return "MX (issue 19)", 1.4
    if name == "nvfp4":
        return "NVFP4 (issue 19)", 1.5
    if isinstance(fmt, formats.FloatFormat) and fmt.scaling is None:
        return "cast (issue 2)", 1.5
    sc = getattr(fmt, "scaling", None)
    if isinstance(fmt, formats.IntFormat) and sc.granularity == "tensor" and sc.mode == "dynamic":
        return "INT (issue 2)", 2.0
    return None


def _qtorch_float_quantize() -> Callable | None:
    try:
        from qtorch.quant import float_quantize  # compiles/loads a C++ extension: lazily
    except Exception as exc:  # noqa: BLE001 - qtorch is only a comparison here
        print(f"note: qtorch unavailable ({type(exc).__name__}: {exc}); its column is empty",
              file=sys.stderr)
        return None
    return float_quantize


# ---------------------------------------------------------------------------
# the run
# ---------------------------------------------------------------------------
def _row(name: str, path: str, fn: Fn, clone: Fn, repeats: int, warmup: int,
         first: float | None = None, target: tuple[str, float] | None = None) -> dict[str, Any]:
    ratios: list[float] = []
    seconds, clone_s = paired_times(fn, clone, repeats, warmup, ratios)
    return {"name": name, "path": path, "seconds": seconds, "clone_seconds": clone_s,
            "ratio": seconds / clone_s, "range": span(ratios), "first_call_s": first,
            "target": None if target is None else target[0],
            "target_ratio": None if target is None else target[1],
            "met": None if target is None else seconds / clone_s <= target[1],
            "qtorch_seconds": None, "qtorch_ratio": None}


def run_bench(numel: int, repeats: int, warmup: int, names: list[str] | None,
              use_qtorch: bool) -> dict[str, Any]:
    """Time every format (and the references) against ``x.clone()``; returns plain data."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(numel, generator=gen, dtype=torch.float32)
    clone: Fn = lambda: x.clone()
    best_time(clone, 1, warmup)  # let the allocator settle before the first pair

    fq = _qtorch_float_quantize() if use_qtorch else None
    rows: list[dict[str, Any]] = []
    for name in names or formats.names():
        fmt = formats.get(name)
        try:
            path, first = probe_path(fmt, x)  # the first call: compiles, excluded from the ratio
        except Exception as exc:  # noqa: BLE001 - one broken format must not hide the others
            rows.append({**_row(name, "-", clone, clone, 1, 0), "seconds": math.nan, "ratio": math.nan,
                         "met": None, "error": f"{type(exc).__name__}: {str(exc).splitlines()[0]}"})
            continue
        row = _row(name, path, lambda fmt=fmt: fmt(x), clone, repeats, warmup, first,
                   target_for(name, fmt))
        if fq is not None and isinstance(fmt, formats.FloatFormat) and fmt.scaling is None:
            e, m = fmt.exp_bits, fmt.man_bits
            q_s, q_clone = paired_times(lambda e=e, m=m: fq(x, e, m, "nearest"), clone, repeats, warmup)
            row["qtorch_seconds"], row["qtorch_ratio"] = q_s, q_s / q_clone
        rows.append(row)

    # reference rows: what PyTorch itself offers for the same job
    refs: list[tuple[str, str, Fn]] = [
        ("torch e4m3fn round trip", "native cast", lambda: x.to(torch.float8_e4m3fn).float()),
        ("torch e5m2 round trip", "native cast", lambda: x.to(torch.float8_e5m2).float()),
        ("torch fake_quant int8", "eager",
         lambda: torch.fake_quantize_per_tensor_affine(x, float(x.abs().max()) / 127.0, 0, -127, 127)),
    ]
    for label, path, fn in refs:
        rows.append(_row(label, f"{path} (ref.)", fn, clone, repeats, warmup))

    return {"numel": numel, "dtype": "float32", "device": "cpu", "threads": torch.get_num_threads(),
            "torch": torch.__version__, "backend": kernels.get_backend(), "repeats": repeats,
            "clone_seconds": min(r["clone_seconds"] for r in rows), "rows": rows}


# ---------------------------------------------------------------------------
# output
# ---------------------------------------------------------------------------
def _ratio(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}x"


def print_table(result: dict[str, Any]) -> None:
    from rich import box
    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(Console().width, 180))  # a wide table: let the terminal wrap
    clone_ms = result["clone_seconds"] * 1e3
    table = Table(title=(f"Formats on {result['numel']:,} fp32 CPU elements, as multiples of x.clone() "
                         f"(fastest clone {clone_ms:.1f} ms)"),
                  caption=(f"torch {result['torch']}, {result['threads']} threads, backend "
                           f"'{result['backend']}'; min of {result['repeats']} runs after warm-up; "
                           "each ratio against clones timed alternately with it; "
                           "'1st call' includes any torch.compile (excluded from the ratios). "
                           "qtorch: float_quantize(x, E, M, 'nearest')."),
                  caption_justify="left", box=box.SIMPLE_HEAD, header_style="bold")
    for header, justify in (("format", "left"), ("path", "left"), ("ms", "right"),
                            ("clone ms", "right"), ("x clone", "right"),
                            ("target", "left"), ("met", "center"), ("qtorch x clone", "right"),
                            ("1st call s", "right")):
        table.add_column(header, justify=justify, no_wrap=True)
    errors = []
    for row in result["rows"]:
        if row.get("error"):
            errors.append(f"{row['name']}: {row['error']}")
            table.add_row(row["name"], "[red]FAILED[/red]", *["-"] * 7)
            continue
        target = "-" if row["target"] is None else f"{row['target']} <= {row['target_ratio']:g}x"
        met = "-" if row["met"] is None else ("yes" if row["met"] else "[red]NO[/red]")
        first = "-" if row["first_call_s"] is None else f"{row['first_call_s']:.2f}"
        table.add_row(row["name"], row["path"], f"{row['seconds'] * 1e3:.1f}",
                      f"{row['clone_seconds'] * 1e3:.1f}", _ratio(row["ratio"]),
                      target, met, _ratio(row["qtorch_ratio"]), first)
    console.print(table)
    for line in errors:
        console.print(f"[red]failed[/red] {line}", highlight=False)


def _json(result: dict[str, Any]) -> str:
    import json

    def clean(v: Any) -> Any:
        if isinstance(v, float) and not math.isfinite(v):
            return str(v)
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, list):
            return [clean(x) for x in v]
        return v

    return json.dumps(clean(result), indent=2)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--numel", type=int, default=1 << 24, help="elements (default 2^24 = 16M)")
    p.add_argument("--repeats", type=int, default=10, help="timed calls per figure (default 10)")
    p.add_argument("--warmup", type=int, default=2, help="untimed calls first (default 2)")
    p.add_argument("--names", default=None, help="comma-separated formats (default: every named one)")
    p.add_argument("--backend", choices=("auto", "eager", "compiled"), default="compiled",
                   help="qsim_hooks kernel backend (default 'compiled': the fused kernels are what is measured; "
                        "'auto' would run eagerly until compiling pays)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--no-qtorch", action="store_true", help="skip the qtorch column")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = p.parse_args(argv)
    if args.numel < 1 or args.repeats < 1 or args.warmup < 1:
        p.error("--numel, --repeats and --warmup must be >= 1")
    if args.backend:
        formats.set_backend(args.backend)
    if args.threads:
        torch.set_num_threads(args.threads)
    names = [n.strip() for n in args.names.split(",") if n.strip()] if args.names else None
    try:
        for n in names or ():
            formats.get(n)
    except ValueError as exc:
        p.error(str(exc))
    result = run_bench(args.numel, args.repeats, args.warmup, names, not args.no_qtorch)
    if args.json:
        print(_json(result))
    else:
        print_table(result)
    summary([Met(f"{r['name']} x clone ({r['target']})", r["ratio"], r["target_ratio"], *r["range"])
             for r in result["rows"] if r["target"] is not None and not r.get("error")],
            "format targets", out=sys.stderr if args.json else None)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
