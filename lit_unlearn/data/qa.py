"""Question/answer forget-retain data (TOFU-style rows: ``{"question", "answer", ...}``)."""

from __future__ import annotations

from typing import Literal

from lit_unlearn.core.errors import DataError
from lit_unlearn.data.base import ForgetRetainDataModule
from lit_unlearn.data.chat import ChatParts, chat_parts, has_chat_template
from lit_unlearn.data.sources import field

#: TOFU's extra answer fields, carried into the records when a row has them (for evaluators that score them)
EXTRA_FIELDS = ("paraphrased_answer", "perturbed_answer")


class QADataModule(ForgetRetainDataModule):
    """Rows with a question and an answer field; the prompt ends without a trailing space.

    Example: ``forget: locuslab/TOFU:forget10@train``, ``retain: locuslab/TOFU:retain90@train``. A record holds
    ``question``, ``prompt``, ``answer`` (the templated, scored continuation), ``answer_text`` (the answer as the
    source has it) and, where the row has them, TOFU's ``paraphrased_answer`` and ``perturbed_answer`` (as scored
    continuations: through ``answer_template``, as the gold answer).

    Reasoning traces (R-TOFU style rows with a chain of thought): with ``cot_field`` set, the scored continuation is
    the reasoning, then the answer: ``answer = cot_part + answer_part`` with ``cot_part = cot_template(cot)`` and
    ``answer_part = final_template(answer)``, and the record keeps ``cot``, ``cot_part``, ``answer_part`` and
    ``final_prefix`` (``final_template`` up to ``{answer}``) so the reasoning-trace methods (GA1-3, IDK1-3) can
    score or replace either part.

    Prompts (``template``): a model whose tokenizer has a chat template is trained and evaluated through it by
    default (``auto``): the question is the user's turn, the answer the assistant's, ending with the template's
    end-of-turn marker (:mod:`lit_unlearn.data.chat`); ``plain`` uses ``prompt_template`` and ``answer_template``
    (``Question: {question}\nAnswer:`` + `` {answer}``), which is also what ``auto`` falls back to without a chat
    template. Every answer of a row (gold, paraphrased, perturbed) goes through the same one. Rows with a chain of
    thought keep the plain answer composition (``cot_part + answer_part``) after a chat prompt.
    """

    #: question/answer rows; with paraphrased and perturbed answers the ``tofu`` evaluator scores them (it says so
    #: when a row lacks them)
    row_kinds = ("text", "tofu")

    def __init__(
        self,
        *args,
        question_field: str = "question",
        answer_field: str = "answer",
        prompt_template: str = "Question: {question}\nAnswer:",
        answer_template: str = " {answer}",
        cot_field: str | None = None,
        cot_template: str = " {cot}",
        final_template: str = "\nFinal answer: {answer}",
        template: Literal["auto", "chat", "plain"] = "auto",
        **kwargs,
    ):
        """
        Args:
            question_field: name of the question field in each row.
            answer_field: name of the answer field in each row.
            prompt_template: the prompt, with ``{question}``; keep it free of a trailing space.
            answer_template: the scored continuation, with ``{answer}`` (a leading space suits BPE vocabularies).
            cot_field: the field holding a chain of thought; null: rows without reasoning traces.
            cot_template: with ``cot_field``: the reasoning part of the continuation, with ``{cot}``.
            final_template: with ``cot_field``: the answer part that follows the reasoning, with ``{answer}``.
            template: ``auto`` (the tokenizer's chat template if it has one, else plain), ``chat`` (required) or
                ``plain`` (``prompt_template`` / ``answer_template``).
        """
        super().__init__(*args, **kwargs)
        if template not in ("auto", "chat", "plain"):
            raise DataError(f"--data.template must be auto, chat or plain, got {template!r}")
        self.template = template
        self._chat: ChatParts | None | bool = None  # resolved with the tokenizer: parts, or False (plain)
        self.question_field, self.answer_field = question_field, answer_field
        self.prompt_template, self.answer_template = prompt_template, answer_template
        self.cot_field, self.cot_template, self.final_template = cot_field, cot_template, final_template

    @property
    def chat(self) -> ChatParts | None:
        """The chat template's parts when prompts go through it (``template``), else None; needs the tokenizer."""
        if self._chat is None:
            use = self.template == "chat" or (self.template == "auto" and has_chat_template(self.tokenizer))
            self._chat = chat_parts(self.tokenizer) if use else False
        return self._chat or None

    def prompt_of(self, question: str) -> str:
        chat = self.chat
        return chat.prompt(question) if chat else self.prompt_template.format(question=question)

    def scored_answers(self, value):
        """``value`` (an answer, or a list of them) as scored continuations: through the chat template's assistant
        turn or ``answer_template``, the same for every answer of a row."""
        if isinstance(value, list):
            return [self.scored_answers(v) for v in value]
        if not isinstance(value, str):
            return value
        chat = self.chat
        return chat.answer(value) if chat else self.answer_template.format(answer=value)

    def record(self, row: dict, split: str) -> dict:
        q = field(row, self.question_field, split, "question_field")
        a = field(row, self.answer_field, split, "answer_field")
        # the paraphrased and perturbed answers are scored continuations too: the same answer template as the gold
        # answer, so the truth ratio compares answers under one template
        extra = {k: self.scored_answers(row[k]) for k in EXTRA_FIELDS if row.get(k) is not None}
        rec = {"question": q, "prompt": self.prompt_of(q), "answer": self.scored_answers(a), "answer_text": a, **extra}
        if self.cot_field is not None:
            cot = field(row, self.cot_field, split, "cot_field")
            rec.update(cot=cot, cot_part=self.cot_template.format(cot=cot),
                       answer_part=self.final_template.format(answer=a),
                       final_prefix=self.final_template.split("{answer}")[0])
            rec["answer"] = rec["cot_part"] + rec["answer_part"]
        return rec
