"""A tiny Llama trained here (cached) on Python's documentation: held-out perplexity and generation per format.

``run(Settings()) -> LMResult`` (plain data), ``render(result, console)`` (rich tables); ``Unavailable`` is
raised, with a one-line message naming what to install, when transformers (or ``pydoc_data``) is missing.
"""

from .evaluate import CONFIGS, LMResult, Settings, Unavailable, render, run

__all__ = ["CONFIGS", "LMResult", "Settings", "Unavailable", "render", "run"]
