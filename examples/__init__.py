"""Examples: one folder per model family INT-FP-QSim evaluated, and two real-weight evaluations.

Each ``examples/<name>/run.py`` runs as a script (``python examples/opt/run.py --smoke``) or as a
module (``python -m examples.opt.run --smoke``); what they share is in :mod:`examples.common`.
"""
