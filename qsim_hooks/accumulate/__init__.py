"""Accumulator precision: the sums inside a GEMM, simulated (what :class:`Accumulator` means: docs/accumulators.md).

* :mod:`.spec` - :class:`Accumulator`, :class:`IntAccumulation`, the :func:`hopper_fp8` preset
* :mod:`.engine` - :func:`accumulate_matmul`: a GEMM with simulated sums, vectorised over outputs
* :mod:`.layers` - every GEMM call the interception reads (linear, matmul, addmm, einsum, convolutions and
  transposed ones through im2col, grouped_mm) rebuilt as that GEMM
* :mod:`.wiring` - :class:`~.wiring.Accumulation`, what ``Interception.run_gemm`` calls for each GEMM and its
  owning module; integer operands read back as codes; the statistics

The package sits next to :mod:`qsim_hooks.formats` and imports only it and :mod:`qsim_hooks.marks`, so the
interception (above it) calls into it without a cycle.
"""

from .engine import accumulate_matmul, matmul_with_overflow
from .spec import Accumulator, IntAccumulation, as_accumulator, hopper_fp8

__all__ = ["Accumulator", "IntAccumulation", "hopper_fp8", "as_accumulator", "accumulate_matmul",
           "matmul_with_overflow"]
