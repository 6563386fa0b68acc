"""The INT-FP-QSim API on qsim-hooks, with INT-FP-QSim's numbers.

A script written for INT-FP-QSim keeps working after changing its imports to
``from qsim_hooks.compat import INT8, E4M3, replace_layers, calibrate_inputs, ...``, and gives the old
tool's results bit for bit (tests/compat/test_golden.py compares them with the old tool's own outputs;
the README's compatibility section lists the deliberate differences). Where things live:

* :mod:`.quantizers` - the seven named quantizers (``INT8`` ... ``E2M1``), qsim-hooks formats with the
  old call signatures and arithmetic
* :mod:`._trt` - TensorRT's integer fake quantization and histogram calibration, as the old tool used them
* :mod:`.layers` - ``replace_layers`` (instruments, replaces nothing, returns the model),
  ``session_of`` / ``detach``, ``apply_calibration``
* :mod:`.attention` - INT-FP-QSim's attention class names, its ``nn.MultiheadAttention`` point placement
* :mod:`.calibration` - ``calibrate_inputs`` / ``calibrate_weights`` (the ``amax_input`` /
  ``amax_weight`` attributes), ``clear_scales``

qsim-hooks proper keeps its own documented choices; nothing here imports qtorch.
"""

from typing import Any

from .calibration import calibrate_inputs, calibrate_weights, clear_scales
from .layers import (
    DEFAULT_LAYERS,
    CompatSession,
    apply_calibration,
    default_mapping,
    detach,
    replace_layers,
    session_of,
)
from .quantizers import (
    BF16,
    E1M2,
    E2M1,
    E4M3,
    FP16,
    INT4,
    INT8,
    CastQuantizer,
    FloatQuantizer,
    IntQuantizer,
    quantize_to_fp,
    quantize_to_int,
)

__all__ = ["INT8", "INT4", "E4M3", "FP16", "BF16", "E1M2", "E2M1", "IntQuantizer", "FloatQuantizer",
           "CastQuantizer", "quantize_to_int", "quantize_to_fp", "replace_layers", "session_of", "detach",
           "CompatSession", "DEFAULT_LAYERS", "DEFAULT_MAPPING", "default_mapping", "calibrate_inputs",
           "calibrate_weights", "apply_calibration", "clear_scales"]


def __getattr__(name: str) -> Any:
    # DEFAULT_MAPPING imports transformers / diffusers (as INT-FP-QSim's did): built on first access only
    if name == "DEFAULT_MAPPING":
        mapping = default_mapping()
        globals()["DEFAULT_MAPPING"] = mapping
        return mapping
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
