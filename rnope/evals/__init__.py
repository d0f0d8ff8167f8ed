"""Evaluations: NIAH grid, RULER synthetic tasks, perplexity vs length, MQAR, lm-eval adapter.

Library use (the ``rnope eval`` command is a thin layer over this)::

    from rnope.evals import load_predictors, niah, write_outputs
    models = load_predictors(["runs/swa", "runs/rope"])
    doc = niah.evaluate(models, lengths=[256, 512, 1024], depths="0:100:10", samples=5)
    write_outputs("out/", niah.outputs(doc))

Every evaluation module has ``evaluate(...) -> dict`` (the JSON document) and
``outputs(doc) -> {file name: content}``; :func:`write_outputs` writes them atomically.
Text evaluations talk to a :class:`Predictor` (``ModelPredictor`` for rnope models, or any test
double with the same methods).
"""

from .report import versions, write_outputs
from .predictor import ModelPredictor, Predictor, load_predictor, load_predictors

__all__ = ["ModelPredictor", "Predictor", "load_predictor", "load_predictors", "versions", "write_outputs"]
