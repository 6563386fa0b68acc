"""qsim-hooks: simulate low-precision number formats on unmodified PyTorch models.

``with qsim_hooks.quantized(model, cfg) as qs: model(x)`` fake-quantizes the
weights (parametrizations), inputs and outputs (hooks) of every Linear and
convolution, per the rules of ``cfg``, and removes everything on exit.

The package holds the library only (models, data and evaluations are in the
repository's ``examples/``); ``import qsim_hooks`` imports none of its optional
dependencies (qtorch, torchvision, matplotlib) nor any model library.
"""

from . import accumulate, formats
from .accumulate import Accumulator, accumulate_matmul, hopper_fp8
from .analysis import (
    Captured,
    Captures,
    Comparison,
    SensitivityResult,
    SweepResult,
    capture,
    compare,
    sensitivity,
    sweep,
)
from .calibration import Calibration, calibrate
from .config import LayerSpec, QuantConfig, Rule, register_layer
from .formats import FloatFormat, Format, GradSpec, IntFormat, Rounding, Scaling
from .planning import Plan
from .search import SearchResult, search
from .session import CoverageError, Session, attach, detach, plan, quantized

__version__ = "0.1.0"
__all__ = ["quantized", "attach", "detach", "plan", "Session", "QuantConfig", "Rule", "LayerSpec", "Plan",
           "register_layer", "formats", "Format", "FloatFormat", "IntFormat", "Scaling", "Rounding",
           "GradSpec", "compare", "Comparison", "sensitivity", "SensitivityResult", "sweep", "SweepResult",
           "capture", "Captured", "Captures", "calibrate", "Calibration", "search", "SearchResult",
           "CoverageError", "accumulate", "Accumulator", "accumulate_matmul", "hopper_fp8",
           "__version__"]
