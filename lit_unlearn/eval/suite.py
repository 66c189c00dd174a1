"""The evaluators of every split of a data module, run together: what validation and ``eval.py`` call.

``EvalSuite({"forget": [AnswerEvaluator()], "test_forget": [LabelEvaluator(), AnswerEvaluator()], ...})`` routes
each batch to the evaluators of its split (``batch["split"]``), computes ``{split: {key: value}}`` (plus
``time_s``, the split's evaluation wall time on this process) and derives from
the evaluators' own declarations what the reports need: the forget/retain trade-off (:meth:`tradeoff`) and the
columns of the before/after table (:meth:`table_keys`).
"""

from __future__ import annotations

import time
from pathlib import Path

from lit_unlearn.core.errors import EvalError
from lit_unlearn.eval.base import Aggregate, Evaluator, Scorer, TeacherForced


class EvalSuite:
    def __init__(self, plan: dict[str, list[Evaluator]], aggregates: list[Aggregate] | None = None,
                 tradeoff: tuple[str, str] = ("forget", "retain")):
        """
        Args:
            plan: split -> the evaluators it runs (a split with none is not evaluated).
            aggregates: metrics over several splits, computed after the splits' evaluators.
            tradeoff: the (forget, retain) splits whose primary keys make the trade-off scalar.
        """
        for split, evaluators in plan.items():
            seen: dict[str, str] = {}
            for ev in evaluators:
                for key in ev.keys:
                    if key in seen:
                        raise EvalError(f"split {split!r}: evaluators {seen[key]!r} and {ev.name!r} both report "
                                        f"{key!r}; list each evaluator once")
                    seen[key] = ev.name
        self.plan = {split: evaluators for split, evaluators in plan.items() if evaluators}
        self.aggregates = list(aggregates or [])
        self.tradeoff_splits = tradeoff
        self.seconds: dict[str, float] = {}  # evaluation wall time per split since the last compute
        clash = [a.name for a in self.aggregates if a.name in self.plan]
        if clash:
            raise EvalError(f"aggregate {clash[0]!r} has the name of a split; rename the split")
        with_mia = [s for s, evs in self.plan.items() if any(ev.name == "mia" for ev in evs)]
        pairs = [(a.members, a.nonmembers) for a in self.aggregates if a.name == "mia"]
        if with_mia and not any(m in self.plan and n in self.plan for m, n in pairs):
            # per-row scores alone say nothing about membership: an AUC needs members and non-members
            raise EvalError(f"split {with_mia[0]!r} runs the mia evaluator, but no members / non-members pair is "
                            "evaluated (TOFUDataModule's forget and holdout), so no AUC can be computed: remove mia "
                            "from --data.init_args.evaluators or evaluate a holdout split")

    def update(self, module: Scorer, batch: dict) -> None:
        split = batch.get("split")
        if split not in self.plan:
            raise EvalError(f"an evaluation batch of split {split!r} has no evaluators (splits: {', '.join(self.plan)})")
        t0 = time.perf_counter()
        needs = TeacherForced()
        for ev in self.plan[split]:
            needs = needs | ev.needs
        scorer = _BatchScorer(module, batch, needs)
        for ev in self.plan[split]:
            ev.update(scorer, batch)
        self.seconds[split] = self.seconds.get(split, 0.0) + time.perf_counter() - t0

    def compute(self) -> dict[str, dict[str, float]]:
        """``{split: {key: value}}`` over every split, then ``{aggregate: {key: value}}`` (a collective under DDP:
        every rank computes every split)."""
        out: dict[str, dict[str, float]] = {}
        for split, evaluators in self.plan.items():
            out[split] = {k: float(v) for ev in evaluators for k, v in ev.compute().items()}
            # wall time of this split's evaluation on this process (the seed's runtime table, per split)
            out[split]["time_s"] = round(self.seconds.pop(split, 0.0), 3)
        rows = {split: {ev.name: ev.last_rows for ev in evaluators} for split, evaluators in self.plan.items()}
        for agg in self.aggregates:
            values = agg.compute(rows, out)
            if values:
                out[agg.name] = {k: float(v) for k, v in values.items()}
        return out

    def tradeoff(self, results: dict[str, dict[str, float]]) -> float | None:
        """How much better the model knows retain than forget rows, on the primary key of the first evaluator the
        two trade-off splits share (e.g. retain acc - forget acc; higher = better unlearning); None without both."""
        forget, retain = self.tradeoff_splits
        if forget not in results or retain not in results:
            return None
        on_retain = {ev.name for ev in self.plan.get(retain, [])}
        for ev in self.plan.get(forget, []):
            if ev.name in on_retain:
                gap = results[retain][ev.primary] - results[forget][ev.primary]
                return gap if ev.higher_is_better else -gap
        return None

    def table_keys(self) -> list[str]:
        """The scalar keys of all evaluators and aggregates, in their order, each once: the before/after table's
        columns."""
        keys = [k for evaluators in self.plan.values() for ev in evaluators for k in ev.keys]
        return list(dict.fromkeys(keys + [k for agg in self.aggregates for k in agg.keys]))

    def write(self, out_dir: str | Path) -> list[Path]:
        """Each evaluator's per-row artifact of the last compute: ``<out_dir>/<split>.<evaluator>.jsonl``."""
        return [ev.write(Path(out_dir) / f"{split}.{ev.name}.jsonl")
                for split, evaluators in self.plan.items() for ev in evaluators]


class _BatchScorer:
    """The module as the evaluators of one batch see it: its teacher-forced forward of that batch runs once, however
    many evaluators ask, with the union of what they declared (:class:`TeacherForced`); everything else is the
    module's own."""

    def __init__(self, module: Scorer, batch: dict, needs: TeacherForced):
        self._module, self._batch, self._needs, self._stats = module, batch, needs, None

    def teacher_forced(self, batch: dict, logits: bool = False, moments: bool = False):
        asked = TeacherForced(logits, moments)
        if batch is not self._batch:
            return self._module.teacher_forced(batch, logits=logits, moments=moments)
        if self._stats is None or not self._needs.covers(asked):
            self._needs = self._needs | asked  # an evaluator asked for more than it declared: once more, with it
            self._stats = self._module.teacher_forced(batch, logits=self._needs.logits, moments=self._needs.moments)
        return self._stats

    def __getattr__(self, name: str):
        return getattr(self._module, name)


def format_table(before: dict, after: dict, keys: list[str] | tuple[str, ...]) -> str:
    """A plain-text table, one line per split and metric (in ``keys`` order): ``before -> after`` where both are
    known, else the value; without any ``before`` (an evaluation, not a fit) one column, ``value``."""
    if not before:
        lines = [f"{'split':<14}{'metric':<18}{'value':>10}"]
        for split, values in after.items():
            for i, k in enumerate(k for k in keys if k in values):
                lines.append(f"{split if i == 0 else '':<14}{k:<18}{values[k]:>10.4f}")
        return "\n".join(lines)
    lines = [f"{'split':<14}{'metric':<18}{'before':>10}{'':4}{'after':>10}"]
    for split, values in after.items():
        name = split
        for k in (k for k in keys if k in values):
            b = before.get(split, {}).get(k)
            lines.append(f"{name:<14}{k:<18}" + (f"{b:>10.4f}{' -> ':4}" if b is not None else f"{'':>14}")
                         + f"{values[k]:>10.4f}")
            name = ""
    return "\n".join(lines)
