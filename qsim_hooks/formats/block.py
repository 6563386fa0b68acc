"""Block formats: OCP MX, NVFP4-style two-level scaling, qtorch block floating point, ABFP.

A block format shares one scale across a group of elements. Every one here is
a :class:`BlockFormat` (an element grid, a grouping, a scale grid and an
optional fp32 tensor level); this module makes the named configurations::

    mxfp8_e4m3  mxfp8_e5m2  mxfp6_e3m2  mxfp6_e2m3  mxfp4  mxint8   (OCP MX v1.0, k=32, E8M0)
    nvfp4       E2M1 elements, blocks of 16, E4M3 block scale, fp32 tensor scale
    abfp8       ABFP (arXiv 2205.06287): int8 elements, tiles of 128, bf16 scales

``bfp(wl, dim)`` and :func:`from_qtorch_bfp` give qtorch's ``BlockFloatingPoint``.
The arithmetic (scale rules, Inf/NaN, ragged blocks, MXINT8, qtorch and ABFP
details) is written up in ``docs/formats/block.md``.
"""

from __future__ import annotations

from typing import Any

from ._block_abfp import ABFP, abfp
from ._block_format import ELEMENTS, BlockFormat, Element, Grouping, ScaleRounding, element_of
from .base import Format, GradSpec, Rounding
from .floating import E2M1, E4M3
from .integer import IntElement

__all__ = ["BlockFormat", "IntElement", "Element", "ABFP", "mx", "nvfp4", "bfp", "abfp", "from_qtorch_bfp",
           "ELEMENTS", "NAMED", "MXFP8_E4M3", "MXFP8_E5M2", "MXFP6_E3M2", "MXFP6_E2M3", "MXFP4", "MXINT8",
           "NVFP4", "ABFP8"]


def mx(element: str | Element = "e4m3", block_size: int = 32, *, axis: int | None = None,
       scale_rounding: ScaleRounding = "floor", rounding: Rounding | str | None = None,
       grad: GradSpec | None = None, name: str = "") -> BlockFormat:
    """An OCP MX v1.0 format: ``element`` ('e4m3', 'e5m2', 'e3m2', 'e2m3', 'e2m1', 'int8'
    or an element object), E8M0 block scales, ``block_size`` elements per block (32 in the spec)."""
    el = element_of(element, "mx(element)")
    if not name:
        default = {"e4m3": "mxfp8_e4m3", "e5m2": "mxfp8_e5m2", "e3m2": "mxfp6_e3m2",
                   "e2m3": "mxfp6_e2m3", "e2m1": "mxfp4", "int8": "mxint8"}.get(el.name, f"mx_{el.name}")
        name = default if block_size == 32 else f"{default}_k{block_size}"
        if scale_rounding != "floor":
            name += f"_{scale_rounding}"
    return BlockFormat(el, block_size, axis, "block", "e8m0", scale_rounding, False, rounding,
                       grad=grad or GradSpec(), name=name)


def nvfp4(block_size: int = 16, *, axis: int | None = None, scale_rounding: ScaleRounding = "nearest",
          tensor_scale: bool = True, rounding: Rounding | str | None = None,
          grad: GradSpec | None = None, name: str = "") -> BlockFormat:
    """NVIDIA's NVFP4: E2M1 elements, blocks of 16, an E4M3 block scale and an fp32 tensor scale."""
    return BlockFormat(E2M1, block_size, axis, "block", E4M3, scale_rounding, tensor_scale, rounding,
                       grad=grad or GradSpec(), name=name or "nvfp4")


def bfp(wl: int = 8, dim: int | None = None, *, block_size: int | None = None,
        rounding: Rounding | str | None = None, qtorch_compat: bool = False,
        grad: GradSpec | None = None, name: str = "") -> BlockFormat:
    """Block floating point: wl-bit integers sharing a power-of-two exponent.

    ``block_size=None`` shares one exponent per index of ``dim`` (qtorch's
    ``BlockFloatingPoint(wl, dim)``; ``dim=-1`` or ``None``: the whole tensor);
    with ``block_size`` the exponent is shared by blocks along ``dim``.
    """
    grouping: Grouping
    if block_size is not None:
        grouping, axis = "block", dim
    elif dim is None or dim == -1:
        grouping, axis = "tensor", None
    else:
        grouping, axis = "channel", dim
    el = IntElement(wl, name=f"int{wl}")
    if not name:
        where = {"tensor": "", "channel": f"_dim{dim}", "block": f"_k{block_size}"}[grouping]
        name = f"{'qtorch_' if qtorch_compat else ''}bfp{wl}{where}"
    return BlockFormat(el, block_size or 32, axis, grouping, "e8m0", "floor", False, rounding,
                       qtorch_compat=qtorch_compat, grad=grad or GradSpec(), name=name)


def from_qtorch_bfp(obj: Any) -> Format:
    """qtorch's ``BlockFloatingPoint(wl, dim)`` as a BlockFormat matching ``block_quantize(x, wl, dim,
    rounding="nearest")`` bit for bit (the two edge cases: docs/formats/block.md)."""
    wl, dim = int(obj.wl), int(obj.dim)
    if not 2 <= wl <= 22:
        raise ValueError(f"qtorch BlockFloatingPoint(wl={wl}) is not supported; wl must be 2..22")
    return bfp(wl, dim, qtorch_compat=True,
               name=f"qtorch_bfp{wl}" + ("" if dim == -1 else f"_dim{dim}"))


#: The named block formats (the registry serves these values).
MXFP8_E4M3 = mx("e4m3")
MXFP8_E5M2 = mx("e5m2")
MXFP6_E3M2 = mx("e3m2")
MXFP6_E2M3 = mx("e2m3")
MXFP4 = mx("e2m1")
MXINT8 = mx("int8")
NVFP4 = nvfp4()
ABFP8 = abfp(8, 128)
NAMED: dict[str, Format] = {f.name: f for f in (MXFP8_E4M3, MXFP8_E5M2, MXFP6_E3M2, MXFP6_E2M3, MXFP4, MXINT8,
                                                NVFP4, ABFP8)}
