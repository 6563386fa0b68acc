"""The INT-FP-QSim API on qsim-hooks: its named quantizers and ``replace_layers``.

A script written for INT-FP-QSim keeps working after changing its imports to
``from qsim_hooks.compat import INT8, E4M3, replace_layers, ...``. The
quantizers (:mod:`.quantizers`) are qsim-hooks formats with INT-FP-QSim's call
signatures and semantics (``static_scale=`` included); ``replace_layers``
(:mod:`.layers`) instruments the model instead of swapping its modules.
Nothing here imports qtorch.
"""

from .calibration import apply_calibration, calibrate_inputs, calibrate_weights
from .layers import DEFAULT_LAYERS, ReplacedModel, replace_layers
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
           "CastQuantizer", "quantize_to_int", "quantize_to_fp", "replace_layers", "ReplacedModel",
           "DEFAULT_LAYERS", "calibrate_inputs", "calibrate_weights", "apply_calibration"]
