"""Model-level analysis: the simulated model against full precision, layer by layer.

What this package answers, each as plain data (rendered by :mod:`qsim_hooks.report`), one module each:

* :func:`compare` (:mod:`.comparison`) - the full-precision and the simulated model on the same
  batches: output SQNR, max abs error, top-1 agreement for classifiers, an optional task metric, and
  the session's per-point statistics (:class:`Comparison`).
* :func:`sweep` (:mod:`.sweeping`) - one comparison per format, the formats applied to chosen roles.
* :func:`sensitivity` (:mod:`.ranking`) - one layer (or block) quantized at a time with everything
  else in full precision, or everything quantized but one, ranked by output SQNR.
* :func:`capture` (:mod:`.capturing`) - the tensors some quantization points see (through their
  ``observer`` slot), for :func:`qsim_hooks.plots.histogram`.

Sweeps and rankings return lists of row dicts that also render (:mod:`.results`: ``.rows``,
``.render()``, ``.to_pandas()``, a short repr); every function takes ``forward_loop=fn`` (a function
that runs the model itself) instead of batches, and ``progress=`` (a bar on stderr in a terminal).

Row arithmetic on the results (:func:`group_stats`, :func:`select_points`) lives below, in
:mod:`qsim_hooks.rows`, and is re-exported here.

The one design reason a reader needs: every variant of a model is expressed as
a :class:`~qsim_hooks.config.QuantConfig` (sensitivity appends
``Rule(match="*", enabled=False)`` and ``Rule(match="re:<that layer>", enabled=True)``
to the user's rules), so each run is an ordinary session and sees exactly what
the user's own config would. The full-precision reference is computed once and
reused by every run of a sweep or a sensitivity analysis.

Each run puts the model in eval mode under ``torch.no_grad()`` and restores its
training flags afterwards; sessions remove their hooks and parametrizations,
so the model is unchanged after any function here.

How a batch is fed and which output is compared (:mod:`.feeding`):

* ``forward(model, batch)`` (default: ``model(**batch)`` for a mapping,
  ``model(*batch)`` for a tuple or list, ``model(batch)`` otherwise; a batch
  that does not fit the model's ``forward`` is a TypeError saying what to pass);
* ``output(out) -> Tensor`` (default :func:`first_tensor`: the output itself
  when it is a tensor, otherwise the first tensor found depth-first in a tuple,
  list or mapping; a Hugging Face ``ModelOutput`` is a mapping of its non-None
  fields, so this is ``logits`` unless the model also returned a ``loss``: pass
  ``output=lambda o: o.logits`` then).
"""

from ..batches import default_forward
from ..rows import group_name, group_stats, select_points
from .capturing import Captured, Captures, capture
from .comparison import Comparison, compare
from .feeding import first_tensor
from .ranking import SENSITIVITY_MODES, sensitivity
from .results import SensitivityResult, SweepResult, to_pandas
from .sweeping import sweep

__all__ = ["compare", "Comparison", "sweep", "SweepResult", "sensitivity", "SensitivityResult", "capture",
           "Captured", "Captures", "group_stats", "group_name", "select_points", "default_forward", "first_tensor",
           "SENSITIVITY_MODES", "to_pandas"]
