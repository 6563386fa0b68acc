"""Number formats: small frozen values, and the kernels behind them.

Where things live:

* :mod:`.base` - the Format protocol, rounding modes, the gradient estimator
* :mod:`.floating` - any ExMy float (bias, specials, subnormals, overflow)
* :mod:`.integer` - b-bit integers with a scale
* :mod:`.scaling` - amax -> scale, per tensor / channel / block, dynamic or static
* :mod:`.block` - block formats (MX, NVFP4, BFP, ABFP)
* :mod:`.kernels` - fused element-wise kernels (eager or torch.compile)
* :mod:`.registry` - names -> formats, and :func:`as_format`
"""

from .base import Format, GradSpec, Rounding
from .floating import FloatFormat
from .integer import IntFormat
from .kernels import get_backend, set_backend
from .registry import CallableFormat, as_format, get, names, register
from .scaling import Scaling

__all__ = ["Format", "FloatFormat", "IntFormat", "Scaling", "Rounding", "GradSpec",
           "CallableFormat", "get", "names", "as_format", "register", "set_backend", "get_backend"]
