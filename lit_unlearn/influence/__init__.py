"""Influence of training rows on test rows (RapidIn: TracIn-style dot products of compressed per-sample gradients)
and the influence-to-weights mapping of RapidUn (docs/methods.md, section 3).

- :mod:`~lit_unlearn.influence.gradients`: per-sample gradients of the trainable linear weights, batched;
- :mod:`~lit_unlearn.influence.rapidgrad`: RapidGrad compression to K dimensions;
- :mod:`~lit_unlearn.influence.tracin`: top-k influences per test row, streamed over chunks on disk;
- :mod:`~lit_unlearn.influence.weights`: the four views -> per-row weights (``{"index", "weight"}`` JSONL);
- :mod:`~lit_unlearn.influence.tokens`: token scores by gradient alignment and the token selection of TNPO.

The ``predict`` stages that run them on a model are in :mod:`lit_unlearn.predict_stages`.
"""

from lit_unlearn.influence.gradients import per_sample_gradients
from lit_unlearn.influence.rapidgrad import RapidGrad
from lit_unlearn.influence.tracin import TopK, top_influences
from lit_unlearn.influence.weights import influence_weights, loss_weights, view_scores

__all__ = ["RapidGrad", "TopK", "influence_weights", "loss_weights", "per_sample_gradients", "top_influences",
           "view_scores"]
