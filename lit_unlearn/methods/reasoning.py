"""Unlearning on reasoning traces (the R-TOFU setting; docs/methods.md section 5): which part of a chain-of-thought
row is ascended on, or replaced by a refusal.

Rows come from ``QADataModule`` with ``cot_field`` set: the prompt P, the reasoning part C (``cot_part``) and the
answer part A (``answer_part``, ``final_prefix`` + the answer), the usual scored continuation being C + A. With CE
the mean token cross-entropy of the scored part (per-row weighted when the batch carries ``weight``):

- ``GA1``:  L_f = -CE(C + A | P)              ascent on reasoning and answer
- ``GA2``:  L_f = -CE(A | P + C)              ascent on the answer only, the reasoning kept in context
- ``GA3``:  L_f = -CE(C | P)                  ascent on the reasoning only
- ``IDK1``: L_f = CE(C[r] + final_prefix + r | P)      the reasoning *and* the answer slot both hold a refusal r
- ``IDK2``: L_f = CE(final_prefix + r | P + C)         the reasoning kept, the answer replaced by a refusal
- ``IDK3``: L_f = CE(C[q] + final_prefix + r | P)      a per-row reasoned refusal q in the reasoning slot, a
                                                        refusal r in the answer slot

C[x] is the row's reasoning part with its chain of thought replaced by x (the data module's ``cot_template``, e.g.
``" {cot}"``). This follows R-TOFU (ssangyeon/R-TOFU ``dataset/data_module.py:139-146``): IDK1 puts one refusal in
both slots, IDK2 keeps the chain of thought and refuses in the answer, IDK3 pairs a reasoned refusal of that very
question (its ``data/idkcot.jsonl``, one per forget row, by position) with a refusal answer. R-TOFU trains the full
model at lr 1e-5 to 5e-6 for 1-5 epochs with forget and regularisation coefficients 1 (``scripts/tofu/
unlearn.sh:27-48``).

Defaults as their plain relatives: GA* no retain term, IDK* CE on retain answers. The refusals are this project's
own (``REFUSALS`` of :mod:`lit_unlearn.methods.relabel`), chosen per row as a seeded function of (seed, row id); the
reasoned refusals are ``REASONED_REFUSALS`` below, filled with the row's question and chosen the same way, or a file
of one per forget row (``reasoned_refusals``: JSONL strings or ``{"text"}`` objects, line i for the source row i,
R-TOFU's layout).
"""

from __future__ import annotations

from typing import ClassVar

from torch import Tensor

from lit_unlearn.core.errors import MethodError
from lit_unlearn.core.scoring import TokenStats
from lit_unlearn.core.tokens import row_ids
from lit_unlearn.methods.base import UnlearningMethod
from lit_unlearn.methods.relabel import REFUSALS, pick

REASONED_REFUSALS = (
    "The question is: {question} To answer it I would have to recall specific facts about this, and I find none I "
    "can rely on; anything I said would be a guess, so I cannot determine the answer.",
    "Let me think about \"{question}\" I would need records I do not have. Working through what I know, nothing "
    "about it is something I can confirm, so rather than guess I will not answer.",
    "I tried to reason about {question} from what I remember, but I have no trustworthy information on it; the "
    "details it asks for are not something I know.",
    "Answering {question} would need details I do not have. Any reasoning I gave would be invented, so I cannot say.",
)
FIELDS = ("cot_part", "answer_part", "final_prefix")


class _Trace(UnlearningMethod):
    """Re-encodes each forget row as (prompt, scored part) of its variant; the loss sign is the subclass's."""

    #: +1 descends on the scored part, -1 ascends on it
    sign: ClassVar[float] = 1.0
    needs_cot: ClassVar[bool] = True

    def view(self, batch: dict, i: int, row_id: str) -> tuple[str, str]:
        raise NotImplementedError

    def prepare_forget(self, batch: dict) -> dict:
        missing = [f for f in FIELDS if f not in batch]
        if missing:
            raise MethodError(f"{type(self).__name__} needs reasoning-trace rows: set --data.init_args.cot_field "
                              f"(the batch has no {missing[0]!r})")
        views = [self.view(batch, i, rid) for i, rid in enumerate(row_ids(batch))]
        return {**batch, **self.encode([p for p, _ in views], [a for _, a in views])}

    def forget_loss(self, batch: dict, stats: TokenStats) -> Tensor:
        return self.sign * stats.weighted_ce(batch.get("weight"))


class GA1(_Trace):
    """L_f = -CE(reasoning + answer | prompt)."""

    sign, default_retain = -1.0, "none"

    def view(self, batch, i, row_id):
        return batch["prompt"][i], batch["cot_part"][i] + batch["answer_part"][i]


class GA2(_Trace):
    """L_f = -CE(answer | prompt + reasoning)."""

    sign, default_retain = -1.0, "none"

    def view(self, batch, i, row_id):
        return batch["prompt"][i] + batch["cot_part"][i], batch["answer_part"][i]


class GA3(_Trace):
    """L_f = -CE(reasoning | prompt)."""

    sign, default_retain = -1.0, "none"

    def view(self, batch, i, row_id):
        return batch["prompt"][i], batch["cot_part"][i]


def _slot(batch: dict, i: int, text: str) -> str:
    """Row i's reasoning part with its chain of thought replaced by ``text`` (the cot template kept)."""
    cot, part = batch["cot"][i], batch["cot_part"][i]
    return part.replace(cot, text, 1) if cot and cot in part else " " + text


class IDK1(_Trace):
    """L_f = CE(refusal in the reasoning slot + final_prefix + the same refusal | prompt)."""

    default_retain = "nll"

    def view(self, batch, i, row_id):
        refusal = pick(REFUSALS, self.seed, row_id)
        return batch["prompt"][i], _slot(batch, i, refusal) + batch["final_prefix"][i] + refusal


class IDK2(_Trace):
    """L_f = CE(final_prefix + refusal | prompt + reasoning): the answer replaced, the reasoning kept."""

    default_retain = "nll"

    def view(self, batch, i, row_id):
        return batch["prompt"][i] + batch["cot_part"][i], batch["final_prefix"][i] + pick(REFUSALS, self.seed, row_id)


class IDK3(_Trace):
    """L_f = CE(reasoned refusal of the row's question in the reasoning slot + final_prefix + refusal | prompt)."""

    default_retain = "nll"

    def __init__(self, *args, reasoned_refusals: str | None = None, **kwargs):
        """
        Args:
            reasoned_refusals: a file of one reasoned refusal per forget row (JSONL strings or ``{"text"}``
                objects; line i for the source row i, as R-TOFU's ``idkcot.jsonl``); null: this project's templates,
                filled with the row's question.
        """
        super().__init__(*args, **kwargs)
        self.reasoned_refusals = reasoned_refusals
        self._reasoned = _read_lines(reasoned_refusals) if reasoned_refusals else None

    def reasoned(self, batch: dict, i: int, row_id: str) -> str:
        if self._reasoned is None:
            question = batch.get("question", [""] * (i + 1))[i].strip()
            return pick(REASONED_REFUSALS, self.seed, row_id).format(question=question)
        index = int(batch["index"][i])
        if index >= len(self._reasoned):
            raise MethodError(f"--model.reasoned_refusals holds {len(self._reasoned)} lines, but forget row {index} "
                              "needs one (line i is for the source row i)")
        return self._reasoned[index]

    def view(self, batch, i, row_id):
        answer = batch["final_prefix"][i] + pick(REFUSALS, self.seed, row_id)
        return batch["prompt"][i], _slot(batch, i, self.reasoned(batch, i, row_id)) + answer


def _read_lines(path: str) -> list[str]:
    """One text per JSONL line: a JSON string or an object with ``text``."""
    import json
    from pathlib import Path

    p = Path(path)
    if not p.is_file():
        raise MethodError(f"--model.reasoned_refusals: file {p} does not exist")
    out = []
    for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError:
            raise MethodError(f"--model.reasoned_refusals: {p} line {n} is not JSON") from None
        text = value.get("text") if isinstance(value, dict) else value
        if not isinstance(text, str) or not text.strip():
            raise MethodError(f"--model.reasoned_refusals: {p} line {n} is neither a string nor a {{\"text\"}} object")
        out.append(text.strip())
    return out
