"""The model zoo: tiny random-weight models of real architectures (no downloads) for coverage tests.

``CASES`` maps a case name to its :class:`~tests.zoo.base.Case`: transformers 5 decoders
(:mod:`.decoders`), mixture-of-experts decoders (:mod:`.moe`), encoders / encoder-decoders / vision
transformers (:mod:`.encoders`), torchvision transformers (:mod:`.vision`) and diffusers denoisers
(:mod:`.diffusion`). Libraries are imported when a model is built, not when the zoo is imported.
"""

from __future__ import annotations

from . import decoders, diffusion, encoders, moe, vision
from .base import Case, outputs

__all__ = ["CASES", "Case", "outputs", "impl_cases"]

CASES: dict[str, Case] = {c.name: c for mod in (decoders, moe, encoders, vision, diffusion) for c in mod.CASES}


def impl_cases() -> list[tuple[str, str]]:
    """Every (case name, implementation) pair of the zoo."""
    return [(n, impl) for n, c in CASES.items() for impl in c.impls]
