"""Named recipes: the configurations users know by name (``fp8``, ``w8a8-int``, ``mxfp4``, ...) as plain data.

A preset is the data of a config file (the keys of ``QuantConfig.from_dict``), so
``QuantConfig.preset("w4a16-int")``, ``qsim-hooks report --preset w4a16-int`` and a config file saying
``preset = "w4a16-int"`` (its own keys on top) all mean the same thing; ``qsim-hooks presets`` lists
them. Every preset quantizes every Linear and convolution (and attention's internal points, which follow
the layer's input and output formats); none quantizes outputs unless it says so.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Preset", "PRESETS", "get_preset", "preset_names"]


@dataclass(frozen=True)
class Preset:
    """A named recipe: what it is for (``summary``), what it sets (``data``: config-file keys), where it comes from."""

    name: str
    summary: str
    data: Mapping[str, Any] = field(default_factory=dict)
    source: str = ""

    def describe(self) -> str:
        """What the preset sets, in one line (``input int8 (per tensor); weight int8 (per channel); ...``)."""
        parts = []
        for role in ("input", "weight", "output"):
            fmt = self.data.get(role)
            if fmt is None or fmt == "none":
                continue
            sc = self.data.get(f"{role}_scaling")
            how = ""
            if isinstance(sc, str):
                how = f" per {sc}" if sc != "block" else " per block"
            elif isinstance(sc, Mapping):
                how = f" per {sc.get('granularity', 'tensor')} of {sc.get('block_size', 32)}"
            parts.append(f"{role} {fmt}{how}")
        return "; ".join(parts) + "; the rest in full precision"


_ALL = (
    Preset("int-fp-qsim-default", "INT-FP-QSim's default, and the command line's: FP8 E4M3 inputs and weights, "
           "FP16 outputs, as plain casts (no scale)",
           {"input": "e4m3", "weight": "e4m3", "output": "fp16"}, "INT-FP-QSim"),
    Preset("fp8", "FP8 E4M3 inputs and weights, each scaled per tensor (dynamic amax mapped to 448)",
           {"input": "e4m3", "weight": "e4m3", "input_scaling": "tensor", "weight_scaling": "tensor"},
           "torchao float8 (tensorwise), ModelOpt FP8_DEFAULT_CFG"),
    Preset("w8a8-int", "INT8 weights (symmetric, per output channel) and INT8 inputs (symmetric, per tensor, "
           "dynamic)", {"input": "int8", "weight": "int8", "weight_scaling": "channel"},
           "ModelOpt INT8_DEFAULT_CFG, SmoothQuant's W8A8 without the smoothing"),
    Preset("w4a8-int", "INT4 weights (symmetric, per output channel) and INT8 inputs (per tensor, dynamic)",
           {"input": "int8", "weight": "int4", "weight_scaling": "channel"}, "W4A8 integer serving recipes"),
    Preset("w4a16-int", "INT4 weights in groups of 128 along the input channels, FP16 inputs (weight-only "
           "quantization, as GPTQ / AWQ kernels run it)",
           {"input": "fp16", "weight": "int4", "weight_scaling": {"granularity": "block", "block_size": 128}},
           "GPTQ, AWQ (group size 128), ModelOpt INT4_AWQ_CFG"),
    Preset("w4a16-int-channel", "INT4 weights per output channel, FP16 inputs (weight-only, one scale per row)",
           {"input": "fp16", "weight": "int4", "weight_scaling": "channel"}, "per-channel weight-only INT4"),
    Preset("mxfp8", "OCP MX FP8 (E4M3 elements, a shared power-of-two E8M0 scale per 32) inputs and weights",
           {"input": "mxfp8_e4m3", "weight": "mxfp8_e4m3"}, "OCP Microscaling v1.0, ModelOpt MXFP8_DEFAULT_CFG"),
    Preset("mxfp4", "OCP MX FP4 (E2M1 elements, an E8M0 scale per 32) inputs and weights",
           {"input": "mxfp4", "weight": "mxfp4"}, "OCP Microscaling v1.0"),
    Preset("nvfp4", "NVFP4 (E2M1 elements, an E4M3 scale per 16 and an FP32 scale per tensor) inputs and weights",
           {"input": "nvfp4", "weight": "nvfp4"}, "NVIDIA Blackwell NVFP4, ModelOpt NVFP4_DEFAULT_CFG"),
)
#: name -> preset, in the order ``qsim-hooks presets`` lists them
PRESETS: dict[str, Preset] = {p.name: p for p in _ALL}


def preset_names() -> list[str]:
    return list(PRESETS)


def get_preset(name: str) -> Preset:
    """The preset called ``name`` (case and ``_``/``-`` do not matter).

    Raises:
        ValueError: an unknown name (the message lists the presets).
    """
    if not isinstance(name, str):
        raise TypeError(f"preset name must be a str, got {type(name).__name__}")
    key = name.strip().lower().replace("_", "-")
    if key not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; the presets are: {', '.join(PRESETS)} "
                         "(qsim-hooks presets says what each sets)")
    return PRESETS[key]
