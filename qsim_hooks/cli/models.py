"""The options of the model commands (report, sweep, sensitivity): which model, which simulation, which
calibration, which output format; and turning them into a model, a config and a calibration.

Where models and config files come from is :mod:`qsim_hooks.modelsrc`; this module maps its errors to
the command line's exit codes (a name or file that cannot be used: 2; the user's file raising: 1).
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from ..calibration import Calibration
from ..config import QuantConfig
from ..modelsrc import ModelFileError, ModelSource, SourceError, load_config, load_model
from .base import CommandError, UsageError, format_or_none, positive_int

__all__ = ["DEFAULT_SIMULATION", "model_arguments", "config_arguments", "output_arguments", "load_source",
           "build_config", "load_calibration", "describe_config"]

#: the simulation of ``report`` and ``sensitivity`` when no config is given (INT-FP-QSim's default)
DEFAULT_SIMULATION = {"input": "e4m3", "weight": "e4m3", "output": "fp16"}


def model_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model", required=True, metavar="NAME|FILE.py",
                   help="a Python file that defines model (or build_model()) and batches (or get_batches()), "
                        "and optionally metric(model, batches) -> float, forward(model, batch), "
                        "output(model_output) -> tensor (e.g. examples/small_cnn.py); or a torchvision "
                        "classification model name (e.g. resnet18; random weights, synthetic N(0,1) images; "
                        "needs torchvision, the [vision] extra)")
    g.add_argument("--batch", type=positive_int, default=8, metavar="N",
                   help="synthetic batch size for torchvision models (default 8)")
    g.add_argument("--size", type=positive_int, default=None, metavar="PIXELS",
                   help="synthetic image size for torchvision models (default 224)")
    g.add_argument("--batches", type=positive_int, default=1, metavar="N",
                   help="number of synthetic batches (default 1); statistics merge exactly over all")
    g.add_argument("--seed", type=int, default=0, help="seed of the random weights and synthetic data (default 0)")


def config_arguments(p: argparse.ArgumentParser, default: str) -> None:
    """``--config`` and the role flags; ``default`` says what applies when neither is given."""
    g = p.add_argument_group("simulation")
    g.add_argument("--config", metavar="FILE", default=None,
                   help="a .toml or .json file with the keys of QuantConfig.from_dict: input, weight, output "
                        "(format names or 'none'), rules (a list of tables: match, input, weight, output, "
                        "*_scaling, enabled, name), strict, seed")
    for role in ("input", "weight", "output"):
        g.add_argument(f"--{role}", type=format_or_none, default=None, metavar="FORMAT",
                       help=f"the {role} format of every layer (or 'none'); overrides the config file's "
                            f"(neither given: {default})")
    g.add_argument("--calibration", metavar="FILE.json", default=None,
                   help="static scales: a calibration saved by qsim_hooks.Calibration.save (made with "
                        "qsim_hooks.calibrate for this model and config); points it lacks keep dynamic scales")


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
    """``--config`` with the role flags over it; ``default`` when neither is given (``None``: empty)."""
    flags = {r: (None if v == "none" else v) for r in ("input", "weight", "output")
             if (v := getattr(args, r)) is not None}
    if args.config is not None:
        try:
            cfg = load_config(args.config)
        except SourceError as exc:
            raise UsageError(f"--config: {exc}") from None
        return dataclasses.replace(cfg, **flags) if flags else cfg
    if flags or default is None:
        return QuantConfig(**flags)
    return QuantConfig(**default)


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


def describe_config(cfg: QuantConfig) -> str:
    def name(f: Any) -> str:
        return "full precision" if f is None else f.name

    text = f"input {name(cfg.input)}, weight {name(cfg.weight)}, output {name(cfg.output)}"
    if cfg.rules:
        text += f"; {len(cfg.rules)} rule{'s' if len(cfg.rules) > 1 else ''}: " + ", ".join(
            r.name or f"rule[{i}]" for i, r in enumerate(cfg.rules))
    return text
