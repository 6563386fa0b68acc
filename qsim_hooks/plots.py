"""Pictures: a quantization point's value histogram, a sweep's output SQNR per format (PNG).

matplotlib is an optional extra (``pip install -e ".[plot]"`` in a checkout), imported
only when a picture is drawn; without it the drawing functions raise an
ImportError that says what to install. Figures are drawn with matplotlib's
object API (``Figure`` and the Agg canvas), never ``pyplot``, so drawing
changes no global matplotlib state of the caller (backend, current figure).

The data of a histogram comes from :func:`qsim_hooks.analysis.capture` (a
point's ``observer`` slot), and the marked limits from :func:`grid_limits`,
which is plain data and needs no matplotlib::

    cap = qh.capture(model, cfg, x, points=["layer1.0.conv1:input"])
    for c in cap.values():
        qsim_hooks.plots.histogram(c, f"{c.label}.png")
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from .formats import Format, as_format

__all__ = ["histogram", "grid_limits", "sweep_plot", "require_matplotlib"]


def require_matplotlib() -> tuple[Any, Any]:
    """matplotlib's ``Figure`` and Agg canvas classes.

    Raises:
        ImportError: matplotlib is not installed (the message says how to install it).
    """
    try:  # deferred: matplotlib is the optional [plot] extra, and slow to import
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError("qsim_hooks.plots needs matplotlib, the qsim-hooks[plot] extra: pip install -e '.[plot]' "
                          "in a qsim-hooks checkout, or pip install matplotlib") from None
    return Figure, FigureCanvasAgg


def _axes(figsize: tuple[float, float]) -> tuple[Any, Any]:
    """A new figure on its own Agg canvas (no pyplot state) and its one axes."""
    Figure, Canvas = require_matplotlib()
    fig = Figure(figsize=figsize, dpi=100)
    Canvas(fig)
    return fig, fig.add_subplot(1, 1, 1)


def _save(fig: Any, path: str | os.PathLike[str]) -> Path:
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png")
    return out


def grid_limits(fmt: Any, *, amax: float | Sequence[float] | None = None,
                data_amax: float | None = None) -> dict[str, Any]:
    """Where the format's grid starts and ends for this data, in the data's units.

    A plain cast (``e4m3``, ``fp16``) has fixed limits: its ``max`` and its
    smallest subnormal. A scaled format maps an amax onto its max, so its
    limits are ``amax`` and ``amax * min_subnormal / max`` (for an integer,
    one step): the amax is the static one when given (a calibration), else
    the data's own (``data_amax``, a dynamic scale). With per-channel or
    per-block scales each channel or block has its own limits; these are the
    ones of the tensor-wide amax (``per_tensor_equivalent``).

    Returns:
        ``{"max", "min_subnormal", "amax", "scaled", "per_tensor_equivalent"}``;
        a limit is ``None`` when the format does not know it (a callable).
    """
    f = as_format(fmt) if not isinstance(fmt, Format) else fmt
    if f is None:
        return {"max": None, "min_subnormal": None, "amax": None, "scaled": False, "per_tensor_equivalent": False}
    static = None
    if amax is not None:
        vals = [float(a) for a in (amax if isinstance(amax, (list, tuple)) else [amax])]
        static = max(vals) if vals else None
    fmax, fsub = float(f.max), float(f.min_subnormal)
    known_max = math.isfinite(fmax) and fmax > 0
    if not f.is_scaled:
        return {"max": fmax if known_max else None, "min_subnormal": fsub if fsub > 0 else None,
                "amax": static, "scaled": False, "per_tensor_equivalent": False}
    sc = getattr(f, "scaling", None)
    finer = sc is not None and getattr(sc, "granularity", "tensor") != "tensor"
    ref = static if static is not None else data_amax
    if ref is None or not known_max or ref <= 0:
        return {"max": None, "min_subnormal": None, "amax": static, "scaled": True, "per_tensor_equivalent": finer}
    scale = ref / fmax
    return {"max": ref, "min_subnormal": fsub * scale if fsub > 0 else None, "amax": static, "scaled": True,
            "per_tensor_equivalent": finer}


def histogram(data: Any, path: str | os.PathLike[str], *, fmt: Any = None, amax: Any = None,
              title: str | None = None, bins: int = 80) -> Path:
    """Draw the distribution of ``|x|`` on log axes with the format's limits marked; write a PNG.

    Args:
        data: a :class:`qsim_hooks.analysis.Captured` (its format, static amax
            and label are used unless given here) or a tensor of values.
        path: where the PNG goes (parent folders are created).
        fmt: the format whose limits are marked (name or Format).
        amax: a static (calibrated) amax to mark; scaled formats take their
            limits from it (see :func:`grid_limits`).
        title: the picture's title (default: the point's label and format).
        bins: logarithmic bins between the smallest and largest non-zero ``|x|``.

    Marked: the largest representable value (values beyond it saturate),
    the smallest subnormal (values below half of it flush to zero), and the
    calibrated amax; zeros and non-finite values are counted in the legend.

    Returns:
        the path written.

    Raises:
        ImportError: matplotlib is not installed.
    """
    label = None
    if hasattr(data, "data") and hasattr(data, "format"):
        fmt = data.format if fmt is None else fmt
        amax = data.amax if amax is None else amax
        label = data.label
        x = data.data
    else:
        x = torch.as_tensor(data)
    if not isinstance(bins, int) or isinstance(bins, bool) or bins < 1:
        raise ValueError(f"bins={bins!r} must be a positive int")
    fig, ax = _axes((8, 4.5))
    x = x.detach().flatten().to("cpu", torch.float64)
    finite = torch.isfinite(x)
    a = x[finite].abs()
    zeros = int((a == 0).sum())
    nz = a[a > 0]
    lim = grid_limits(fmt, amax=amax, data_amax=float(a.max()) if a.numel() else None)

    if nz.numel():
        lo, hi = float(nz.min()), float(nz.max())
        if lo == hi:
            lo, hi = lo / 2, hi * 2
        edges = torch.logspace(math.log10(lo), math.log10(hi), bins + 1, dtype=torch.float64)
        counts = torch.histogram(nz, bins=edges).hist
        ax.stairs(counts.numpy(), edges.numpy(), fill=True, alpha=0.6, color="tab:blue",
                  label=f"|x|: {nz.numel()} non-zero values")
    else:
        ax.text(0.5, 0.5, "no non-zero finite values", transform=ax.transAxes, ha="center")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("|x|")
    ax.set_ylabel("count")
    if lim["max"] is not None:
        ax.axvline(lim["max"], color="tab:red", lw=1.5,
                   label=f"grid max {lim['max']:.4g}" + (" (per-tensor equivalent)" if lim["per_tensor_equivalent"]
                                                         else "") + ": saturates above")
    if lim["min_subnormal"] is not None:
        ax.axvline(lim["min_subnormal"], color="tab:purple", lw=1.5, ls="--",
                   label=f"smallest non-zero value {lim['min_subnormal']:.4g}: flushed below half of it")
    if lim["amax"] is not None:
        ax.axvline(lim["amax"], color="tab:green", lw=1.5, ls=":", label=f"calibrated amax {lim['amax']:.4g}")
    extra = [f"zeros: {zeros}"] + ([f"non-finite: {int((~finite).sum())}"] if not bool(finite.all()) else [])
    ax.plot([], [], " ", label=", ".join(extra))
    ax.legend(loc="upper left", fontsize=8, framealpha=0.8)
    f = None if fmt is None else (fmt if isinstance(fmt, Format) else as_format(fmt))
    if title is None:
        title = " ".join(p for p in (label or "values", f"in {f.name}" if f is not None else "") if p)
    ax.set_title(title, fontsize=10)
    return _save(fig, path)


def sweep_plot(rows: Sequence[Mapping[str, Any]], path: str | os.PathLike[str], *,
               title: str | None = "Output SQNR per format") -> Path:
    """Bars of output SQNR per format (rows of :func:`qsim_hooks.analysis.sweep`); the metric on a second axis.

    An infinite SQNR (exact) is drawn at the top of the axis and labelled ``inf``.
    """
    if not rows:
        raise ValueError("sweep_plot: no rows to draw")
    names = [str(r["format"]) for r in rows]
    sq = [float(r["output_sqnr_db"]) if r.get("output_sqnr_db") is not None else math.nan for r in rows]
    finite = [v for v in sq if math.isfinite(v)]
    top = (max(finite) if finite else 0.0) + 10.0
    shown = [top if v == math.inf else (v if math.isfinite(v) else 0.0) for v in sq]
    fig, ax = _axes((max(5.0, 0.8 * len(rows) + 2), 4))
    pos = list(range(len(rows)))
    bars = ax.bar(pos, shown, color="tab:blue", alpha=0.7, label="output SQNR (dB)")
    for b, v in zip(bars, sq):
        ax.annotate("inf" if v == math.inf else f"{v:.1f}", (b.get_x() + b.get_width() / 2, b.get_height()),
                    ha="center", va="bottom", fontsize=8)
    ax.set_xticks(pos)
    ax.set_xticklabels(names, rotation=30, ha="right")
    ax.set_ylabel("output SQNR (dB)")
    metric = [r.get("metric") for r in rows]
    if any(m is not None for m in metric):
        ax2 = ax.twinx()
        ax2.plot(pos, [math.nan if m is None else float(m) for m in metric], "o-", color="tab:orange",
                 label="metric")
        full = rows[0].get("metric_full")
        if full is not None:
            ax2.axhline(float(full), color="tab:orange", ls=":", lw=1, label="metric, full precision")
        ax2.set_ylabel("metric")
        ax2.legend(loc="upper right", fontsize=8)
    if title:
        ax.set_title(title, fontsize=10)
    return _save(fig, path)
