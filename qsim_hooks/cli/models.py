"""The options of the model commands (report, sweep, sensitivity): which model, which simulation, which
calibration, which output format; and turning them into a model, a config and a calibration.

Where models and config files come from is :mod:`qsim_hooks.modelsrc`; this module maps its errors to
the command line's exit codes (a name or file that cannot be used: 2; the user's file raising: 1).
The simulation is the command's default, or ``--preset``, or ``--config`` (a file is whole, as
``QuantConfig.load`` reads it; on top of ``--preset`` when both are given); the role flags then change
only their own roles (``--weight int4`` keeps the default e4m3 inputs and fp16 outputs).
"""

from __future__ import annotations

import argparse
import dataclasses
import warnings
from collections.abc import Callable
from typing import Any

from ..calibration import METHODS, Calibration, calibrate, calibration_target
from ..config import ROLES, QuantConfig
from ..configdata import role_text
from ..modelsrc import ModelFileError, ModelSource, SourceError, load_config_data, load_model
from ..presets import PRESETS
from ..session import plan
from .base import CommandError, UsageError, accumulator_name, format_or_none, positive_int

__all__ = ["DEFAULT_SIMULATION", "model_arguments", "config_arguments", "output_arguments", "load_source",
           "build_config", "load_calibration", "describe_config", "check_config", "calibrator"]

#: the simulation of ``report`` and ``sensitivity`` when no config is given (INT-FP-QSim's default)
DEFAULT_SIMULATION = {"input": "e4m3", "weight": "e4m3", "output": "fp16"}


def model_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model", required=True, metavar="NAME|FILE.py",
                   help="a torchvision classification model name (e.g. resnet18, mobilenet_v3_small; random "
                        "weights, synthetic N(0,1) images; needs torchvision, the [vision] extra), or a Python "
                        "file that defines model (or build_model()) and batches (or get_batches()), and "
                        "optionally metric(model, batches) -> float, forward(model, batch), "
                        "output(model_output) -> tensor (e.g. examples/small_cnn.py)")
    g.add_argument("--batch", type=positive_int, default=8, metavar="N",
                   help="synthetic batch size for torchvision models (default 8)")
    g.add_argument("--size", type=positive_int, default=None, metavar="PIXELS",
                   help="synthetic image size for torchvision models (default 224; 64 is quicker)")
    g.add_argument("--batches", type=positive_int, default=1, metavar="N",
                   help="number of synthetic batches (default 1); statistics merge exactly over all")
    g.add_argument("--seed", type=int, default=0, help="seed of the random weights and synthetic data (default 0)")
    g.add_argument("--no-progress", dest="progress", action="store_false",
                   help="no progress bars (they are shown on stderr only when it is a terminal)")


def config_arguments(p: argparse.ArgumentParser, default: str) -> None:
    """``--preset``, ``--config``, the role flags and the calibration; ``default`` says what applies without them."""
    g = p.add_argument_group("simulation", f"default: {default}. --preset or --config replaces it (--config on top "
                                           "of --preset when both are given); --input, --weight and --output then "
                                           "change only their own role.")
    g.add_argument("--preset", metavar="NAME", default=None, choices=list(PRESETS),
                   help=f"a named recipe instead of the default ({default}): {', '.join(PRESETS)}; "
                        "'qsim-hooks presets' says what each sets")
    g.add_argument("--config", metavar="FILE", default=None,
                   help="a .toml or .json file with the keys of QuantConfig.from_dict (QuantConfig.save writes "
                        "one): input, weight, output (format names or 'none'), input_scaling / weight_scaling / "
                        "output_scaling, rules (a list of tables: match, types, input, weight, output, "
                        "*_scaling, enabled, name), strict, seed, preset")
    for role in ("input", "weight", "output"):
        g.add_argument(f"--{role}", type=format_or_none, default=None, metavar="FORMAT",
                       help=f"the {role} format of every layer, or 'none' (full precision); the other roles "
                            "stay as above")
    g.add_argument("--accumulator", type=accumulator_name, default=None, metavar="NAME",
                   help="how every GEMM adds its products: an accumulator format or preset (fp16, bf16, int24, "
                        "hopper_fp8, ...; 'none': exact sums), over --config / --preset")
    g.add_argument("--save-config", metavar="FILE", default=None,
                   help="also write the simulation used to FILE (.toml or .json), for --config or "
                        "QuantConfig.load")
    c = p.add_argument_group("static scales (default: dynamic, from each tensor)")
    cal = c.add_mutually_exclusive_group()
    cal.add_argument("--calibrate", metavar="METHOD", default=None, choices=sorted(METHODS),
                     help=f"calibrate static scales on the model's batches first: {', '.join(sorted(METHODS))}")
    cal.add_argument("--calibration", metavar="FILE.json", default=None,
                     help="static scales saved by qsim_hooks.Calibration.save (made with qsim_hooks.calibrate for "
                          "this model and config); points it lacks keep dynamic scales")
    c.add_argument("--percentile", type=float, default=99.99, metavar="P",
                   help="the percentile of --calibrate percentile, in (0, 100] (default 99.99)")


def output_arguments(p: argparse.ArgumentParser) -> None:
    out = p.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="write the result as JSON on stdout")
    out.add_argument("--csv", action="store_true", help="write the rows as CSV on stdout")


def load_source(args: argparse.Namespace) -> ModelSource:
    """The ``--model`` and its batches."""
    try:
        return load_model(args.model, batch=args.batch, size=args.size, batches=args.batches, seed=args.seed)
    except SourceError as exc:
        raise UsageError(f"--model: {exc}") from None
    except ModelFileError as exc:
        raise CommandError(f"{exc} (set QSIM_HOOKS_DEBUG=1 for the traceback)") from exc


def build_config(args: argparse.Namespace, default: dict[str, Any] | None) -> QuantConfig:
    """``--config`` (a file is whole: what ``QuantConfig.load`` reads), on top of ``--preset`` when both are
    given; else the preset; else ``default`` (``None``: empty). The role flags go over whichever it is."""
    data: dict[str, Any] = dict(default or {}) if args.preset is None and args.config is None else {}
    if args.preset is not None:
        data = {"preset": args.preset}
    if args.config is not None:
        try:
            file_data = load_config_data(args.config)
        except SourceError as exc:
            raise UsageError(f"--config: {exc}") from None
        if args.preset is not None and file_data.get("preset") is not None:
            raise UsageError(f"--preset {args.preset} and the preset {file_data['preset']!r} of --config "
                             f"{args.config}: give one")
        data = {**data, **file_data}
    try:
        cfg = QuantConfig.from_dict(data)
    except (ValueError, TypeError) as exc:
        raise UsageError(f"--config: {args.config}: {exc}" if args.config else f"--preset: {exc}") from None
    flags = {r: (None if v == "none" else v) for r in ROLES if (v := getattr(args, r)) is not None}
    if args.accumulator is not None:
        flags["accumulator"] = None if args.accumulator == "none" else args.accumulator
    return dataclasses.replace(cfg, **flags) if flags else cfg


def check_config(args: argparse.Namespace, src: ModelSource, cfg: QuantConfig) -> None:
    """Resolve the plan before any run: a rule that matches nothing (or any other config problem) is a bad
    invocation (exit 2), told in the config file's terms; ``--save-config`` is written here."""
    try:
        plan(src.model, cfg)
    except (ValueError, TypeError) as exc:
        text = str(exc).replace("pass strict=False to only warn",
                                "set strict = false in the config file (JSON: \"strict\": false) to only warn")
        where = f"--config {args.config}" if args.config else "the simulation"
        raise UsageError(f"{where}: {text}") from None
    if args.save_config:
        try:
            cfg.save(args.save_config)
        except (ValueError, OSError) as exc:
            raise UsageError(f"--save-config: {exc}") from None


def calibrator(args: argparse.Namespace, src: ModelSource) -> Callable[[QuantConfig], Calibration | None]:
    """``cfg -> Calibration`` for ``--calibrate`` (on the model's batches; ``None`` where no point takes a
    static scale), or the ``--calibration`` file for every config, or nothing."""
    if args.calibrate is None:
        cal = load_calibration(args, src.model)
        return lambda cfg: cal
    if not 0.0 < args.percentile <= 100.0:
        raise UsageError(f"--percentile {args.percentile}: must be in (0, 100]")

    def run(cfg: QuantConfig) -> Calibration | None:
        if not any(calibration_target(e.format, e.axis).ok for e in plan(src.model, cfg).active()):
            return None  # nothing here takes a static scale (plain casts, MX): the run stays dynamic
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="calibrate: the model is in training mode")
            return calibrate(src.model, cfg, src.batches, method=args.calibrate, percentile=args.percentile,
                             forward=src.forward, progress=None if args.progress else False)
    return run


def load_calibration(args: argparse.Namespace, model: Any) -> Calibration | None:
    """The ``--calibration`` file, checked against the model; ``None`` without the option."""
    if args.calibration is None:
        return None
    try:
        return Calibration.load(args.calibration, model)
    except FileNotFoundError:
        raise UsageError(f"--calibration: file {args.calibration!r} not found") from None
    except (OSError, ValueError, TypeError) as exc:
        raise UsageError(f"--calibration: {exc}") from None


def describe_config(cfg: QuantConfig, roles: tuple[str, ...] = ROLES) -> str:
    """The simulation in one line: the roles (those asked for), the accumulator, then each rule with what it
    matches."""
    head = ", ".join(role_text(cfg, r) for r in roles)
    if cfg.accumulator is not None:
        head += f", accumulator {cfg.accumulator.name}"
    return "; ".join(part for part in [head, *cfg.describe()[1:]] if part) or "nothing else"
