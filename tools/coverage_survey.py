"""Coverage survey: what qsim-hooks simulates, and what it silently misses, on every model of the zoo.

    .venv/bin/python tools/coverage_survey.py [--cases llama,gpt2] [--out /tmp/coverage_survey.json]

For every case of ``tests/zoo`` and each of its implementations the model runs plainly and inside
``qh.quantized(model, QuantConfig(input="e4m3", weight="e4m3", output="e4m3"), stats=True)``, both under
the zoo's own instrumentation (``tests/zoo/probe.py``: aten-level GEMM records with the provenance of
every operand, the owning module, and what the six attention points see), independent of the library's
bookkeeping. From these it derives, per run: the GEMMs and where they run; which weight operands were
quantized and which ran raw although the config asks for weights (and why: a ``Conv1D``, a 3-D expert
tensor, a bare parameter used with ``F.linear``); which activation operands no point covered; functional
use of a registered module's weight from another module; configured points that never fired; attention
modules found by the plan vs modules that behave like attention (a softmax between two
activation-by-activation matmuls, or SDPA), and what ``Rule(types=..., attention=True)`` does for the
missed ones; attention roles given to a child module's GEMM; whether each point saw the tensor its name
says; block axes of intercepted einsums; identity formats (fp32 everywhere) against the plain model
(bit-identical where the case says ``exact``, else within 1e-5); generation inside a session; whether
anything was left on the model; and qsim-hooks' own warnings. A rich table and a findings list go to
the terminal, everything to ``--out`` as JSON. About a minute on 2 cores (one thread).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's qsim_hooks and tests

import qsim_hooks as qh  # noqa: E402
from qsim_hooks.formats import set_backend  # noqa: E402
from qsim_hooks.report_coverage import coverage_line  # noqa: E402
from tests.core.model_check import snapshot, verify_unchanged  # noqa: E402
from tests.zoo import CASES, Case, outputs  # noqa: E402
from tests.zoo.probe import (  # noqa: E402
    FUSED,
    POINTS,
    Probe,
    attention_like,
    einsum_axes,
    pattern,
    point_checks,
    sequences,
)

E4M3 = qh.QuantConfig(input="e4m3", weight="e4m3", output="e4m3")
IDENTITY = qh.QuantConfig(input="fp32", weight="fp32", output="fp32")
SDPA_RTOL = 1e-5


def analyse_session(events: list[dict[str, Any]], probe: Probe, plan: qh.Plan,
                    attn_modules: set[str]) -> dict[str, Any]:
    layers_with_input = {e.module for e in plan.active() if e.point == "input"}
    planned_weights = {f"{e.module}.{e.tensor}" if e.module else e.tensor
                       for e in plan.active() if e.point == "weight"}
    gemms = [e for e in events if e["kind"] == "gemm"]
    rows = []
    for g in gemms:
        srcs = [s for s in g["sources"][:2] if s]
        raw = sorted({n for s in srcs if s[0] == "raw" for n in s[1]})
        quant = sorted({n for s in srcs if s[0] == "quant" for n in s[1]})
        weight = "raw" if raw else "quant" if quant else "none"
        if g["roles"] or g["result"]:
            act = "attention"
        elif g["op"] in FUSED:
            act = "uncovered"
        elif g["module"] in layers_with_input:
            act = "layer"
        else:
            act = "uncovered"
        if act == "uncovered" and g.get("on_grid"):
            # no point of the calling module, but every activation operand on the e4m3 grid: a point of
            # another module quantized it (a layer's points fired for its weight used functionally, or a
            # projection's output point), which the probe sees as values, not as a provenance it can name
            acts = [og for og, src in zip(g["on_grid"][:2], g["sources"][:2]) if not src and og is not None]
            if acts and all(acts):
                act = "on grid"
        scope = next((m for m in g["stack"] if m in attn_modules), None)
        if act == "attention" and scope is not None and g["module"] != scope:
            act = "child"  # a child module's own GEMM given attention roles
        rows.append({**g, "weight": weight, "raw": raw, "quant": quant, "act": act, "scope": scope,
                     "full": weight != "raw" and act not in ("uncovered", "child")})
    # raw weights: why
    raw_causes: dict[str, dict[str, Any]] = {}
    for r in rows:
        for n in r["raw"]:
            info = probe.param_info.get(n, {})
            if any(t in planned_weights for t in probe.aliases(n)):
                cause = "in the plan but used raw"
            elif info.get("owner_type") == "Conv1D":
                cause = "transformers Conv1D (not a registered layer)"
            elif len(info.get("shape", [])) == 3:
                cause = "3-D expert tensor"
            else:
                cause = f"bare parameter of {info.get('owner_type')} (not a registered layer)"
            d = raw_causes.setdefault(n, {"cause": cause, "shape": info.get("shape"), "owner_type":
                                          info.get("owner_type"), "calls": Counter(), "count": 0})
            d["calls"][f"{r['fn']} -> aten.{r['op']}"] += 1
            d["count"] += 1
    # functional use of a planned module's weight from another module
    functional = Counter()
    for r in rows:
        owners = {probe.param_info.get(n, {}).get("owner", "") for n in r["quant"]}
        if r["quant"] and r["module"] not in owners:
            mha = probe.types.get(r["module"]) == "MultiheadAttention" and any(
                n.endswith(".out_proj.weight") for n in r["quant"])
            call = f"{r['fn']} -> aten.{r['op']}" + (" (MHA out_proj: its points applied by the decomposition)"
                                                      if mha else "")
            functional[("/".join(r["quant"]), r["module"], call)] += 1
    # attention scope: GEMMs given roles, by the module that really ran them
    child = Counter()
    roles_per_module: Counter = Counter()
    softmax_per_module: Counter = Counter()
    einsum_issues = Counter()
    for r in rows:
        if r["act"] in ("attention", "child"):
            scope = r["scope"]
            roles_per_module[scope] += 1
            if r["act"] == "child":
                child[(scope, r["module"], "+".join(r["roles"]) + (f"->{r['result']}" if r["result"] else ""),
                       f"{r['fn']} -> aten.{r['op']}")] += 1
            if r["fn"] and r["fn"].startswith("einsum:"):
                for msg in einsum_axes(r["fn"][7:], r["roles"]):
                    einsum_issues[(scope, msg)] += 1
    for e in events:
        if e["kind"] == "softmax" and e["module"] in attn_modules:
            softmax_per_module[e["module"]] += 1
    many = {m: (n, softmax_per_module[m]) for m, n in roles_per_module.items()
            if m is not None and softmax_per_module[m] and n > 2 * softmax_per_module[m]}
    uncovered, on_grid = Counter(), Counter()
    for r in rows:
        if r["act"] == "on grid":
            on_grid[(pattern(r["module"]), f"{r['fn']} -> aten.{r['op']}")] += 1
        if not r["full"]:
            what = "weight raw" if r["weight"] == "raw" else ""
            what += (" + " if what else "") + {"uncovered": "activation uncovered",
                                               "child": "attention roles on a child's GEMM"}.get(r["act"], "")
            uncovered[(pattern(r["module"]), f"{r['fn']} -> aten.{r['op']}", what)] += 1
    return {
        "gemms": len(rows), "full": sum(r["full"] for r in rows),
        "by_op": dict(Counter(f"{r['fn']} -> aten.{r['op']}" for r in rows)),
        "not_full": [{"module": m, "call": c, "what": w, "count": n} for (m, c, w), n in sorted(uncovered.items())],
        "on_grid": [{"module": m, "call": c, "count": n} for (m, c), n in sorted(on_grid.items())],
        "raw_weights": {n: {**d, "calls": dict(d["calls"])} for n, d in sorted(raw_causes.items())},
        "functional_weight_use": [{"param": p, "called_from": m, "call": c, "count": n}
                                  for (p, m, c), n in sorted(functional.items())],
        "scope_child_gemms": [{"scope": s, "module": m, "roles": ro, "call": c, "count": n}
                              for (s, m, ro, c), n in sorted(child.items())],
        "roles_per_softmax": {m: {"matmuls_with_roles": n, "softmax": s} for m, (n, s) in sorted(many.items())},
        "einsum_axes": [{"scope": s, "issue": msg, "count": n} for (s, msg), n in sorted(einsum_issues.items())],
        "point_violations": {m: dict(c) for m, c in sorted(point_checks(events).items())},
        "attention_sequences": sequences(events, attn_modules, probe.types),
    }


def analyse_plain(events: list[dict[str, Any]], probe: Probe) -> dict[str, Any]:
    gemms = [e for e in events if e["kind"] == "gemm"]
    used = Counter(n for g in gemms for s in g["sources"] if s for n in s[1])
    like = attention_like(events)
    return {"gemms": len(gemms), "by_op": dict(Counter(f"{g['fn']} -> aten.{g['op']}" for g in gemms)),
            "params_in_gemms": len(used), "attention_like": like,
            "attention_sequences": sequences(events, set(like), probe.types)}


# ---------------------------------------------------------------------------------------------
# one case
# ---------------------------------------------------------------------------------------------
def _rel(a: list[Tensor], b: list[Tensor]) -> float:
    if len(a) != len(b) or not a:
        return float("inf")
    return max(((x.float() - y.float()).abs().max() / y.float().abs().max().clamp_min(1e-30)).item()
               for x, y in zip(a, b))


def _clean(m: nn.Module, snap: dict, depth: int) -> str | None:
    try:
        verify_unchanged(m, snap)
    except AssertionError as exc:
        return f"left on the model: {exc}"
    if torch._C._len_torch_function_stack() != depth:
        return "a torch function mode was left on the stack"
    return None


def _qsim_warnings(caught: list[warnings.WarningMessage]) -> list[str]:
    """The distinct warnings qsim-hooks raised (its messages start with its name or come from its files)."""
    msgs = []
    for w in caught:
        text = str(w.message)
        if ("qsim_hooks" in text or "qsim_hooks" in (w.filename or "")) and text not in msgs:
            msgs.append(text)
    return msgs


def instrumented_session(case: Case, model: nn.Module, cfg: qh.QuantConfig, ref: list[Tensor]) -> dict[str, Any]:
    """One forward inside ``qh.quantized(model, cfg, stats=True)`` under a :class:`Probe`."""
    rec: dict[str, Any] = {"errors": {}}
    plan = qh.plan(model, cfg)
    attn_modules = {e.module for e in plan if e.point in POINTS}
    probe = Probe(model, grid=qh.formats.get("e4m3"))  # the survey's configs are e4m3 everywhere
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            with probe:
                snap, inner = snapshot(model), torch._C._len_torch_function_stack()
                with qh.quantized(model, cfg, stats=True) as qs:
                    probe.watch_session(model, qs)
                    got = outputs(case.run(model))
                rec["clean"] = _clean(model, snap, inner)
            rec["session"] = analyse_session(probe.events, probe, plan, attn_modules)
            rec["library_coverage"] = coverage_line(qs.coverage().summary)  # what the library itself says
            rec["e4m3_rel_change"] = _rel(got, ref)
            rec["never_fired"] = sorted({f"{pattern(r['module'])}:{r['point']}" for r in qs.stats()
                                         if not r["calls"]})
        except Exception as exc:  # noqa: BLE001 - a survey records every failure
            rec["errors"]["session"] = f"{type(exc).__name__}: {exc}"
    rec["warnings"] = _qsim_warnings(caught)
    return rec


def rule_probe(case: Case, model: nn.Module, types: tuple[type, ...], ref: list[Tensor]) -> dict[str, Any]:
    """What ``Rule(types=..., attention=True)`` gives the six points, and a run with them set explicitly."""
    cfg = qh.QuantConfig(input="e4m3", weight="e4m3", output="e4m3", rules=[qh.Rule(types=types, attention=True)])
    formats = Counter((e.point, e.format_name) for e in qh.plan(model, cfg) if e.point in POINTS)
    explicit = qh.QuantConfig(input="e4m3", weight="e4m3", output="e4m3",
                              rules=[qh.Rule(types=types, attention=True, **{p: "e4m3" for p in POINTS})])
    run = instrumented_session(case, model, explicit, ref)
    s = run.get("session", {})
    return {"types": [t.__name__ for t in types], "rule_formats": {f"{p}={f}": n for (p, f), n in formats.items()},
            "explicit_points": {"gemms": s.get("gemms"), "full": s.get("full"),
                                "point_violations": s.get("point_violations"), "never_fired": run.get("never_fired"),
                                "errors": run["errors"], "warnings": run["warnings"]}}


def survey_case(case: Case, impl: str) -> dict[str, Any]:
    rec: dict[str, Any] = {"case": case.name, "impl": impl, "library": case.library, "errors": {},
                           "expected_attention": sorted(case.attention)}
    t0 = time.perf_counter()
    try:
        model = case.build(impl)
    except Exception as exc:  # noqa: BLE001 - a survey records every failure
        rec["errors"]["build"] = f"{type(exc).__name__}: {exc}"
        return rec
    rec["build_s"] = round(time.perf_counter() - t0, 3)
    depth = torch._C._len_torch_function_stack()
    ref = outputs(case.run(model))
    rec["run_s"] = round(time.perf_counter() - t0 - rec["build_s"], 3)
    # (a) plain, instrumented
    probe = Probe(model)
    with probe:
        case.run(model)
    rec["plain"] = analyse_plain(probe.events, probe)
    # (b) the e4m3 session, instrumented
    plan = qh.plan(model, E4M3)
    attn_modules = {e.module for e in plan if e.point in POINTS}
    named = dict(model.named_modules())
    rec["attention_planned"] = sorted({type(named[m]).__name__ for m in attn_modules})
    like = rec["plain"]["attention_like"]
    rec["attention_like"] = sorted({type(named[m]).__name__ for m in like if m in named})
    rec["attention_missed"] = sorted({f"{type(named[m]).__name__} ({pattern(m)})" for m in like
                                      if m in named and m not in attn_modules})
    rec["attention_extra"] = sorted({type(named[m]).__name__ for m in attn_modules if m not in like})
    sess = instrumented_session(case, model, E4M3, ref)
    rec["errors"].update(sess.pop("errors"))
    rec.update(sess)
    # (b') the missed attention classes marked by a rule, as the README says to: Rule(types=..., attention=True)
    missed = {type(named[m]) for m in like if m in named and m not in attn_modules}
    if missed:
        rec["rule_attention"] = rule_probe(case, model, tuple(missed), ref)
    # (c) identity formats, not instrumented
    try:
        snap = snapshot(model)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with qh.quantized(model, IDENTITY):
                ident = outputs(case.run(model))
        rel = _rel(ident, ref)
        exact = impl in case.exact
        ok = all(torch.equal(a, b) for a, b in zip(ident, ref)) if exact else rel <= SDPA_RTOL
        rec["identity"] = {"exact_expected": exact, "rel": rel, "ok": bool(ok and len(ident) == len(ref))}
        rec["clean_identity"] = _clean(model, snap, depth)
    except Exception as exc:  # noqa: BLE001
        rec["errors"]["identity"] = f"{type(exc).__name__}: {exc}"
    # (d) generation with a KV cache inside a session
    if case.generate is not None:
        try:
            plain = case.generate(model)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                with qh.quantized(model, IDENTITY):
                    same = case.generate(model)
                with qh.quantized(model, E4M3):
                    q = case.generate(model)
            rec["generate"] = {"shape": list(plain.shape), "identity_same_tokens": bool(torch.equal(same, plain)),
                               "e4m3_shape_ok": list(q.shape) == list(plain.shape)}
        except Exception as exc:  # noqa: BLE001
            rec["errors"]["generate"] = f"{type(exc).__name__}: {exc}"
    rec["total_s"] = round(time.perf_counter() - t0, 3)
    return rec


# ---------------------------------------------------------------------------------------------
# rendering
# ---------------------------------------------------------------------------------------------
def _table(records: list[dict[str, Any]]):
    from rich.table import Table

    t = Table(title="qsim-hooks coverage survey (e4m3 input/weight/output)", show_lines=False)
    for col in ("case", "impl", "GEMMs", "full", "raw W", "uncov A", "attn plan/like", "missed", "pt viol",
                "child", "unfired", "ident", "e4m3 Δ", "gen", "clean", "warn", "error", "qs.coverage()"):
        t.add_column(col, overflow="fold")
    for r in records:
        s = r.get("session", {})
        nf = s.get("not_full", [])
        raw_w = sum(x["count"] for x in nf if "weight raw" in x["what"])
        unc = sum(x["count"] for x in nf if "activation uncovered" in x["what"])
        ident = r.get("identity", {})
        gen = r.get("generate")
        t.add_row(
            r["case"], r["impl"], str(s.get("gemms", "-")), str(s.get("full", "-")), str(raw_w or ""),
            str(unc or ""), f"{len(r.get('attention_planned', []))}/{len(r.get('attention_like', []))}",
            ", ".join(r.get("attention_missed", [])),
            str(sum(sum(c.values()) for c in s.get("point_violations", {}).values()) or ""),
            str(sum(x["count"] for x in s.get("scope_child_gemms", [])) or ""),
            str(len(r.get("never_fired", [])) or ""),
            "" if not ident else ("ok" if ident["ok"] else f"{ident['rel']:.1e}"),
            "" if "e4m3_rel_change" not in r else f"{r['e4m3_rel_change']:.3f}",
            "-" if gen is None else ("ok" if gen["identity_same_tokens"] and gen["e4m3_shape_ok"] else "DIFF"),
            "ok" if not r.get("clean") and not r.get("clean_identity") else "LEFT",
            str(len(r.get("warnings", [])) or ""), "; ".join(f"{k}: {v[:60]}" for k, v in r["errors"].items()),
            r.get("library_coverage", "-"))
    return t


def _findings(r: dict[str, Any]) -> list[str]:
    s = r.get("session", {})
    out = []
    for n, d in s.get("raw_weights", {}).items():
        out.append(f"raw weight {n} {d['shape']} [{d['cause']}] via {', '.join(d['calls'])} x{d['count']}")
    for x in s.get("functional_weight_use", []):
        out.append(f"functional use of {x['param']} from {x['called_from'] or '<model>'} ({x['call']}) x{x['count']}")
    for x in s.get("on_grid", []):
        out.append(f"activations on the e4m3 grid from another module's point: {x['module'] or '<model>'} "
                   f"{x['call']} x{x['count']}")
    for x in s.get("not_full", []):
        if x["what"] in ("activation uncovered",):
            out.append(f"uncovered activation: {x['module'] or '<model>'} {x['call']} x{x['count']}")
    for x in s.get("scope_child_gemms", []):
        out.append(f"child GEMM in scope {pattern(x['scope'])}: {x['module']} got {x['roles']} ({x['call']})")
    for m, d in s.get("roles_per_softmax", {}).items():
        out.append(f"{pattern(m)}: {d['matmuls_with_roles']} intercepted matmuls for {d['softmax']} softmax")
    for x in s.get("einsum_axes", []):
        out.append(f"einsum in {pattern(x['scope'] or '')}: {x['issue']} (block formats must run along the "
                   "contracted axis; the library's choice is checked in tests/attention/test_pairing.py)")
    for m, c in s.get("point_violations", {}).items():
        for msg, n in c.items():
            out.append(f"point check {pattern(m)}: {msg} x{n}")
    if r.get("attention_missed"):
        out.append(f"attention missed: {', '.join(r['attention_missed'])}")
    if r.get("never_fired"):
        out.append(f"never fired: {', '.join(r['never_fired'])}")
    for w in r.get("warnings", []):
        out.append(f"warning: {w}")
    ra = r.get("rule_attention")
    if ra:
        ex = ra["explicit_points"]
        viol = sum(sum(c.values()) for c in (ex["point_violations"] or {}).values())
        out.append(f"Rule(types={ra['types']}, attention=True) gives the six points {ra['rule_formats']}; "
                   f"with q..context set explicitly: {ex['full']}/{ex['gemms']} GEMMs simulated, {viol} point "
                   f"violations, never fired {ex['never_fired']}, errors {ex['errors']}")
    for k, v in r["errors"].items():
        out.append(f"ERROR {k}: {v}")
    folded = Counter(re.sub(r"(?<=\.)\d+(?=\.)", "*", line) for line in out)
    return [line if n == 1 else f"{line} [{n} lines folded]" for line, n in folded.items()]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", default="", help="comma-separated case names (default: all)")
    ap.add_argument("--out", default="/tmp/coverage_survey.json", help="JSON output path")
    ap.add_argument("--no-findings", action="store_true", help="only the table")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    set_backend("eager")  # no kernel compilation: tiny tensors
    names = [n for n in a.cases.split(",") if n] or list(CASES)
    unknown = sorted(set(names) - set(CASES))
    if unknown:
        ap.error(f"unknown cases {unknown}; known: {', '.join(CASES)}")
    from rich.console import Console
    from rich.progress import track

    console = Console(width=200)
    records = []
    t0 = time.perf_counter()
    jobs = [(n, impl) for n in names for impl in CASES[n].impls]
    for n, impl in track(jobs, description="surveying", console=console, transient=True):
        records.append(survey_case(CASES[n], impl))
    console.print(_table(records))
    if not a.no_findings:
        for r in records:
            f = _findings(r)
            if f:
                console.print(f"[bold]{r['case']} / {r['impl']}[/bold]")
                for line in f:
                    console.print(f"  - {line}", markup=False, highlight=False)
    Path(a.out).write_text(json.dumps(records, indent=1, default=str))
    console.print(f"{len(records)} runs in {time.perf_counter() - t0:.1f} s; JSON: {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
