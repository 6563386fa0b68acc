"""Model-level analysis: the simulated model against full precision, layer by layer.

What this module answers, each as plain data (rendered by :mod:`qsim_hooks.report`):

* :func:`compare` - the full-precision and the simulated model on the same batches:
  output SQNR, max abs error, top-1 agreement for classifiers, an optional task
  metric, and the session's per-point statistics (:class:`Comparison`).
* :func:`sweep` - one comparison per format, the formats applied to chosen roles.
* :func:`sensitivity` - one layer (or block) quantized at a time with everything
  else in full precision, or everything quantized but one, ranked by output SQNR.
* :func:`capture` - the tensors some quantization points see (through their
  ``observer`` slot), for :func:`qsim_hooks.plots.histogram`.
* :func:`group_stats` - per-point statistics rows collapsed by module-name prefix.

The one design reason a reader needs: every variant of a model is expressed as
a :class:`~qsim_hooks.config.QuantConfig` (sensitivity appends
``Rule(match="*", enabled=False)`` and ``Rule(match="re:<that layer>", enabled=True)``
to the user's rules), so each run is an ordinary session and sees exactly what
the user's own config would. The full-precision reference is computed once and
reused by every run of a sweep or a sensitivity analysis.

Each run puts the model in eval mode under ``torch.no_grad()`` and restores its
training flags afterwards; sessions remove their hooks and parametrizations,
so the model is unchanged after any function here.

How a batch is fed and which output is compared:

* ``forward(model, batch)`` (default: ``model(**batch)`` for a mapping,
  ``model(*batch)`` for a tuple or list, ``model(batch)`` otherwise);
* ``output(out) -> Tensor`` (default :func:`first_tensor`: the output itself
  when it is a tensor, otherwise the first tensor found depth-first in a tuple,
  list or mapping; a Hugging Face ``ModelOutput`` is a mapping of its non-None
  fields, so this is ``logits`` unless the model also returned a ``loss``: pass
  ``output=lambda o: o.logits`` then).
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor, nn

from .batches import default_forward  # noqa: F401  (re-exported: part of this module's API)
from .config import QuantConfig, Rule
from .formats import Format
from .session import Session, plan
from .stats import power_sums, sqnr_db_from_sums

__all__ = ["compare", "Comparison", "sweep", "sensitivity", "capture", "Captured", "group_stats",
           "group_name", "select_points", "default_forward", "first_tensor", "SENSITIVITY_MODES"]

Forward = Callable[[nn.Module, Any], Any]
OutputFn = Callable[[Any], Tensor]
Metric = Callable[[nn.Module, Sequence[Any]], float]

SENSITIVITY_MODES = ("one", "all-but-one")


# ---------------------------------------------------------------------------
# Feeding a model and picking its output
# ---------------------------------------------------------------------------
def _find_tensor(out: Any) -> Tensor | None:
    if isinstance(out, Tensor):
        return out
    if isinstance(out, Mapping):  # dicts and Hugging Face ModelOutput (its non-None fields, in order)
        items: Iterable[Any] = out.values()
    elif isinstance(out, (tuple, list)):
        items = out
    else:
        return None
    for item in items:
        t = _find_tensor(item)
        if t is not None:
            return t
    return None


def first_tensor(out: Any) -> Tensor:
    """The output itself when it is a tensor, else the first tensor found depth-first.

    Raises:
        TypeError: when the output holds no tensor (pass ``output=fn`` to pick one).
    """
    t = _find_tensor(out)
    if t is None:
        raise TypeError(f"the model's output ({type(out).__name__}) holds no tensor to compare; "
                        "pass output=fn, a function from the output to the tensor to compare")
    return t


def _batch_list(batch: Any, batches: Iterable[Any] | None) -> list[Any]:
    if batches is not None:
        if batch is not None:
            raise TypeError("pass either batch= (one batch) or batches= (several), not both")
        if isinstance(batches, Tensor):
            raise TypeError("batches= must be an iterable of batches (a list); "
                            "for one tensor batch pass batch=")
        out = list(batches)
        if not out:
            raise ValueError("batches= is empty: give at least one batch")
        return out
    if batch is None:
        raise TypeError("no input: pass batch= (one batch) or batches= (several)")
    return [batch]


@contextmanager
def _eval_no_grad(model: nn.Module) -> Iterator[None]:
    """Eval mode and no autograd for the block; the training flags come back afterwards."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for m, training in flags:
            m.training = training


def _outputs(model: nn.Module, batches: Sequence[Any], forward: Forward, output: OutputFn) -> list[Tensor]:
    outs = []
    for b in batches:
        t = output(forward(model, b))
        if not isinstance(t, Tensor):
            raise TypeError(f"output= must return a torch.Tensor, got {type(t).__name__}")
        outs.append(t.detach())
    return outs


def _check_model_cfg(model: Any, cfg: Any) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(cfg, QuantConfig):
        raise TypeError(f"cfg must be a qsim_hooks.QuantConfig, got {type(cfg).__name__}")


# ---------------------------------------------------------------------------
# compare
# ---------------------------------------------------------------------------
@dataclass
class Comparison:
    """The simulated model against full precision on the same batches.

    Attributes:
        output_sqnr_db: ``10*log10(sum(ref^2) / sum((ref - sim)^2))`` over every
            compared output element of every batch (``inf``: identical outputs).
        max_abs_error: ``max |ref - sim|`` over finite reference elements.
        top1_agreement: fraction of rows whose argmax (last dim) is the same,
            for 2-D outputs with two or more columns (classifier logits) or
            when asked with ``top1=True``; ``None`` otherwise.
        top1_rows: how many rows the agreement counts.
        numel: compared output elements (finite reference elements).
        batches: how many batches were run.
        signal_power, noise_power: the two sums behind ``output_sqnr_db``.
        metric_full, metric_sim: the user's ``metric(model, batches)`` on the
            full-precision and on the simulated model (``None`` without one).
        stats: the session's per-point rows (``Session.stats()``; empty with
            ``stats=False``).
    """

    output_sqnr_db: float
    max_abs_error: float
    top1_agreement: float | None
    top1_rows: int
    numel: int
    batches: int
    signal_power: float
    noise_power: float
    metric_full: float | None = None
    metric_sim: float | None = None
    stats: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self, *, stats: bool = True) -> dict[str, Any]:
        """Plain data (``stats=False`` leaves out the per-point rows)."""
        d = dataclasses.asdict(self)
        if not stats:
            del d["stats"]
        return d


def _figures(refs: Sequence[Tensor], sims: Sequence[Tensor], top1: bool | None) -> dict[str, Any]:
    signal = noise = 0.0
    n = rows = agree = 0
    max_err = 0.0
    for i, (r, s) in enumerate(zip(refs, sims)):
        if r.shape != s.shape:
            raise ValueError(f"batch {i}: the simulated output has shape {tuple(s.shape)}, the "
                             f"full-precision one {tuple(r.shape)}")
        sx, se, k = power_sums(r, s)
        signal, noise, n = signal + sx, noise + se, n + k
        r64 = r.detach().to("cpu", torch.float64)
        s64 = s.detach().to("cpu", torch.float64)
        fin = torch.isfinite(r64)
        if bool(fin.any()):
            d = (r64 - s64).abs()[fin]
            d = torch.where(torch.isnan(d), math.inf, d)
            max_err = max(max_err, float(d.max()))
        use = (r.ndim == 2 and r.shape[-1] >= 2) if top1 is None else (bool(top1) and r.ndim >= 1)
        if use and r.numel():
            agree += int((r64.argmax(-1) == s64.argmax(-1)).sum())
            rows += r64[..., 0].numel()
    return {"output_sqnr_db": sqnr_db_from_sums(signal, noise, n), "max_abs_error": max_err if n else math.nan,
            "top1_agreement": agree / rows if rows else None, "top1_rows": rows, "numel": n,
            "batches": len(refs), "signal_power": signal, "noise_power": noise}


@dataclass
class _Reference:
    """One full-precision run, reused by every simulated run that compares against it."""

    model: nn.Module
    batches: list[Any]
    forward: Forward
    output: OutputFn
    outputs: list[Tensor]
    metric: Metric | None
    metric_full: float | None
    top1: bool | None


def _reference(model: nn.Module, batches: list[Any], forward: Forward | None, output: OutputFn | None,
               metric: Metric | None, top1: bool | None) -> _Reference:
    fwd = forward or default_forward
    out = output or first_tensor
    with _eval_no_grad(model):
        outs = _outputs(model, batches, fwd, out)
        mfull = _metric(metric, model, batches)
    return _Reference(model, batches, fwd, out, outs, metric, mfull, top1)


def _metric(metric: Metric | None, model: nn.Module, batches: list[Any]) -> float | None:
    if metric is None:
        return None
    v = metric(model, batches)
    try:
        return float(v)
    except (TypeError, ValueError):
        raise TypeError(f"metric(model, batches) must return a number, got {type(v).__name__}") from None


def _simulate(ref: _Reference, cfg: QuantConfig, *, calibration: Any = None, stats: bool = False) -> Comparison:
    model = ref.model
    with _eval_no_grad(model):
        with Session(model, cfg, stats=stats, calibration=calibration) as qs:
            sims = _outputs(model, ref.batches, ref.forward, ref.output)
        rows = qs.stats() if stats else []
        msim = None
        if ref.metric is not None:  # a session of its own: the metric's runs stay out of the statistics
            with Session(model, cfg, calibration=calibration):
                msim = _metric(ref.metric, model, ref.batches)
    return Comparison(**_figures(ref.outputs, sims, ref.top1), metric_full=ref.metric_full, metric_sim=msim,
                      stats=rows)


def compare(model: nn.Module, cfg: QuantConfig, batch: Any = None, *, batches: Iterable[Any] | None = None,
            forward: Forward | None = None, output: OutputFn | None = None, metric: Metric | None = None,
            calibration: Any = None, stats: bool = True, top1: bool | None = None) -> Comparison:
    """Run ``model`` in full precision and simulated under ``cfg`` on the same input; compare the outputs.

    Args:
        model: any ``nn.Module``; unchanged afterwards (training flags included).
        cfg: the simulation.
        batch: one batch, fed by ``forward`` (or ``batches=``: several, merged
            exactly: the SQNR is that of all outputs together).
        forward: ``forward(model, batch)``; default :func:`default_forward`.
        output: ``output(model_output) -> Tensor`` picks the tensor to compare;
            default :func:`first_tensor`.
        metric: ``metric(model, batches) -> float``, a task metric (accuracy
            on labelled batches, perplexity, ...) measured on both models.
        calibration: passed to the session (static amax per point).
        stats: collect the per-point statistics (``Comparison.stats``).
        top1: ``None`` (default) computes top-1 agreement for 2-D outputs with
            two or more columns; ``True`` over the last dim of any output;
            ``False`` never.

    Returns:
        a :class:`Comparison` (``.as_dict()`` for plain data).
    """
    _check_model_cfg(model, cfg)
    ref = _reference(model, _batch_list(batch, batches), forward, output, metric, top1)
    return _simulate(ref, cfg, calibration=calibration, stats=stats)


def sweep(model: nn.Module, cfg: QuantConfig | None, formats: Sequence[Any], batch: Any = None, *,
          batches: Iterable[Any] | None = None, roles: Sequence[str] = ("input", "weight"),
          forward: Forward | None = None, output: OutputFn | None = None, metric: Metric | None = None,
          calibration: Any = None, top1: bool | None = None) -> list[dict[str, Any]]:
    """One comparison per format: ``cfg`` with ``roles`` set to that format, against one reference.

    ``cfg`` (``None``: an empty config) supplies the other roles and the rules;
    rules that set a role's format still win over the swept one for the layers
    they match. Returns one row per format with the keys ``format``, ``roles``,
    ``output_sqnr_db``, ``max_abs_error``, ``top1_agreement``, ``metric``,
    ``metric_full``.
    """
    from .config import ROLES

    cfg = QuantConfig() if cfg is None else cfg
    _check_model_cfg(model, cfg)
    roles = tuple(roles)
    bad = [r for r in roles if r not in ROLES]
    if bad or not roles:
        raise ValueError(f"roles={list(roles)!r}: each must be one of {list(ROLES)} (at least one)")
    cfgs = [(f, dataclasses.replace(cfg, **{r: f for r in roles})) for f in formats]  # bad names fail first
    ref = _reference(model, _batch_list(batch, batches), forward, output, metric, top1)
    rows = []
    for f, c in cfgs:
        res = _simulate(ref, c, calibration=calibration)
        rows.append({"format": f.name if isinstance(f, Format) else str(f), "roles": ",".join(roles),
                     "output_sqnr_db": res.output_sqnr_db, "max_abs_error": res.max_abs_error,
                     "top1_agreement": res.top1_agreement, "metric": res.metric_sim,
                     "metric_full": res.metric_full})
    return rows


# ---------------------------------------------------------------------------
# sensitivity
# ---------------------------------------------------------------------------
def group_name(module: str, depth: int | None) -> str:
    """The first ``depth`` dot-separated components of a module name (all of it for ``None``)."""
    if depth is None:
        return module
    return ".".join(module.split(".")[:depth])


def _exact_rule(modules: Sequence[str]) -> str:
    """A ``re:`` pattern matching exactly these module names (and nothing under or beside them)."""
    return "re:(?:" + "|".join(re.escape(m) for m in modules) + ")"


def sensitivity(model: nn.Module, cfg: QuantConfig, batch: Any = None, *, batches: Iterable[Any] | None = None,
                mode: Literal["one", "all-but-one"] = "one", granularity: Literal["layer"] | int = "layer",
                forward: Forward | None = None, output: OutputFn | None = None, calibration: Any = None,
                top1: bool | None = None, progress: bool = False) -> list[dict[str, Any]]:
    """Rank layers by the output SQNR their quantization costs.

    ``mode="one"``: each layer quantized as ``cfg`` says, every other layer in
    full precision; the layer with the lowest output SQNR ranks first (the
    layers that must stay in higher precision). ``mode="all-but-one"``:
    everything quantized except that layer; the layer whose exemption recovers
    the most (highest output SQNR) ranks first, and ``gain_db`` says by how
    much over everything quantized.

    Args:
        granularity: ``"layer"`` (each instrumented module) or an int depth:
            modules grouped by the first ``depth`` components of their names
            (``2``: ``layer1.0.conv1`` and ``layer1.0.conv2`` form ``layer1.0``).
        progress: show a progress bar (``rich.progress``, on stderr, only on a terminal).
        The rest as in :func:`compare`.

    Returns:
        rows, best ranked first, with the keys ``rank``, ``layer``, ``points``
        (quantization points in the unit), ``formats``, ``output_sqnr_db``,
        ``max_abs_error``, ``top1_agreement``, ``mode`` and, for
        ``"all-but-one"``, ``all_quantized_sqnr_db`` and ``gain_db``.
    """
    _check_model_cfg(model, cfg)
    if mode not in SENSITIVITY_MODES:
        raise ValueError(f"mode={mode!r} is not allowed; use one of {list(SENSITIVITY_MODES)}")
    if granularity == "layer":
        depth = None
    elif isinstance(granularity, int) and not isinstance(granularity, bool) and granularity >= 1:
        depth = granularity
    else:
        raise ValueError(f"granularity={granularity!r} is not allowed; use 'layer' or a positive int "
                         "(group modules by that many leading name components)")
    units: dict[str, list[str]] = {}  # unit -> formats of its active points
    modules: dict[str, dict[str, None]] = {}  # unit -> its modules with an active point (ordered)
    for e in plan(model, cfg).active():
        unit = group_name(e.module, depth)
        units.setdefault(unit, []).append(e.format_name)
        modules.setdefault(unit, {})[e.module] = None
    if not units:
        raise ValueError("cfg quantizes nothing in this model: there is no layer to rank")
    ref = _reference(model, _batch_list(batch, batches), forward, output, None, top1)
    base = _simulate(ref, cfg, calibration=calibration) if mode == "all-but-one" else None
    rows = []
    for unit in _progress(list(units), progress, f"sensitivity ({mode})"):
        # exact names, not a prefix pattern: a module the user's rules switched off stays off
        pattern = _exact_rule(list(modules[unit]))
        if mode == "one":
            extra = (Rule(match="*", enabled=False, name="sensitivity: all off"),
                     Rule(match=pattern, enabled=True, name=f"sensitivity: {unit or '<model>'} on"))
        else:
            extra = (Rule(match=pattern, enabled=False, name=f"sensitivity: {unit or '<model>'} off"),)
        res = _simulate(ref, dataclasses.replace(cfg, rules=tuple(cfg.rules) + extra), calibration=calibration)
        fmts = units[unit]
        row: dict[str, Any] = {"layer": unit, "points": len(fmts), "formats": ",".join(dict.fromkeys(fmts)),
                               "output_sqnr_db": res.output_sqnr_db, "max_abs_error": res.max_abs_error,
                               "top1_agreement": res.top1_agreement, "mode": mode}
        if base is not None:
            row["all_quantized_sqnr_db"] = base.output_sqnr_db
            row["gain_db"] = res.output_sqnr_db - base.output_sqnr_db
        rows.append(row)

    def key(r: dict[str, Any]) -> float:
        v = r["output_sqnr_db"]
        if math.isnan(v):
            return math.inf  # no data: last
        return v if mode == "one" else -v

    rows.sort(key=key)  # stable: ties keep model order
    return [{"rank": i + 1, **r} for i, r in enumerate(rows)]


def _progress(items: list[str], show: bool, what: str) -> Iterable[str]:
    if not show:
        return items
    from rich.console import Console
    from rich.progress import track

    console = Console(stderr=True)
    if not console.is_terminal:
        return items
    return track(items, description=what, console=console, transient=True)


# ---------------------------------------------------------------------------
# grouping statistics rows
# ---------------------------------------------------------------------------
def _joined(values: Iterable[Any]) -> str:
    return ",".join(dict.fromkeys(str(v) for v in values if v is not None))


def group_stats(rows: Sequence[Mapping[str, Any]], depth: int) -> list[dict[str, Any]]:
    """Collapse ``Session.stats()`` rows by module-name prefix (``depth`` components) and point.

    One row per (prefix, point), in order of first appearance. Exact merges:
    SQNR from the summed signal and noise powers (not an average of decibels),
    saturated and flushed fractions weighted by element counts, the largest
    amax, summed calls and elements; ``points`` counts the merged rows, and
    ``format`` / ``granularity`` / ``tensor`` list the distinct values.
    Rows without statistics (``stats=False``) give ``None`` figures.
    """
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
        raise ValueError(f"group={depth!r} must be a positive int (module-name components to keep)")
    groups: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for r in rows:
        groups.setdefault((group_name(str(r.get("module", "")), depth), str(r.get("point"))), []).append(r)
    out = []
    for (prefix, point), members in groups.items():
        g: dict[str, Any] = {"module": prefix, "point": point, "points": len(members),
                             "tensor": _joined(m.get("tensor") for m in members),
                             "format": _joined(m.get("format") for m in members),
                             "granularity": _joined(m.get("granularity") for m in members)}
        have = [m for m in members if m.get("calls") is not None]
        if not have:
            g.update({"calls": None, "numel": None, "sqnr_db": None, "saturated": None, "flushed": None,
                      "amax": None})
        else:
            numel = sum(int(m.get("numel") or 0) for m in have)
            sx = sum(float(m.get("signal_power") or 0.0) for m in have)
            se = sum(float(m.get("noise_power") or 0.0) for m in have)
            amaxes = [float(m["amax"]) for m in have if m.get("amax") is not None]
            g.update({
                "calls": sum(int(m["calls"]) for m in have), "numel": numel,
                "sqnr_db": sqnr_db_from_sums(sx, se, numel) if numel else None,
                "saturated": sum(float(m.get("saturated") or 0.0) * int(m.get("numel") or 0) for m in have)
                / numel if numel else 0.0,
                "flushed": sum(float(m.get("flushed") or 0.0) * int(m.get("numel") or 0) for m in have)
                / numel if numel else 0.0,
                "amax": max(amaxes) if amaxes else None, "signal_power": sx, "noise_power": se})
        out.append(g)
    return out


# ---------------------------------------------------------------------------
# capture (for histograms)
# ---------------------------------------------------------------------------
@dataclass
class Captured:
    """The values one quantization point saw.

    Attributes:
        module, point, tensor: the point (as in ``Session.stats()`` rows).
        format: its format.
        amax: the static (calibrated) amax, flattened, or ``None`` (dynamic).
        data: 1-D float32 CPU tensor of the values seen, before quantization:
            every element of every call, or a uniform random sample of
            ``max_samples`` of them when there were more. A weight is taken once.
        numel: how many elements were seen in all.
        calls: how many tensors were seen.
    """

    module: str
    point: str
    tensor: str
    format: Format | None
    amax: list[float] | None
    data: Tensor
    numel: int
    calls: int

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.module, self.point, self.tensor)

    @property
    def label(self) -> str:
        where = self.module or "<model>"
        return f"{where}.{self.tensor}" if self.point == "weight" else f"{where} [{self.point}]"


def select_points(keys: Sequence[tuple[str, str, str]], points: Any) -> list[tuple[str, str, str]]:
    """The ``(module, point, tensor)`` keys that ``points`` names (see :func:`capture`), in ``keys`` order per name.

    Raises:
        ValueError: a name that matches no key (the message lists some that exist).
    """
    if points is None:
        return list(keys)
    wanted = [points] if isinstance(points, (str, tuple)) else list(points)
    chosen: list[tuple[str, str, str]] = []
    for w in wanted:
        if isinstance(w, tuple):
            parts = tuple(str(p) for p in w)
        elif isinstance(w, str):
            module, sep, pt = w.rpartition(":")
            parts = (module, pt) if sep else (w,)
        else:
            raise TypeError(f"points: expected 'module', 'module:point' or a (module, point) tuple, got {w!r}")
        hits = [k for k in keys if k[0] == parts[0]
                and (len(parts) < 2 or parts[1] in (k[1], k[2])) and (len(parts) < 3 or parts[2] == k[2])]
        if not hits:
            known = ", ".join(f"{k[0] or '<model>'}:{k[2] if k[1] == 'weight' else k[1]}" for k in keys[:8])
            raise ValueError(f"points: {w!r} is not a quantization point under this config; "
                             f"some that are: {known}{' ...' if len(keys) > 8 else ''}")
        chosen.extend(h for h in hits if h not in chosen)
    return chosen


def capture(model: nn.Module, cfg: QuantConfig, batch: Any = None, *, batches: Iterable[Any] | None = None,
            points: Any = None, forward: Forward | None = None, calibration: Any = None,
            max_samples: int = 1 << 20, seed: int = 0) -> dict[tuple[str, str, str], Captured]:
    """Run the simulated model and keep what the chosen points see (their input, before quantizing).

    Args:
        points: ``None`` (every point) or some of: ``"module"`` (all its
            points), ``"module:input"``, ``"module:output"``, ``"module:weight"``
            (or the weight tensor's name), or ``(module, point[, tensor])``.
        max_samples: at most this many values kept per point (a uniform random
            sample, seeded by ``seed``, beyond it).
        The rest as in :func:`compare`.

    Returns:
        ``{(module, point, tensor): Captured}`` in model order.
    """
    _check_model_cfg(model, cfg)
    if isinstance(max_samples, bool) or not isinstance(max_samples, int) or max_samples < 1:
        raise ValueError(f"max_samples={max_samples!r} must be a positive int")
    bl = _batch_list(batch, batches)
    fwd = forward or default_forward
    gen = torch.Generator().manual_seed(seed)
    seen: dict[tuple[str, str, str], list[Any]] = {}  # key -> [chunks, numel, calls]

    def sample(x: Tensor) -> Tensor:
        flat = x.detach().flatten().float().cpu()
        if flat.numel() > max_samples:
            flat = flat[torch.randint(flat.numel(), (max_samples,), generator=gen)]
        return flat

    with _eval_no_grad(model), Session(model, cfg, calibration=calibration) as qs:
        keys = select_points(list(qs.points), points)
        for k in keys:
            qp = qs.points[k]
            seen[k] = [[], 0, 0]

            def observe(x: Any, k: tuple[str, str, str] = k) -> None:
                if not isinstance(x, Tensor) or not x.is_floating_point():
                    return
                s = seen[k]
                if k[1] == "weight" and s[2]:
                    return  # a weight is the same tensor on every call
                s[0].append(sample(x))
                s[1] += x.numel()
                s[2] += 1

            qp.observer = observe
        try:
            for b in bl:
                fwd(model, b)
        finally:
            for k in keys:
                qs.points[k].observer = None
        pts = {k: qs.points[k] for k in keys}
    out = {}
    for k in keys:
        chunks, numel, calls = seen[k]
        data = torch.cat(chunks) if chunks else torch.empty(0)
        if data.numel() > max_samples:
            data = data[torch.randint(data.numel(), (max_samples,), generator=gen)]
        qp = pts[k]
        out[k] = Captured(k[0], k[1], k[2], qp.format,
                          None if qp.amax is None else qp.amax.flatten().tolist(), data, numel, calls)
    return out
