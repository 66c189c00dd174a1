"""The mean gate value of a gated intervention per split (``gate``; GRUN, docs/methods.md section 4).

- ``gate_mean`` = mean over the split's rows of the row's gate value g(h) = sigma(gate(h)), averaged over the
  row's intervened positions and layers. On forget rows it should be near 1, on retain and other rows near 0: a
  gate that opens on retain rows is a failure.

Needs a method with ``gate_values(batch)`` (``GRUN``); per-row artifact: ``id, index, gate``.
"""

from __future__ import annotations

from lit_unlearn.core.errors import EvalError
from lit_unlearn.eval.base import Evaluator, Scorer


class GateEvaluator(Evaluator):
    name = "gate"
    keys = ("gate_mean",)
    primary = "gate_mean"

    def update(self, module: Scorer, batch: dict) -> None:
        values = getattr(module, "gate_values", None)
        if values is None:
            raise EvalError("the gate evaluator needs a gated method (GRUN with a gated LoReFT adapter)")
        for key, g in zip(self.row_keys(batch), values(batch).tolist()):
            self.rows.append({**key, "gate": g})

    def summarize(self, rows: list[dict]) -> dict[str, float]:
        return {"gate_mean": sum(r["gate"] for r in rows) / max(1, len(rows))}
