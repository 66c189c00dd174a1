"""Question/answer forget-retain data (TOFU-style JSONL: one ``{"question", "answer"}`` object per line)."""

from __future__ import annotations

from lit_unlearn.data.base import ForgetRetainDataModule
from lit_unlearn.data.sources import field


class QADataModule(ForgetRetainDataModule):
    """Rows with a question and an answer field; the prompt ends without a trailing space.

    Example: ``forget: ../shared/data/tofu/forget10.jsonl``, ``retain: ../shared/data/tofu/retain90.jsonl``.
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

    def format_row(self, row: dict, role: str) -> tuple[str, str]:
        q = field(row, self.question_field, role, "question_field")
        a = field(row, self.answer_field, role, "answer_field")
        return self.prompt_template.format(question=q), self.answer_template.format(answer=a)
