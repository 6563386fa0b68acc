"""Mixed-precision search: one format per layer (or block) within a cost budget, verified by a real run.

* :mod:`.candidates` - what a unit may be given (:class:`Candidate`: an input and a weight format);
* :mod:`.costs` - what a configuration costs (``"bits"``, ``"bitops"``, a function), exactly;
* :mod:`.scores` - what is optimised (``"output_sqnr"``, ``"kl"``, a metric) and its additive loss;
* :mod:`.runs` - the reference run and the measured runs (the one-at-a-time runs replay the prefix);
* :mod:`.fisher` - ``estimate="fisher"``: every unit's loss from one backward pass per batch;
* :mod:`.solver` - the budgeted assignment (exact dynamic program, brute force, greedy);
* :mod:`.searching` - :func:`search`;
* :mod:`.result` - :class:`SearchResult` (``save``: the config and the front);
* :mod:`.plot` - the front as a PNG.

The design reason: every configuration the search prices or runs is an ordinary
:class:`~qsim_hooks.QuantConfig` (the base config plus one exact-name rule per unit), so what it reports
is what the user gets by running ``result.config``. ``qsim_hooks.search`` (the attribute of the top-level
package) is the function; this package is ``sys.modules["qsim_hooks.search"]``.
"""

from .candidates import Candidate, as_candidates
from .costs import COST_MODELS, CostModel, LayerCost, cost_model
from .result import Evaluated, SearchResult
from .scores import SCORES, Score, as_score
from .searching import ESTIMATES, config_cost, config_for, search
from .solver import Option, Solution, brute_force, front, greedy, solve

__all__ = ["search", "SearchResult", "Evaluated", "Candidate", "as_candidates", "COST_MODELS", "CostModel",
           "LayerCost", "cost_model", "config_cost", "config_for", "Option", "Solution", "solve", "brute_force",
           "greedy", "front", "SCORES", "Score", "as_score", "ESTIMATES"]
