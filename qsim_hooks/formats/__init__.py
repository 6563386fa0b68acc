"""Number formats: small frozen values, and the kernels behind them.

Where things live (imports go down this list, never up):

* :mod:`.registry` - names -> formats, :func:`as_format`, :class:`CallableFormat`
* :mod:`.block` - the named block formats (MX, NVFP4, BFP, ABFP) and their factories;
  :mod:`._block_format` (BlockFormat), :mod:`._block_abfp` (ABFP), :mod:`._block_kernels`
* :mod:`.floating` - any ExMy float (bias, specials, subnormals, overflow) and the named ones
* :mod:`.integer` - b-bit integers with a scale, integer element grids
* :mod:`.scaling` - amax -> scale, per tensor / channel / block, dynamic or static
* :mod:`.base` - the Format protocol, :class:`FormatInfo`, rounding modes, the gradient estimator
* :mod:`.kernels` - fused element-wise kernels (eager or torch.compile)

Other packages should use: :data:`FormatLike` (what :func:`as_format` takes),
:class:`FormatInfo` (a format's figures, ``fmt.info``) and the named values
(``E4M3``, ``BF16``, ``MXFP4``, ...) rather than building formats by hand.
"""

from .base import Format, FormatInfo, FormatLike, GradSpec, Rounding
from .block import ABFP8, MXFP4, MXFP6_E2M3, MXFP6_E3M2, MXFP8_E4M3, MXFP8_E5M2, MXINT8, NVFP4, BlockFormat
from .floating import BF16, E2M1, E2M3, E3M2, E3M4, E4M3, E5M2, FP16, FP32, TF32, FloatFormat
from .integer import IntFormat
from .kernels import get_backend, set_backend
from .registry import CallableFormat, as_format, get, names, register
from .scaling import ScaledFormat, Scaling

__all__ = ["Format", "FormatInfo", "FormatLike", "FloatFormat", "IntFormat", "BlockFormat", "Scaling",
           "ScaledFormat", "Rounding", "GradSpec", "CallableFormat", "get", "names", "as_format", "register",
           "set_backend", "get_backend",
           "E4M3", "E5M2", "E3M4", "E3M2", "E2M3", "E2M1", "FP16", "BF16", "TF32", "FP32",
           "MXFP8_E4M3", "MXFP8_E5M2", "MXFP6_E3M2", "MXFP6_E2M3", "MXFP4", "MXINT8", "NVFP4", "ABFP8"]
