"""Question/answer forget-retain data (TOFU-style rows: ``{"question", "answer", ...}``)."""

from __future__ import annotations

from lit_unlearn.data.base import ForgetRetainDataModule
from lit_unlearn.data.sources import field

#: TOFU's extra answer fields, carried into the records when a row has them (for evaluators that score them)
EXTRA_FIELDS = ("paraphrased_answer", "perturbed_answer")


class QADataModule(ForgetRetainDataModule):
    """Rows with a question and an answer field; the prompt ends without a trailing space.

    Example: ``forget: locuslab/TOFU:forget10@train``, ``retain: locuslab/TOFU:retain90@train``. A record holds
    ``question``, ``prompt``, ``answer`` (the templated, scored continuation) and, where the row has them, TOFU's
    ``paraphrased_answer`` and ``perturbed_answer``.
    """

    def __init__(
        self,
        *args,
        question_field: str = "question",
        answer_field: str = "answer",
        prompt_template: str = "Question: {question}\nAnswer:",
        answer_template: str = " {answer}",
        **kwargs,
    ):
        """
        Args:
            question_field: name of the question field in each row.
            answer_field: name of the answer field in each row.
            prompt_template: the prompt, with ``{question}``; keep it free of a trailing space.
            answer_template: the scored continuation, with ``{answer}`` (a leading space suits BPE vocabularies).
        """
        super().__init__(*args, **kwargs)
        self.question_field, self.answer_field = question_field, answer_field
        self.prompt_template, self.answer_template = prompt_template, answer_template

    def record(self, row: dict, split: str) -> dict:
        q = field(row, self.question_field, split, "question_field")
        a = field(row, self.answer_field, split, "answer_field")
        extra = {k: row[k] for k in EXTRA_FIELDS if row.get(k) is not None}
        return {"question": q, "prompt": self.prompt_template.format(question=q),
                "answer": self.answer_template.format(answer=a), **extra}
