"""What an accumulator is: the format partial sums live in, their order, chunking and promotion.

An :class:`Accumulator` is a frozen value checked on construction (a bad field fails where it is written);
:mod:`.engine` reads it and nothing else. It sits next to :mod:`qsim_hooks.formats` (it only rounds with
formats), so config, planning and session can all name it without a cycle.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

from ..formats import FloatFormat, IntFormat, as_format

__all__ = ["Accumulator", "IntAccumulation", "hopper_fp8", "as_accumulator", "ORDERS", "PRESETS"]

ORDERS = ("sequential", "pairwise", "chunked")
Order = Literal["sequential", "pairwise", "chunked"]


@dataclass(frozen=True)
class IntAccumulation:
    """A two's-complement ``bits``-bit integer accumulator that wraps or saturates on overflow."""

    bits: int = 32
    overflow: Literal["wrap", "saturate"] = "wrap"

    def __post_init__(self) -> None:
        if not isinstance(self.bits, int) or isinstance(self.bits, bool) or not 2 <= self.bits <= 48:
            raise ValueError(f"IntAccumulation.bits={self.bits!r} is not allowed; use an int in 2..48")
        if self.overflow not in ("wrap", "saturate"):
            raise ValueError(f"IntAccumulation.overflow={self.overflow!r} is not allowed; use 'wrap' or 'saturate'")

    @property
    def lo(self) -> int:
        return -(2 ** (self.bits - 1))

    @property
    def hi(self) -> int:
        return 2 ** (self.bits - 1) - 1

    @property
    def name(self) -> str:
        return f"int{self.bits}-{self.overflow}"


def _float(v: Any, who: str) -> FloatFormat:
    f = as_format(v, field=who)
    if not isinstance(f, FloatFormat) or f.scaling is not None:
        name = getattr(f, "name", repr(v))
        raise ValueError(f"{who}={name!r} is not allowed: an accumulator rounds to an unscaled float format "
                         "(fp32, 'bf16', FloatFormat(8, 13), ...) or is an integer one ('int24', IntAccumulation)")
    return f


def _acc_format(v: Any, overflow: str, who: str) -> FloatFormat | IntAccumulation:
    if isinstance(v, IntAccumulation):
        return v
    if isinstance(v, IntFormat):
        return IntAccumulation(v.bits, overflow)  # type: ignore[arg-type]
    if isinstance(v, str) and (m := re.fullmatch(r"int(\d+)", v)):
        return IntAccumulation(int(m.group(1)), overflow)  # type: ignore[arg-type]
    return _float(v, who)


@dataclass(frozen=True)
class Accumulator:
    """How the sums inside a GEMM are formed (semantics: docs/accumulators.md).

    For each output element, products ``p_k = a_k * b_k`` are formed in fp32 (then rounded to ``product``
    when set). The reduction axis is cut into chunks of ``chunk`` consecutive products (the whole axis when
    ``None``). Within a chunk the partial sum ``s`` lives in ``format``:

    * ``order="sequential"``: ``s = round(s + p_k)`` one product at a time, in index order;
    * ``order="pairwise"``: a tree over adjacent pairs, ``round(p_0 + p_1)``, ``round(p_2 + p_3)``, ...,
      an odd last element carried up unchanged, level by level;
    * ``order="chunked"``: the chunk is summed in fp32 (torch's own order) and rounded to ``format`` once.

    After each chunk the partial sum joins the running total: ``t = round_promote(t + s)`` (``promote=None``:
    the total is rounded to ``format`` too). Bias is added once at the end, rounded in ``promote``'s format
    (``format``'s when ``promote`` is ``None``).

    ``align_bits`` models Hopper-class FP8 tensor cores (see :func:`hopper_fp8`): the partial sum and the next
    ``group`` products are aligned to the largest exponent among them and truncated toward zero to
    ``align_bits`` significant bits, then added exactly. ``format`` must be fp32 then.

    Integer accumulators (``"int16"``, ``"int24"``, ``IntAccumulation(32, "saturate")``) sum integer codes in
    int64, wrapping or clamping after every addition (``overflow``); they take no chunk or pairwise order.
    """

    format: Any = "fp32"
    chunk: int | None = None
    promote: Any = "fp32"
    order: Order = "sequential"
    product: Any = None
    overflow: Literal["wrap", "saturate"] = "wrap"
    align_bits: int | None = None
    group: int = 1
    name: str = ""

    def __post_init__(self) -> None:
        fmt = _acc_format(self.format, self.overflow, "Accumulator.format")
        object.__setattr__(self, "format", fmt)
        if self.order not in ORDERS:
            raise ValueError(f"Accumulator.order={self.order!r} is not allowed; use one of {list(ORDERS)}")
        if self.chunk is not None and (not isinstance(self.chunk, int) or isinstance(self.chunk, bool)
                                       or self.chunk <= 0):
            raise ValueError(f"Accumulator.chunk={self.chunk!r} is not allowed; use a positive int or None")
        if not isinstance(self.group, int) or isinstance(self.group, bool) or self.group <= 0:
            raise ValueError(f"Accumulator.group={self.group!r} is not allowed; use a positive int")
        object.__setattr__(self, "promote", None if self.promote is None else _float(self.promote,
                                                                                      "Accumulator.promote"))
        object.__setattr__(self, "product", None if self.product is None else _float(self.product,
                                                                                      "Accumulator.product"))
        if self.align_bits is not None:
            if not isinstance(self.align_bits, int) or not 2 <= self.align_bits <= 24:
                raise ValueError(f"Accumulator.align_bits={self.align_bits!r} is not allowed; use an int in 2..24")
            if not isinstance(fmt, FloatFormat) or fmt.man_bits != 23 or fmt.exp_bits != 8 \
                    or self.order != "sequential":
                raise ValueError("Accumulator.align_bits models an fp32 tensor-core accumulator: it needs "
                                 "format='fp32' and order='sequential'")
        if isinstance(fmt, IntAccumulation) and (self.chunk is not None or self.order != "sequential"
                                                 or self.product is not None):
            raise ValueError(f"Accumulator.format={fmt.name!r}: an integer accumulator sums codes one at a time; "
                             "it takes no chunk, product format or order other than 'sequential'")
        if not self.name:
            object.__setattr__(self, "name", self._default_name())

    @property
    def is_int(self) -> bool:
        return isinstance(self.format, IntAccumulation)

    def _default_name(self) -> str:
        n = self.format.name
        if self.align_bits is not None:
            n += f"-align{self.align_bits}x{self.group}"
        if self.order != "sequential":
            n += f"-{self.order}"
        if self.chunk is not None:
            n += f"-c{self.chunk}" + (f">{self.promote.name}" if self.promote is not None else "")
        return n


def hopper_fp8(promote_every: int | None = 128, align_bits: int = 14, group: int = 32) -> Accumulator:
    """The FP8 GEMM of a Hopper-class tensor core, as the DeepSeek-V3 technical report describes it.

    Source: DeepSeek-AI, "DeepSeek-V3 Technical Report" (arXiv:2412.19437), section 3.3.2 "Increasing
    Accumulation Precision": the FP8 GEMM of H800 tensor cores retains only about 14 bits when it adds
    products (a relative error of nearly 2% for K = 4096 on random inputs); promoting partial results to
    fp32 CUDA-core registers every 128 elements of K (4 WGMMAs) fixes it.

    Model (an assumption where the report says nothing): products are exact in fp32 (FP8 x FP8 fits);
    every ``group`` products (32, one FP8 WGMMA's K) are added together with the running partial sum after
    aligning all of them to the largest exponent among them and truncating each toward zero to
    ``align_bits`` significant bits; the partial sum is promoted into an fp32 total every ``promote_every``
    products (``None``: never).
    """
    chunk = promote_every
    return Accumulator("fp32", chunk=chunk, promote="fp32", align_bits=align_bits, group=group,
                       name=f"hopper-fp8{'' if chunk is None else f'-promote{chunk}'}")


#: names :func:`as_accumulator` reads as presets
PRESETS = {"hopper_fp8": hopper_fp8, "hopper_fp8_nopromote": lambda: hopper_fp8(promote_every=None)}


def as_accumulator(v: Any, who: str) -> Accumulator | None:
    """``None``, an :class:`Accumulator`, a preset name (``"hopper_fp8"``) or a format (``"fp16"``,
    ``FloatFormat(8, 13)``, ``"int24"``: that accumulator with the defaults)."""
    if v is None or isinstance(v, Accumulator):
        return v
    if isinstance(v, str) and v in PRESETS:
        return PRESETS[v]()
    try:
        return Accumulator(v)
    except (ValueError, TypeError) as exc:
        raise type(exc)(f"{who}: {exc} (or a preset: {sorted(PRESETS)})") from None
