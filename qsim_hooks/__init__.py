"""qsim-hooks: simulate low-precision number formats on unmodified PyTorch models."""

from . import formats

__version__ = "0.1.0"
__all__ = ["formats", "__version__"]
