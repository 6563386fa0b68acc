"""How a batch is fed to a model: one rule shared by calibration, comparison and the CLI.

``forward(model, batch)`` is INT-FP-QSim's ``batch_process_func``; when none is
given, :func:`default_forward` feeds ``model(**batch)`` for a mapping,
``model(*batch)`` for a tuple or list, and ``model(batch)`` otherwise.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from torch import nn

__all__ = ["default_forward", "ForwardFn"]

ForwardFn = Callable[[nn.Module, Any], Any]


def default_forward(model: nn.Module, batch: Any) -> Any:
    """``model(**batch)`` for a mapping, ``model(*batch)`` for a tuple or list, else ``model(batch)``."""
    if isinstance(batch, Mapping):
        return model(**batch)
    if isinstance(batch, (tuple, list)):
        return model(*batch)
    return model(batch)
