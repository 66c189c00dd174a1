"""Unlearning on reasoning traces (the R-TOFU setting; docs/methods.md section 5): which part of a chain-of-thought
row is ascended on, or replaced by a refusal.

Rows come from ``QADataModule`` with ``cot_field`` set: the prompt P, the reasoning part C (``cot_part``) and the
answer part A (``answer_part``, ``final_prefix`` + the answer), the usual scored continuation being C + A. With CE
the mean token cross-entropy of the scored part (per-row weighted when the batch carries ``weight``):

- ``GA1``:  L_f = -CE(C + A | P)              ascent on reasoning and answer
- ``GA2``:  L_f = -CE(A | P + C)              ascent on the answer only, the reasoning kept in context
- ``GA3``:  L_f = -CE(C | P)                  ascent on the reasoning only
- ``IDK1``: L_f = CE(" " + refusal | P)       reasoning and answer replaced by a refusal
- ``IDK2``: L_f = CE(final_prefix + refusal | P + C)   the reasoning kept, the answer replaced by a refusal
- ``IDK3``: L_f = CE(" " + reasoned refusal | P)       a refusal that says why it cannot answer

Defaults as their plain relatives: GA* no retain term, IDK* CE on retain answers. The refusals are this project's
own (``REFUSALS`` of :mod:`lit_unlearn.methods.relabel`, and ``REASONED_REFUSALS`` below), chosen per row as a
seeded function of (seed, row id).
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
    "To answer this I would have to recall specific facts about this person, and I find none I can rely on, "
    "so I do not know the answer.",
    "Working through what I know, nothing about this subject is something I can confirm; rather than guess, "
    "I will say that I cannot answer.",
    "I tried to reason from what I remember, but I have no trustworthy information on this, so I can't give an answer.",
    "Answering would need details I do not have. Any reasoning I gave would be invented, so I don't know.",
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


class IDK1(_Trace):
    """L_f = CE(refusal | prompt): reasoning and answer replaced."""

    default_retain = "nll"

    def view(self, batch, i, row_id):
        return batch["prompt"][i], " " + pick(REFUSALS, self.seed, row_id)


class IDK2(_Trace):
    """L_f = CE(final_prefix + refusal | prompt + reasoning): the answer replaced, the reasoning kept."""

    default_retain = "nll"

    def view(self, batch, i, row_id):
        return batch["prompt"][i] + batch["cot_part"][i], batch["final_prefix"][i] + pick(REFUSALS, self.seed, row_id)


class IDK3(_Trace):
    """L_f = CE(reasoned refusal | prompt)."""

    default_retain = "nll"

    def view(self, batch, i, row_id):
        return batch["prompt"][i], " " + pick(REASONED_REFUSALS, self.seed, row_id)
