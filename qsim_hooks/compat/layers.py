"""INT-FP-QSim's ``replace_layers``, done by instrumentation instead of replacement.

``replace_layers(model, input_quantizer, weight_quantizer, output_quantizer)``
keeps INT-FP-QSim's signature but swaps no module: it attaches a session and
returns a handle that also stands in for the model (calls, attributes and
``nn.Module`` methods go to the model), so a script written for INT-FP-QSim::

    model = replace_layers(model, input_quantizer=q_in, weight_quantizer=q_w,
                           output_quantizer=q_out)
    model.eval(); model(x)

runs after changing one import, and ``model.detach()`` (or leaving
``with replace_layers(...)``) restores the original model exactly.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from torch import nn

from ..config import QuantConfig, Rule
from ..session import Session

__all__ = ["replace_layers", "DEFAULT_LAYERS", "ReplacedModel"]

#: The layer types INT-FP-QSim's default mapping quantized (attention classes come with
#: the attention points).
DEFAULT_LAYERS: tuple[type, ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.ConvTranspose2d)


class ReplacedModel(Session):
    """The session returned by :func:`replace_layers`; usable where the model was."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.model(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        # only reached for names the session itself does not have
        if name == "model":
            raise AttributeError(name)
        return getattr(self.model, name)


def replace_layers(module: nn.Module, input_quantizer: Any = None, weight_quantizer: Any = None,
                   output_quantizer: Any = None, mapping: Mapping[type, Any] | Iterable[type] | None = None,
                   calibration: Any = None) -> ReplacedModel:
    """Instrument ``module``'s layers with INT-FP-QSim-style quantizers (any format-like object).

    Args:
        module: the model (left unmodified; instrumented until ``detach()``).
        input_quantizer, weight_quantizer, output_quantizer: callables or formats
            (``compat.E4M3``, ``"int8"``, a qtorch quantizer, ...); ``None`` = full precision.
        mapping: the layer types to instrument. INT-FP-QSim's ``{nn.Linear: qnn.Linear, ...}``
            mapping is accepted (its keys are used) as is a list of types.
            Default: Linear, Conv1d, Conv2d, ConvTranspose2d.
        calibration: a :class:`qsim_hooks.Calibration` (from ``qh.calibrate`` or
            ``compat.calibrate_inputs/weights`` on the plain model) whose static scales
            the layers use, INT-FP-QSim's calibrate-then-replace order.
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"replace_layers: module must be a torch.nn.Module, got {type(module).__name__}")
    types = tuple(mapping.keys() if isinstance(mapping, Mapping) else (mapping or DEFAULT_LAYERS))
    for t in types:
        if not (isinstance(t, type) and issubclass(t, nn.Module)):
            raise TypeError(f"replace_layers: mapping keys must be nn.Module types, got {t!r}")
    cfg = QuantConfig(input=input_quantizer, weight=weight_quantizer, output=output_quantizer,
                      rules=(Rule(enabled=False, name="not in mapping"),
                             Rule(types=types, enabled=True, name="mapping")),
                      strict=False)
    return ReplacedModel(module, cfg, calibration=calibration).attach()  # type: ignore[return-value]
