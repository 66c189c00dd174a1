"""Multiple-choice question sets: MMLU, WMDP and the Deeb & Roger ``split_*`` files.

Rows are ``{"question", "choices": [c0, c1, c2, c3], "answer": 0-3}`` (the layout of ``cais/mmlu``, ``cais/wmdp``
and the Deeb & Roger files; MMLU's CSV columns ``choice0..choice3`` are read as the list, an answer may also be
a letter ``"A"``-``"D"``). Each row becomes

- ``prompt``: ``{question}\\nA. c0\\nB. c1\\nC. c2\\nD. c3\\nAnswer:`` (the 0-shot prompt of docs/methods.md);
- ``answer``: ``" X. {choice}"``, the gold letter and its text: the continuation a relearning attack (RTT)
  trains on; the ``answer`` evaluator scores it teacher-forced;
- ``gold`` (the answer index), ``choices`` and, with ``subject_field``, ``subject``.

Every split runs the ``mcq`` evaluator (letter-logit accuracy, plain and calibrated; ``lit_unlearn.eval.mcq``).
"""

from __future__ import annotations

from lit_unlearn.core.errors import DataError
from lit_unlearn.data.base import ForgetRetainDataModule
from lit_unlearn.data.sources import field
from lit_unlearn.eval.mcq import LETTERS, PROMPT_END


def mcq_prompt(question: str, choices: list[str]) -> str:
    """The 0-shot multiple-choice prompt; it ends with ``"Answer:"``, no trailing space."""
    lines = [question, *(f"{letter}. {c}" for letter, c in zip(LETTERS, choices)), PROMPT_END]
    return "\n".join(lines)


class MCQDataModule(ForgetRetainDataModule):
    """Multiple-choice rows (module docstring); ``forget`` / ``retain`` / ``eval_splits`` as in every data module.

    Example, MMLU's college biology as an evaluation-only split of a run:
    ``eval_splits: {mmlu_bio: cais/mmlu:college_biology@test}``.
    """

    default_evaluators = ("mcq",)
    row_kinds = ("text", "mcq")

    def __init__(self, *args, question_field: str = "question", choices_field: str = "choices",
                 answer_field: str = "answer", subject_field: str | None = None, **kwargs):
        """
        Args:
            question_field: the question field of each row.
            choices_field: the field holding the four choices (a list); rows without it may have ``choice0`` ..
                ``choice3`` columns instead (MMLU's CSV files).
            answer_field: the gold choice: an index 0-3 or a letter A-D.
            subject_field: a field naming each row's subject (e.g. ``subject`` in ``cais/mmlu``): per-subject
                accuracy; null: none.

        Which token of each letter the ``mcq`` evaluator reads is its own argument, ``letters`` (``bare``: ``"A"``,
        the Deeb & Roger rule; ``spaced``: ``" A"``, lm-eval's), e.g. ``evaluator_args: {mcq: {letters: spaced}}``
        (lit_unlearn/eval/mcq.py).
        """
        super().__init__(*args, **kwargs)
        self.question_field, self.choices_field = question_field, choices_field
        self.answer_field, self.subject_field = answer_field, subject_field

    def record(self, row: dict, split: str) -> dict:
        where = row.get("_where", split)
        q = field(row, self.question_field, split, "question_field")
        if self.choices_field in row:
            choices = row[self.choices_field]
        elif "choice0" in row:
            choices = [row.get(f"choice{i}") for i in range(len(LETTERS)) if f"choice{i}" in row]
        else:
            choices = field(row, self.choices_field, split, "choices_field")  # names the missing field
        if not isinstance(choices, (list, tuple)) or len(choices) != len(LETTERS):
            n = len(choices) if isinstance(choices, (list, tuple)) else type(choices).__name__
            raise DataError(f"{split}: {where} has {n} choices in {self.choices_field!r}; multiple-choice rows need "
                            f"exactly {len(LETTERS)}")
        choices = [str(c) for c in choices]
        gold = self._gold(field(row, self.answer_field, split, "answer_field"), split, where)
        rec = {"question": q, "choices": choices, "gold": gold, "prompt": mcq_prompt(q, choices),
               "answer": f" {LETTERS[gold]}. {choices[gold]}"}
        if self.subject_field is not None:
            rec["subject"] = str(field(row, self.subject_field, split, "subject_field"))
        return rec

    def _gold(self, value: str, split: str, where: str) -> int:
        if value.strip().upper() in LETTERS:
            return LETTERS.index(value.strip().upper())
        gold = int(value) if value.strip().isdigit() else None
        if gold is None or not 0 <= gold < len(LETTERS):
            raise DataError(f"{split}: {where} has answer {value!r} in {self.answer_field!r}; expected an index "
                            f"0-{len(LETTERS) - 1} or a letter {'/'.join(LETTERS)}")
        return gold
