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

import dataclasses
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from .formats import Format, as_format

__all__ = ["histogram", "histogram_data", "HistogramData", "Marker", "grid_limits", "sweep_plot", "sweep_data",
           "SweepData", "require_matplotlib"]


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
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png", bbox_inches="tight")  # "tight": the legend under the axes is kept
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


@dataclass(frozen=True)
class Marker:
    """A vertical line of a histogram: where it is, what it says, whether it lies inside the drawn axis."""

    x: float
    label: str
    kind: Literal["max", "min", "amax", "max=amax"]
    on_axis: bool = True


@dataclass(frozen=True)
class HistogramData:
    """Everything :func:`histogram` draws, as plain data (tests read this, not pixels).

    Attributes:
        edges, counts: the bins of the non-zero finite ``|x|`` (``len(edges) == len(counts) + 1``).
        scale: ``"log"`` (log bins on log axes) or ``"linear"`` (equal bins from 0 on linear axes).
        markers: the format's limits and the calibrated amax; a calibrated amax that *is* the grid max (a
            scaled format maps it onto its max) is one marker, ``"max=amax"``, not two lines on one spot.
        xlim: the x range drawn; a marker outside it is listed in the legend with ``on_axis=False``.
        nonzero, zeros, nonfinite: how many values of each kind there were.
        title: the picture's title.
    """

    edges: tuple[float, ...]
    counts: tuple[float, ...]
    scale: Literal["log", "linear"]
    markers: tuple[Marker, ...]
    xlim: tuple[float, float] | None
    nonzero: int
    zeros: int
    nonfinite: int
    title: str


#: a marker further right than this times the largest |x| is not drawn on a linear axis (it would squash the bins)
_LINEAR_REACH = 1.5


def _markers(lim: dict[str, Any]) -> list[Marker]:
    out = []
    top, amax = lim["max"], lim["amax"]
    same = top is not None and amax is not None and math.isclose(top, amax, rel_tol=1e-3)
    if top is not None:
        tensor = " (per-tensor equivalent)" if lim["per_tensor_equivalent"] else ""
        out.append(Marker(top, f"calibrated amax = grid max {top:.4g}{tensor}: saturates above", "max=amax") if same
                   else Marker(top, f"grid max {top:.4g}{tensor}: saturates above", "max"))
    if lim["min_subnormal"] is not None:
        out.append(Marker(lim["min_subnormal"],
                          f"smallest non-zero value {lim['min_subnormal']:.4g}: flushed below half of it", "min"))
    if amax is not None and not same:
        out.append(Marker(amax, f"calibrated amax {amax:.4g}", "amax"))
    return out


def histogram_data(data: Any, *, fmt: Any = None, amax: Any = None, title: str | None = None, bins: int = 80,
                   scale: Literal["log", "linear"] | None = None) -> HistogramData:
    """What :func:`histogram` draws (arguments as there); needs no matplotlib."""
    label, point = None, None
    if hasattr(data, "data") and hasattr(data, "format"):
        fmt = data.format if fmt is None else fmt
        amax = data.amax if amax is None else amax
        label, point = data.label, getattr(data, "point", None)
        x = data.data
    else:
        x = torch.as_tensor(data)
    if not isinstance(bins, int) or isinstance(bins, bool) or bins < 1:
        raise ValueError(f"bins={bins!r} must be a positive int")
    if scale is None:
        scale = "linear" if point == "weight" else "log"
    if scale not in ("log", "linear"):
        raise ValueError(f"scale={scale!r} must be 'log', 'linear' or None (linear for a weight, else log)")
    x = x.detach().flatten().to("cpu", torch.float64)
    finite = torch.isfinite(x)
    a = x[finite].abs()
    nz = a[a > 0]
    lim = grid_limits(fmt, amax=amax, data_amax=float(a.max()) if a.numel() else None)
    markers = _markers(lim)
    edges: tuple[float, ...] = ()
    counts: tuple[float, ...] = ()
    xlim = None
    if nz.numel():
        lo, hi = float(nz.min()), float(nz.max())
        if scale == "log":
            if lo == hi:
                lo, hi = lo / 2, hi * 2
            e = torch.logspace(math.log10(lo), math.log10(hi), bins + 1, dtype=torch.float64)
        else:
            e = torch.linspace(0.0, hi, bins + 1, dtype=torch.float64)
        edges, counts = tuple(e.tolist()), tuple(torch.histogram(nz, bins=e).hist.tolist())
        if scale == "linear":  # the bins decide the axis; a limit far beyond them is named, not drawn
            reach = [m.x for m in markers if m.x <= _LINEAR_REACH * hi]
            xlim = (0.0, 1.03 * max([hi, *reach]))
            markers = [dataclasses.replace(m, on_axis=m.x <= xlim[1]) for m in markers]
    f = None if fmt is None else (fmt if isinstance(fmt, Format) else as_format(fmt))
    if title is None:
        title = " ".join(p for p in (label or "values", f"in {f.name}" if f is not None else "") if p)
    return HistogramData(edges, counts, scale, tuple(markers), xlim, int(nz.numel()), int((a == 0).sum()),
                         int((~finite).sum()), title)


#: how each kind of marker is drawn: colour, line style, width, stacking order
_MARKER_STYLE = {"max": ("tab:red", "-", 1.5, 3), "max=amax": ("tab:red", "-", 2.5, 3),
                 "min": ("tab:purple", "--", 1.5, 3), "amax": ("tab:green", ":", 2.0, 4)}


def _histogram_figure(h: HistogramData) -> Any:
    fig, ax = _axes((8, 4.5))
    if h.counts:
        ax.stairs(h.counts, h.edges, fill=True, alpha=0.6, color="tab:blue",
                  label=f"|x|: {h.nonzero} non-zero values" + (", linear bins" if h.scale == "linear" else ""))
    else:
        ax.text(0.5, 0.5, "no non-zero finite values", transform=ax.transAxes, ha="center")
    if h.scale == "log":
        ax.set_xscale("log")
        ax.set_yscale("log")
    for m in h.markers:
        colour, ls, lw, z = _MARKER_STYLE[m.kind]
        if m.on_axis:
            ax.axvline(m.x, color=colour, ls=ls, lw=lw, zorder=z, label=m.label)
        else:
            ax.plot([], [], color=colour, ls=ls, lw=lw, label=f"{m.label} (beyond the axis)")
    if h.xlim is not None:
        ax.set_xlim(*h.xlim)
    ax.set_xlabel("|x|")
    ax.set_ylabel("count")
    extra = [f"zeros: {h.zeros}"] + ([f"non-finite: {h.nonfinite}"] if h.nonfinite else [])
    ax.plot([], [], " ", label=", ".join(extra))
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2, fontsize=8, frameon=False)
    ax.set_title(h.title, fontsize=10)
    return fig


def histogram(data: Any, path: str | os.PathLike[str], *, fmt: Any = None, amax: Any = None,
              title: str | None = None, bins: int = 80, scale: Literal["log", "linear"] | None = None) -> Path:
    """Draw the distribution of ``|x|`` with the format's limits marked; write a PNG.

    Args:
        data: a :class:`qsim_hooks.analysis.Captured` (its format, static amax
            and label are used unless given here) or a tensor of values.
        path: where the PNG goes (parent folders are created).
        fmt: the format whose limits are marked (name or Format).
        amax: a static (calibrated) amax to mark; scaled formats take their
            limits from it (see :func:`grid_limits`).
        title: the picture's title (default: the point's label and format).
        bins: how many bins.
        scale: ``"log"``: bins equal on a log scale between the smallest and largest non-zero ``|x|``, log
            axes (activations: many decades, the flush-to-zero limit visible); ``"linear"``: equal bins from
            0 to the largest ``|x|``, linear axes (weights: a uniform initialisation looks flat, not like a
            rising ramp). ``None`` (default): linear for a captured weight, log otherwise.

    Marked: the largest representable value (values beyond it saturate),
    the smallest subnormal (values below half of it flush to zero), and the
    calibrated amax (one line with the grid max when a scaled format maps it
    there); zeros and non-finite values are counted in the legend, under the axes.
    :func:`histogram_data` returns the same as plain data.

    Returns:
        the path written.

    Raises:
        ImportError: matplotlib is not installed.
    """
    h = histogram_data(data, fmt=fmt, amax=amax, title=title, bins=bins, scale=scale)
    return _save(_histogram_figure(h), path)


@dataclass(frozen=True)
class SweepData:
    """Everything :func:`sweep_plot` draws, as plain data.

    Attributes:
        formats: the x positions' labels, in the rows' order (formats have no order: bars and markers, no line).
        heights: each bar's height; an infinite SQNR (exact) stands at ``top``, a missing one at 0.
        labels: each bar's value, written under its name (``inf`` for an exact format, ``-`` for none).
        top: the height of an ``inf`` bar (10 dB over the largest finite SQNR).
        metric: the metric per format (``None`` where a row has none), or ``None`` when no row has one.
        metric_full: the metric in full precision (a horizontal reference line), if the rows carry it.
        title: the picture's title.
    """

    formats: tuple[str, ...]
    heights: tuple[float, ...]
    labels: tuple[str, ...]
    top: float
    metric: tuple[float | None, ...] | None
    metric_full: float | None
    title: str | None


def sweep_data(rows: Sequence[Mapping[str, Any]], *, title: str | None = "Output SQNR per format") -> SweepData:
    """What :func:`sweep_plot` draws; needs no matplotlib."""
    if not rows:
        raise ValueError("sweep_plot: no rows to draw")
    sq = [float(r["output_sqnr_db"]) if r.get("output_sqnr_db") is not None else math.nan for r in rows]
    finite = [v for v in sq if math.isfinite(v)]
    top = (max(finite) if finite else 0.0) + 10.0
    heights = tuple(top if v == math.inf else (v if math.isfinite(v) else 0.0) for v in sq)
    labels = tuple("inf" if v == math.inf else ("-" if math.isnan(v) else f"{v:.1f}") for v in sq)
    metric = tuple(None if r.get("metric") is None else float(r["metric"]) for r in rows)
    full = rows[0].get("metric_full")
    return SweepData(tuple(str(r["format"]) for r in rows), heights, labels, top,
                     metric if any(m is not None for m in metric) else None,
                     None if full is None else float(full), title)


def _sweep_figure(d: SweepData) -> Any:
    widest = max(len(part) for f in d.formats for part in f.split(" /"))
    fig, ax = _axes((max(5.0, max(0.8, 0.09 * widest) * len(d.formats) + 2), 4))
    pos = list(range(len(d.formats)))
    bars = ax.bar(pos, d.heights, color="tab:blue", alpha=0.7, label="output SQNR (dB)",
                  hatch=[("//" if t == "inf" else "") for t in d.labels])  # an exact format's bar is not a height
    ticks = [f"{f}\n{text}{' dB' if text != '-' else ''}".replace(" /", "\n/") for f, text in zip(d.formats, d.labels)]
    ax.set_xticks(pos)  # each bar's value under its name: a label over the bar would collide with the markers
    ax.set_xticklabels(ticks)
    depth = max(t.count("\n") + 1 for t in ticks)
    ax.set_ylabel("output SQNR (dB)")
    ax.set_ylim(0, 1.08 * max([*d.heights, 1.0]))  # room over the tallest bar (an inf one stands at top)
    handles = [bars]
    if d.metric is not None:
        ax2 = ax.twinx()  # one marker per format: the formats are categories, a line through them means nothing
        handles += ax2.plot(pos, [math.nan if m is None else m for m in d.metric], "D", ls="none",
                            color="tab:orange", markersize=7, label="metric")
        if d.metric_full is not None:
            handles.append(ax2.axhline(d.metric_full, color="tab:orange", ls=":", lw=1,
                                       label="metric, full precision"))
        ax2.set_ylabel("metric")
        ax2.margins(y=0.15)
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.06 - 0.065 * depth), ncol=3, fontsize=8,
              frameon=False)
    if d.title:
        ax.set_title(d.title, fontsize=10)
    return fig


def sweep_plot(rows: Sequence[Mapping[str, Any]], path: str | os.PathLike[str], *,
               title: str | None = "Output SQNR per format") -> Path:
    """Bars of output SQNR per format (rows of :func:`qsim_hooks.analysis.sweep`); the metric as one marker per
    format on a second axis (:func:`sweep_data` returns the same as plain data).

    An infinite SQNR (exact) is a hatched bar at the top of the axis, labelled ``inf dB``.
    """
    return _save(_sweep_figure(sweep_data(rows, title=title)), path)
