"""The evaluators of every split of a data module, run together: what validation and ``eval.py`` call.

``EvalSuite({"forget": [AnswerEvaluator()], "test_forget": [LabelEvaluator(), AnswerEvaluator()], ...})`` routes
each batch to the evaluators of its split (``batch["split"]``), computes ``{split: {key: value}}`` (plus
``time_s``, the split's evaluation wall time on this process) and derives from
the evaluators' own declarations what the reports need: the forget/retain trade-off (:meth:`tradeoff`) and the
columns of the before/after table (:meth:`table_keys`).

Generations are pooled: an evaluator that asks for them (:func:`~lit_unlearn.eval.base.generate_later`) gets them
before the suite computes, from one length-sorted pass over every split's prompts in batches of
``generate_batch_size``, so that small splits (TOFU's four sets of a mini run, a batch of 8 rows each) decode in full
batches. Greedy decoding of a row does not depend on the other rows of its batch beyond the rounding of the matrix
shapes.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable
from pathlib import Path

from lit_unlearn.core.errors import EvalError
from lit_unlearn.eval.base import Aggregate, Evaluator, Scorer, TeacherForced


class EvalSuite:
    def __init__(self, plan: dict[str, list[Evaluator]], aggregates: list[Aggregate] | None = None,
                 tradeoff: tuple[str, str] = ("forget", "retain"), generate_batch_size: int = 32):
        """
        Args:
            plan: split -> the evaluators it runs (a split with none is not evaluated).
            aggregates: metrics over several splits, computed after the splits' evaluators.
            tradeoff: the (forget, retain) splits whose primary keys make the trade-off scalar.
            generate_batch_size: rows per batch of the pooled generation pass (module docstring).
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
        self.generate_batch_size = generate_batch_size
        # waiting generation requests: (module, split, prompts, max_new_tokens, done)
        self.pending: list[tuple[Scorer, str, list[str], int, Callable[[list[str]], None]]] = []
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
        scorer = _BatchScorer(module, batch, needs, self, split, self.plan[split])
        for ev in self.plan[split]:
            ev.update(scorer, batch)
        self.seconds[split] = self.seconds.get(split, 0.0) + time.perf_counter() - t0

    def compute(self) -> dict[str, dict[str, float]]:
        """``{split: {key: value}}`` over every split, then ``{aggregate: {key: value}}`` (a collective under DDP:
        every rank computes every split)."""
        self.run_generations()
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

    def run_generations(self) -> None:
        """Answer every waiting generation request: per (module, max_new_tokens), all prompts in one
        :meth:`generate` call, batched by length; each split is charged its share of the time."""
        pending, self.pending = self.pending, []
        groups: dict[tuple[int, int], list] = {}
        for request in pending:
            groups.setdefault((id(request[0]), request[3]), []).append(request)
        for requests in groups.values():
            module, max_new_tokens = requests[0][0], requests[0][3]
            prompts = [p for r in requests for p in r[2]]
            t0 = time.perf_counter()
            generate = module.generate
            texts = (generate(prompts, max_new_tokens, batch_size=self.generate_batch_size)
                     if "batch_size" in inspect.signature(generate).parameters else generate(prompts, max_new_tokens))
            seconds = time.perf_counter() - t0
            start = 0
            for _, split, part, _, done in requests:
                done(texts[start:start + len(part)])
                start += len(part)
                self.seconds[split] = self.seconds.get(split, 0.0) + seconds * len(part) / max(1, len(prompts))

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
    many evaluators ask, with the union of what they declared (:class:`TeacherForced`); generation requests wait
    on the suite; everything else is the module's own."""

    def __init__(self, module: Scorer, batch: dict, needs: TeacherForced, suite: EvalSuite, split: str,
                 evaluators: list[Evaluator]):
        self._module, self._batch, self._needs, self._stats = module, batch, needs, None
        self._suite, self._split, self._evaluators = suite, split, evaluators

    def forward_shared(self, evaluator: Evaluator) -> bool:
        """Whether the batch's teacher-forced forward serves more than ``evaluator``: it has run already, or another
        evaluator of the split may ask for it. False lets an evaluator that scores other answers to the same prompts
        anyway score the batch's own answers with them (TOFU's gold answer beside its paraphrased and perturbed ones)
        and skip the forward."""
        return self._stats is not None or any(ev is not evaluator for ev in self._evaluators)

    def generate_later(self, prompts: list[str], max_new_tokens: int, done: Callable[[list[str]], None]) -> None:
        """Queue a generation request on the suite (:meth:`EvalSuite.run_generations` answers it)."""
        self._suite.pending.append((self._module, self._split, list(prompts), max_new_tokens, done))

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
