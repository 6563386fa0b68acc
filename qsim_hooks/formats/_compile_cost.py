"""When fusing a kernel pays: the eager time a kernel has cost so far against what compiling it would cost.

``kernels.run`` (backend ``"auto"``) asks :func:`pays` before each call of a
kernel that is not compiled yet, and tells :func:`spent` how long each eager
call took. The kernel is compiled once its eager time plus the coming call's
predicted time reaches the expected compile cost (the ski-rental rule: never
more than about twice the better choice made in hindsight). The expected cost
is lower when torch.compile is already loaded in this process and lower again
when this kernel was compiled by an earlier process with this torch: a marker
file beside inductor's own persistent cache (its FX graph cache, on by default,
under ``$TORCHINDUCTOR_CACHE_DIR`` or the system temp dir) records that.

The one design reason: the first small job of a new process must not wait
15-20 s for a compiler, and a big one must still end up fused; the cost of a
compile is a fact about this process and this cache, not about the tensor.
"""

from __future__ import annotations

import contextlib
import getpass
import logging
import os
import re
import sys
import tempfile
from collections.abc import Iterator

import torch
from torch import Tensor

__all__ = ["pays", "spent", "compiling", "expected_cost", "cached", "marker_dir",
           "LOAD_S", "COLD_S", "WARM_S"]

LOAD_S = 8.0  #: importing dynamo and inductor, once per process (seconds, measured on a 2-core CPU)
COLD_S = 12.0  #: tracing and compiling one kernel with nothing cached
WARM_S = 2.0  #: one kernel whose compiled code inductor's cache holds from an earlier process
_PRIOR_NS = {"cpu": 100.0}  #: eager ns per element until a kernel's own is measured (other devices: 1)

_log = logging.getLogger("qsim_hooks")
_spent: dict[str, float] = {}
_rate: dict[str, float] = {}
_markers: set[str] | None = None
_told = False


def marker_dir() -> str:
    """Where the markers of compiled kernels live: inside inductor's cache dir (wiped with it)."""
    root = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if not root:
        try:
            user = getpass.getuser()  # as torch's default_cache_dir names it
        except (KeyError, ModuleNotFoundError, OSError):
            user = f"uid_{os.getuid()}" if hasattr(os, "getuid") else "unknown_user"
        root = os.path.join(tempfile.gettempdir(), "torchinductor_" + re.sub(r'[\\/:*?"<>|]', "_", user))
    return os.path.join(root, "qsim_hooks", "torch-" + re.sub(r"[^\w.+-]", "_", torch.__version__))


def cached(name: str) -> bool:
    """Whether an earlier process compiled kernel ``name`` with this torch (and left inductor's cache)."""
    global _markers
    if _markers is None:
        try:
            _markers = set(os.listdir(marker_dir()))
        except OSError:
            _markers = set()
    return name in _markers


def expected_cost(name: str) -> float:
    """Seconds compiling kernel ``name`` is expected to take now."""
    load = 0.0 if "torch._inductor.compile_fx" in sys.modules else LOAD_S
    return load + (WARM_S if cached(name) else COLD_S)


def _prior(x: Tensor) -> float:
    return _PRIOR_NS.get(x.device.type, 1.0)


def pays(name: str, x: Tensor) -> bool:
    """Whether kernel ``name`` should be compiled before running on ``x``."""
    predicted = x.numel() * _rate.get(name, _prior(x)) * 1e-9
    return _spent.get(name, 0.0) + predicted >= expected_cost(name)


def spent(name: str, x: Tensor, seconds: float | None) -> None:
    """Record an eager call of kernel ``name`` on ``x`` (``seconds=None``: not timed, estimated)."""
    if seconds is None:
        seconds = x.numel() * _prior(x) * 1e-9
    elif x.numel():
        _rate[name] = seconds * 1e9 / x.numel()
    _spent[name] = _spent.get(name, 0.0) + seconds


class _DropNoCudaRuntime(logging.Filter):
    """PyTorch's ``No CUDA runtime is found, using CUDA_HOME=...``, logged when inductor imports
    cpp_extension on a machine without a GPU: not the user's business when qsim-hooks compiles."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("No CUDA runtime is found")


@contextlib.contextmanager
def compiling(name: str) -> Iterator[None]:
    """Around the first call of a compiled kernel: say so on a cold start, mark the kernel compiled after."""
    global _told
    cold = not cached(name)
    if cold and not _told:
        _told = True
        _log.warning("qsim_hooks: compiling fused kernels with torch.compile (first use with this torch: "
                     "%.0f-%.0f s each on CPU; cached for later processes under %s; "
                     "qsim_hooks.formats.set_backend('eager') skips it)", COLD_S, COLD_S + LOAD_S,
                     os.path.dirname(os.path.dirname(marker_dir())))
    quiet = _DropNoCudaRuntime()
    ext_log = logging.getLogger("torch.utils.cpp_extension")
    ext_log.addFilter(quiet)
    try:
        yield
    finally:
        ext_log.removeFilter(quiet)
    if cold:
        try:
            os.makedirs(marker_dir(), exist_ok=True)
            with open(os.path.join(marker_dir(), name), "a"):
                pass
        except OSError:
            return  # a read-only cache: the next process just expects a cold compile
        if _markers is not None:
            _markers.add(name)
