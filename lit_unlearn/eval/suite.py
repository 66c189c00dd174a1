"""The evaluators of every split of a data module, run together: what validation and ``eval.py`` call.

``EvalSuite({"forget": [AnswerEvaluator()], "test_forget": [LabelEvaluator(), AnswerEvaluator()], ...})`` routes
each batch to the evaluators of its split (``batch["split"]``), computes ``{split: {key: value}}`` and derives from
the evaluators' own declarations what the reports need: the forget/retain trade-off (:meth:`tradeoff`) and the
columns of the before/after table (:meth:`table_keys`).
"""

from __future__ import annotations

from pathlib import Path

from lit_unlearn.core.errors import EvalError
from lit_unlearn.eval.base import Evaluator, Scorer


class EvalSuite:
    def __init__(self, plan: dict[str, list[Evaluator]]):
        for split, evaluators in plan.items():
            seen: dict[str, str] = {}
            for ev in evaluators:
                for key in ev.keys:
                    if key in seen:
                        raise EvalError(f"split {split!r}: evaluators {seen[key]!r} and {ev.name!r} both report "
                                        f"{key!r}; list each evaluator once")
                    seen[key] = ev.name
        self.plan = plan

    def update(self, module: Scorer, batch: dict) -> None:
        split = batch.get("split")
        if split not in self.plan:
            raise EvalError(f"an evaluation batch of split {split!r} has no evaluators (splits: {', '.join(self.plan)})")
        scorer = _BatchScorer(module, batch)
        for ev in self.plan[split]:
            ev.update(scorer, batch)

    def compute(self) -> dict[str, dict[str, float]]:
        """``{split: {key: value}}`` over every split (a collective under DDP: every rank computes every split)."""
        out: dict[str, dict[str, float]] = {}
        for split, evaluators in self.plan.items():
            out[split] = {k: float(v) for ev in evaluators for k, v in ev.compute().items()}
        return out

    def tradeoff(self, results: dict[str, dict[str, float]]) -> float | None:
        """How much better the model knows retain than forget rows, on the primary key of the first evaluator the
        two splits share (e.g. retain acc - forget acc; higher = better unlearning); None without both splits."""
        if "forget" not in results or "retain" not in results:
            return None
        retain = {ev.name for ev in self.plan.get("retain", [])}
        for ev in self.plan.get("forget", []):
            if ev.name in retain:
                gap = results["retain"][ev.primary] - results["forget"][ev.primary]
                return gap if ev.higher_is_better else -gap
        return None

    def table_keys(self) -> list[str]:
        """The scalar keys of all evaluators, in evaluator order, each once: the columns of the before/after table."""
        return list(dict.fromkeys(k for evaluators in self.plan.values() for ev in evaluators for k in ev.keys))

    def write(self, out_dir: str | Path) -> list[Path]:
        """Each evaluator's per-row artifact of the last compute: ``<out_dir>/<split>.<evaluator>.jsonl``."""
        return [ev.write(Path(out_dir) / f"{split}.{ev.name}.jsonl")
                for split, evaluators in self.plan.items() for ev in evaluators]


class _BatchScorer:
    """The module as the evaluators of one batch see it: its teacher-forced forward of that batch runs once, however
    many evaluators ask; everything else is the module's own."""

    def __init__(self, module: Scorer, batch: dict):
        self._module, self._batch, self._stats = module, batch, None

    def teacher_forced(self, batch: dict):
        if batch is not self._batch:
            return self._module.teacher_forced(batch)
        if self._stats is None:
            self._stats = self._module.teacher_forced(batch)
        return self._stats

    def __getattr__(self, name: str):
        return getattr(self._module, name)


def format_table(before: dict, after: dict, keys: list[str] | tuple[str, ...]) -> str:
    """A plain-text table of ``keys`` per split, ``before -> after`` where both are known."""
    lines = [f"{'split':<14}" + "".join(f"{k:>18}" for k in keys)]
    for split in after:
        cells = []
        for k in keys:
            a, b = after[split].get(k), before.get(split, {}).get(k)
            cells.append("" if a is None else f"{b:.3f} -> {a:.3f}" if b is not None else f"{a:.3f}")
        lines.append(f"{split:<14}" + "".join(f"{c:>18}" for c in cells))
    return "\n".join(lines)
