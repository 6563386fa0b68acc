"""Accumulator precision: the sums inside a GEMM, simulated (what :class:`Accumulator` means: docs/accumulators.md).

* :mod:`.spec` - :class:`Accumulator`, :class:`IntAccumulation`, the :func:`hopper_fp8` preset
* :mod:`.engine` - :func:`accumulate_matmul`: a GEMM with simulated sums, vectorised over outputs
* :mod:`.layers` - Linear / Conv1d / Conv2d as that GEMM (convolutions through im2col)
* :mod:`.wiring` - forward hooks that replace a layer's output, and their statistics

The package sits next to :mod:`qsim_hooks.formats` and imports nothing else of qsim_hooks, so the lead can
route other GEMMs (functional calls, attention) through :func:`accumulate_matmul` without a cycle.
"""

from .engine import accumulate_matmul, matmul_with_overflow
from .spec import Accumulator, IntAccumulation, as_accumulator, hopper_fp8

__all__ = ["Accumulator", "IntAccumulation", "hopper_fp8", "as_accumulator", "accumulate_matmul",
           "matmul_with_overflow"]
