"""EfficientNet-Lite0 (real ImageNet weights) on real photographs: agreement with full precision per format.

``run(Settings()) -> EffNetResult`` (plain data), ``render(result, console)`` (rich tables); ``Unavailable``
is raised, with a one-line message naming the package to install, when the weights package is missing.
"""

from .evaluate import CONFIGS, EffNetResult, Settings, Unavailable, render, run

__all__ = ["CONFIGS", "EffNetResult", "Settings", "Unavailable", "render", "run"]
