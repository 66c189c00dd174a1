"""A question and its answer through a tokenizer's chat template, as text: what ``template: chat`` scores.

The prompt is the template's rendering of one user turn (the question) with the generation prompt (the assistant
header); the scored continuation is what the template writes after that header for an assistant turn holding the
answer: the answer and the end-of-turn marker (SmolLM2's ``<|im_end|>``), trailing whitespace dropped. The
end-of-turn token is part of the answer, so it is scored and trained on (the model learns to stop), as the
pad = EOS rule of docs/methods.md section 7 asks: padding is masked by position, never by token id.
open-unlearning, whose pad token is the EOS, masks every end-of-turn token instead, so its answer probabilities
leave that one token out (docs/tofu.md).

A template whose full conversation does not begin with its own generation prompt (one that writes an assistant
turn otherwise than its generation prompt, or rewrites earlier turns once an answer follows) cannot be split this
way and is refused, naming ``--data.template plain``; what a template writes before the answer inside the
assistant's turn (an empty thought block) stays part of the scored continuation. A beginning-of-sequence token the
template writes itself is dropped from the prompt text when the tokenizer adds it anyway, so it is not there twice.
"""

from __future__ import annotations

from dataclasses import dataclass

from lit_unlearn.core.errors import DataError

#: placeholders no real text contains (invisible separators around a word)
_Q, _A = "\u2063QUESTION\u2063", "\u2063ANSWER\u2063"


@dataclass(frozen=True)
class ChatParts:
    """The text around a question (``before`` + q + ``after``) and around an answer (``open`` + a + ``close``)."""

    before: str
    after: str
    open: str
    close: str

    def prompt(self, question: str) -> str:
        return f"{self.before}{question}{self.after}"

    def answer(self, answer: str) -> str:
        return f"{self.open}{answer}{self.close}"


def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def chat_parts(tokenizer) -> ChatParts:
    """The :class:`ChatParts` of ``tokenizer``'s chat template (module docstring)."""
    name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
    if not has_chat_template(tokenizer):
        raise DataError(f"--data.template chat: the tokenizer of {name} has no chat template; use "
                        "--data.template plain")
    user = [{"role": "user", "content": _Q}]
    prompt = tokenizer.apply_chat_template(user, add_generation_prompt=True, tokenize=False)
    full = tokenizer.apply_chat_template(user + [{"role": "assistant", "content": _A}], tokenize=False)
    if _Q not in prompt or not full.startswith(prompt) or _A not in full[len(prompt):]:
        raise DataError(f"--data.template chat: the chat template of {name} does not continue its generation "
                        "prompt with the assistant's turn, so prompt and answer cannot be split; use "
                        "--data.template plain")
    opened, closed = full[len(prompt):].split(_A, 1)
    before, after = prompt.split(_Q, 1)
    bos = getattr(tokenizer, "bos_token", None)
    if bos and before.startswith(bos):
        ids = tokenizer("x", add_special_tokens=True)["input_ids"]
        if ids and ids[0] == tokenizer.bos_token_id:
            before = before[len(bos):]  # the tokenizer adds it: not twice
    return ChatParts(before, after, opened, closed.rstrip())
