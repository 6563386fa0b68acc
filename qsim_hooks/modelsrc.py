"""Where the command line's models, batches and configs come from: names and files.

:func:`load_model` turns ``--model`` into a model and its batches:

* a path to a Python file that defines ``model`` (an ``nn.Module``) or
  ``build_model()``, and ``batches`` (a list of batches; one tensor is one
  batch) or ``get_batches()``; optionally ``metric(model, batches) -> float``
  (a task metric, higher or lower is the file's business),
  ``forward(model, batch)``, ``output(model_output) -> Tensor`` (see
  :mod:`qsim_hooks.analysis`) and ``loss(model, batch) -> scalar tensor`` (``search --estimate
  fisher``); ``examples/small_cnn.py`` is one;
* a torchvision classification model name (``resnet18``, ``mobilenet_v3_small``,
  ...) - random weights (nothing is downloaded), synthetic N(0, 1) batches
  of 3 x size x size images. torchvision is the optional ``[vision]`` extra,
  imported only for a name.

:func:`load_config` reads a TOML or JSON file with the keys of
:meth:`QuantConfig.from_dict <qsim_hooks.config.QuantConfig.from_dict>`.

A wrong name or a bad file raises :class:`SourceError` (a ValueError) with one
line that names it; the command line exits 2 on it. An exception raised by the
user's file itself is re-raised as a :class:`ModelFileError` naming the file (exit 1).
"""

from __future__ import annotations

import difflib
import importlib.util
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .config import QuantConfig
from .configfile import read_file

__all__ = ["ModelSource", "SourceError", "ModelFileError", "load_model", "load_config", "load_config_data",
           "torchvision_names"]

#: what to install for model names (the package is not on PyPI: the extra is installed from a checkout)
VISION_HINT = ("torchvision, the qsim-hooks[vision] extra: pip install -e '.[vision]' in a qsim-hooks checkout, "
               "or pip install torchvision")


class SourceError(ValueError):
    """A model name, model file or config file that cannot be used (one line, names it)."""


class ModelFileError(RuntimeError):
    """The user's model file raised while it was run (the message names the file; the cause is chained)."""


@dataclass
class ModelSource:
    """A model and what to feed it, as the command line uses them."""

    name: str
    model: nn.Module
    batches: list[Any]
    description: str
    forward: Callable[[nn.Module, Any], Any] | None = None
    output: Callable[[Any], torch.Tensor] | None = None
    metric: Callable[[nn.Module, Any], float] | None = None
    loss: Callable[[nn.Module, Any], Any] | None = None


def _torchvision() -> Any:
    try:  # deferred: torchvision is the optional [vision] extra
        import torchvision
    except ImportError:
        raise SourceError(f"a model name needs {VISION_HINT}; or give a .py model file") from None
    return torchvision


def torchvision_names() -> list[str]:
    """The torchvision classification model names (``torchvision.models.list_models``).

    Raises:
        SourceError: torchvision is not installed (the message says how to install it).
    """
    tv = _torchvision()
    return list(tv.models.list_models(module=tv.models))


def _synthetic(batch: int, size: int, count: int, seed: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, 3, size, size, generator=gen) for _ in range(count)]


def load_model(spec: str, *, batch: int = 8, size: int | None = None, batches: int = 1,
               seed: int = 0) -> ModelSource:
    """The model named by ``spec`` (a ``.py`` file or a torchvision name) and its batches.

    ``batch``, ``size`` (default 224) and ``batches`` shape the synthetic input
    of a torchvision model; a file brings its own. ``seed`` seeds the random
    weights and the synthetic data.

    Raises:
        SourceError: an unknown name, a name without torchvision installed, a
            missing file, or a file without ``model``/``build_model`` or
            ``batches``/``get_batches``.
        ModelFileError: the file itself raised (the message names the file).
    """
    for label, v in (("batch", batch), ("batches", batches)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise SourceError(f"{label}={v!r} must be a positive int")
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
        raise SourceError(f"size={size!r} must be a positive int")
    if spec.endswith(".py") or "/" in spec or Path(spec).suffix:
        return _from_file(Path(spec))
    names = torchvision_names()
    if spec not in names:
        close = difflib.get_close_matches(spec, names, n=3, cutoff=0.6)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise SourceError(f"unknown model {spec!r}{hint}; expected a path to a .py file or a torchvision "
                          "classification model name")
    tv = _torchvision()
    size = 224 if size is None else size
    torch.manual_seed(seed)
    model = tv.models.get_model(spec, weights=None).eval()
    return ModelSource(spec, model, _synthetic(batch, size, batches, seed),
                       f"torchvision {spec} (random weights, seed {seed}); {batches} synthetic N(0,1) "
                       f"batch{'es' if batches > 1 else ''} of {batch} x 3 x {size} x {size}")


def _from_file(path: Path) -> ModelSource:
    if path.suffix != ".py":
        raise SourceError(f"model file {str(path)!r} must be a Python file ending in .py")
    if not path.is_file():
        raise SourceError(f"model file {str(path)!r} not found")
    name = f"_qsim_hooks_model_{abs(hash(str(path.resolve())))}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:  # pragma: no cover - a .py file always has a loader
        raise SourceError(f"cannot load {str(path)!r} as a Python module")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # dataclasses and pickling inside the file look themselves up here
    folder = str(path.resolve().parent)
    sys.path.insert(0, folder)  # the file may import its neighbours, as when run as a script
    try:
        spec.loader.exec_module(mod)
        model = _get(mod, path, "model", "build_model")
        batches = _get(mod, path, "batches", "get_batches")
    except SourceError:
        raise
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # SystemExit, or any BaseException subclass the file raises: one line too
        raise ModelFileError(f"{path}: {type(exc).__name__}: {exc}") from exc
    finally:
        sys.modules.pop(name, None)
        if folder in sys.path:
            sys.path.remove(folder)
    if not isinstance(model, nn.Module):
        raise SourceError(f"{path}: model must be a torch.nn.Module, got {type(model).__name__}")
    if isinstance(batches, torch.Tensor):
        batches = [batches]
    else:
        try:
            batches = list(batches)
        except TypeError:
            raise SourceError(f"{path}: batches must be a list of batches (or one tensor), "
                              f"got {type(batches).__name__}") from None
    if not batches:
        raise SourceError(f"{path}: batches is empty")
    hooks = {}
    for attr in ("forward", "output", "metric", "loss"):
        fn = getattr(mod, attr, None)
        if fn is not None and not callable(fn):
            raise SourceError(f"{path}: {attr} must be a function, got {type(fn).__name__}")
        hooks[attr] = fn
    return ModelSource(path.stem, model, batches,
                       f"{path} ({type(model).__name__}, {len(batches)} batch{'es' if len(batches) > 1 else ''})",
                       **hooks)


def _get(mod: Any, path: Path, value: str, factory: str) -> Any:
    if hasattr(mod, value):
        return getattr(mod, value)
    fn = getattr(mod, factory, None)
    if callable(fn):
        return fn()
    raise SourceError(f"{path} defines neither {value!r} nor {factory}(); the command line needs both a "
                      "model (model or build_model()) and its input (batches or get_batches())")


def load_config_data(path: str | Path) -> dict[str, Any]:
    """The data of a ``.toml`` or ``.json`` config file (:func:`qsim_hooks.configfile.read_file`).

    Raises:
        SourceError: a missing file, another suffix or a parse error; the message names the file.
    """
    try:
        return read_file(path)
    except (ValueError, FileNotFoundError) as exc:
        raise SourceError(str(exc)) from None


def load_config(path: str | Path) -> QuantConfig:
    """A :class:`QuantConfig` from a ``.toml`` or ``.json`` file (keys of ``QuantConfig.from_dict``).

    Raises:
        SourceError: a missing file, another suffix, a parse error, or an
            invalid config (unknown key or format name); the message starts
            with the file's path.
    """
    data = load_config_data(path)
    try:
        return QuantConfig.from_dict(data)
    except (ValueError, TypeError) as exc:
        raise SourceError(f"{path}: {exc}") from None
