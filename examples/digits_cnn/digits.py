"""A small CNN trained in-process on scikit-learn's digits: post-training and quantization-aware accuracy.

The 1,797 8x8 images of ``sklearn.datasets.load_digits`` (bundled with scikit-learn, no download) are
split 75/25 (stratified, seeded), standardised, and a three-layer CNN is trained in full precision. Then,
for each format (applied to every layer's inputs and weights, per-tensor scales, outputs in full
precision):

* **post-training, dynamic**: each tensor scaled by its own amax at run time (:func:`qsim_hooks.compare`
  gives the accuracy, the output SQNR and the top-1 agreement with the full-precision model);
* **post-training, static**: scales fixed beforehand by :func:`qsim_hooks.calibrate` on training images;
* **quantization-aware training**: a copy of the model fine-tuned inside ``qsim_hooks.quantized`` (the
  straight-through estimator carries the gradients to the full-precision weights), evaluated in the format.

Everything is seeded and runs on one CPU thread (results do not depend on the core count); a run takes
seconds. :func:`run` returns plain data, :func:`render` prints it; ``run.py`` beside this file is the
script, and ``examples/demo.py`` (the main job) runs it after the formats table.
"""

from __future__ import annotations

import copy
import math
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import Tensor, nn

from qsim_hooks import QuantConfig, calibrate, compare, quantized, report
from qsim_hooks.formats import FloatFormat, Format, Scaling, get
from qsim_hooks.progress import tracked

from ..evaluations import pinned, render_report_and_time

__all__ = ["Settings", "DigitsResult", "FORMATS", "build_format", "load_data", "make_model", "train", "accuracy",
           "run", "render"]

#: the formats of the table: name -> what it is
FORMATS = {
    "int8": "INT8",
    "int4": "INT4",
    "e4m3": "OCP FP8 E4M3, scaled",
    "e2m1": "OCP FP4 E2M1, scaled",
}


def build_format(name: str) -> Format:
    """The format of a table row: integers as named, the small floats with a per-tensor scale."""
    if name == "e4m3":
        return FloatFormat(4, 3, specials="fn", scaling=Scaling(), name="e4m3 scaled")
    if name == "e2m1":
        return FloatFormat(2, 1, specials="none", scaling=Scaling(), name="e2m1 scaled")
    return get(name)


@dataclass(frozen=True)
class Settings:
    """What :func:`run` does; the defaults are the documented run."""

    seed: int = 0
    test_size: float = 0.25
    epochs: int = 20
    lr: float = 3e-3
    batch_size: int = 32
    formats: tuple[str, ...] = ("int8", "int4", "e4m3", "e2m1")
    calibration: str = "mse"
    calib_batches: int = 4
    qat_formats: tuple[str, ...] = ("int4", "e2m1")
    qat_epochs: int = 40
    qat_lr: float = 3e-3
    report_format: str = "int4"
    threads: int = 1
    #: kernels: "eager" (default; these tensors are small, compiling the fused kernels would cost more
    #: than it saves) or "auto" / "compiled" (see qsim_hooks.formats.set_backend)
    backend: str = "eager"


@dataclass
class DigitsResult:
    settings: Settings
    train_size: int
    test_size: int
    parameters: int
    fp_accuracy: float
    rows: list[dict[str, Any]] = field(default_factory=list)
    report_rows: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["settings"] = asdict(self.settings)
        return d


def load_data(seed: int = 0, test_size: float = 0.25) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Standardised (N, 1, 8, 8) images and labels: train and test, stratified split."""
    x, y = load_digits(return_X_y=True)
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=test_size, random_state=seed, stratify=y)
    mean, std = float(xtr.mean()), float(xtr.std())

    def prep(a: Any) -> Tensor:
        return torch.tensor((a - mean) / std, dtype=torch.float32).reshape(-1, 1, 8, 8)

    return prep(xtr), torch.tensor(ytr), prep(xte), torch.tensor(yte)


def make_model(seed: int = 0) -> nn.Module:
    """conv(1->8) - pool - conv(8->16) - pool - fc(64->32) - fc(32->10), ReLUs between."""
    torch.manual_seed(seed)
    return nn.Sequential(OrderedDict([
        ("conv1", nn.Conv2d(1, 8, 3, padding=1)), ("relu1", nn.ReLU()), ("pool1", nn.MaxPool2d(2)),
        ("conv2", nn.Conv2d(8, 16, 3, padding=1)), ("relu2", nn.ReLU()), ("pool2", nn.MaxPool2d(2)),
        ("flatten", nn.Flatten()), ("fc1", nn.Linear(64, 32)), ("relu3", nn.ReLU()), ("fc2", nn.Linear(32, 10)),
    ]))


def train(model: nn.Module, x: Tensor, y: Tensor, *, epochs: int, lr: float, batch_size: int, seed: int) -> None:
    """Adam with a cosine learning-rate decay, seeded shuffling; leaves the model in eval mode."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    steps = epochs * math.ceil(len(x) / batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    model.train()
    for _ in tracked(range(epochs), "training"):  # a bar on stderr when it is a terminal
        perm = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), batch_size):
            idx = perm[i:i + batch_size]
            opt.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
            sched.step()
    model.eval()


def accuracy(model: nn.Module, x: Tensor, y: Tensor) -> float:
    with torch.no_grad():
        return float((model(x).argmax(-1) == y).float().mean())


def run(settings: Settings | None = None) -> DigitsResult:
    """Train, then evaluate every format post-training (dynamic, static) and after QAT. No output."""
    s = settings or Settings()
    unknown = [f for f in s.formats if f not in FORMATS]
    if unknown:
        raise ValueError(f"formats: {unknown} not in {list(FORMATS)}")
    t0 = time.perf_counter()
    with pinned(s.backend, s.threads):
        xtr, ytr, xte, yte = load_data(s.seed, s.test_size)
        model = make_model(s.seed)
        train(model, xtr, ytr, epochs=s.epochs, lr=s.lr, batch_size=s.batch_size, seed=s.seed)
        fp = accuracy(model, xte, yte)
        res = DigitsResult(settings=s, train_size=len(xtr), test_size=len(xte),
                           parameters=sum(p.numel() for p in model.parameters()), fp_accuracy=fp)
        metric = lambda m, _batches: accuracy(m, xte, yte)  # noqa: E731
        calib_data = [xtr[i * 64:(i + 1) * 64] for i in range(s.calib_batches)]
        for name in tracked(s.formats, "digits CNN: formats"):
            fmt = build_format(name)
            cfg = QuantConfig(input=fmt, weight=fmt)
            dyn = compare(model, cfg, xte, metric=metric, stats=name == s.report_format)
            if name == s.report_format:
                res.report_rows = dyn.stats
            cal = calibrate(model, cfg, calib_data, method=s.calibration, progress=False)
            static = compare(model, cfg, xte, metric=metric, calibration=cal, stats=False)
            row: dict[str, Any] = {
                "format": name, "what": FORMATS[name], "ptq": dyn.metric_sim, "ptq_sqnr_db": dyn.output_sqnr_db,
                "ptq_agreement": dyn.top1_agreement, "static": static.metric_sim,
                "static_sqnr_db": static.output_sqnr_db, "calibrated_points": len(cal), "qat": None,
                "recovered": None}
            if name in s.qat_formats:
                qat_model = copy.deepcopy(model)
                with quantized(qat_model, cfg):
                    train(qat_model, xtr, ytr, epochs=s.qat_epochs, lr=s.qat_lr, batch_size=s.batch_size,
                          seed=s.seed + 1)
                    row["qat"] = accuracy(qat_model, xte, yte)
                lost = fp - dyn.metric_sim
                row["recovered"] = (row["qat"] - dyn.metric_sim) / lost if lost > 0 else None
            res.rows.append(row)
        res.seconds = time.perf_counter() - t0
        return res


def _pct(v: Any) -> str:
    return "-" if v is None else f"{100 * float(v):.2f}"


def render(result: DigitsResult, console: Any = None, *, top: int = 8) -> None:
    """The accuracy table, then the per-point report of one post-training run."""
    s = result.settings
    report.render_heading(
        "Digits CNN: post-training and quantization-aware accuracy (scikit-learn's digits, trained here)",
        [f"{result.train_size} training / {result.test_size} test images (8x8), seed {s.seed}; CNN with "
         f"{result.parameters} parameters trained {s.epochs} epochs in full precision: test accuracy "
         f"{_pct(result.fp_accuracy)}%",
         "each format on every layer's inputs and weights (per-tensor scales; outputs in full precision); "
         f"static: scales from qh.calibrate ({s.calibration}, {s.calib_batches} x 64 training images); "
         f"QAT: {s.qat_epochs} epochs inside qh.quantized from the trained model"], console)
    rows = table_rows(result)
    cols = (report.Column("format", "format", justify="left", style="bold"),
            report.Column("what", "", justify="left"),
            report.Column("fp", "full\nprecision", _pct),
            report.Column("ptq", "post-training\ndynamic", _pct),
            report.Column("ptq_sqnr_db", "output\nSQNR dB", report.fmt_db),
            report.Column("ptq_agreement", "top-1 agree\nwith fp", _pct),
            report.Column("static", f"post-training\nstatic ({s.calibration})", _pct),
            report.Column("qat", "QAT", _pct),
            report.Column("recovered", "QAT recovers\n% of the loss", lambda v: "-" if v is None else f"{100 * v:.0f}"))
    report.print_table(report.build_table(rows, cols, title="Digits CNN: test accuracy %",
                                          caption="scaled: per-tensor scale (amax to the format's max); "
                                                  "output SQNR and top-1 agreement: the logits, dynamic scales"),
                       console)
    render_report_and_time(result.report_rows, console, top=top, what=f"Digits CNN, {s.report_format} post-training",
                           seconds=result.seconds)


def table_rows(result: DigitsResult) -> Sequence[dict[str, Any]]:
    """The rows of the accuracy table with the full-precision accuracy beside each."""
    return [{**r, "fp": result.fp_accuracy} for r in result.rows]
