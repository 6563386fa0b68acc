"""Static calibration: observers on the session's own points, methods, and the Calibration they produce.

``calib = qsim_hooks.calibrate(model, cfg, data, method="entropy")`` runs a
few batches with quantization off and an observer at every point whose format
takes a static scale, then fixes one amax per point (per tensor, or per
channel); ``qsim_hooks.quantized(model, cfg, calibration=calib)`` evaluates
with those scales. Where things live:

* :mod:`.observers` - max and growing-range histogram observers (state in
  tensors, exact merging across batches and ranks)
* :mod:`.methods` - max, percentile, entropy (TensorRT's KL search) and mse,
  the last two scoring candidates with the target format itself
* :mod:`.calibration` - :class:`Calibration` (JSON save/load, validation
  against a model) and which formats can be calibrated
* :mod:`.api` - :func:`calibrate`, :func:`calibrate_session`
"""

from .api import calibrate, calibrate_session, default_forward
from .calibration import Calibration, PointCalibration, calibration_target
from .methods import METHODS, register_method
from .observers import HistogramObserver, MaxObserver, Observer

__all__ = ["calibrate", "calibrate_session", "default_forward", "Calibration", "PointCalibration",
           "calibration_target", "METHODS", "register_method", "Observer", "MaxObserver", "HistogramObserver"]
