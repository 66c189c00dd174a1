"""Methods that descend on replaced forget answers: random labels and "I don't know" refusals.

- ``RandomLabel`` (SPUL baseline, docs/methods.md section 1): each forget row's answer becomes a word drawn from
  ``labels`` (default {neutral, unknown}); L = CE on those answers.
- ``IDK``: each forget answer becomes a refusal; L = CE(refusals) + retain_weight * CE_r. The refusal templates
  below are this project's own; ``refusals`` may point at a file with one per line (or JSONL ``{"text": ...}``),
  e.g. TOFU's ``idontknow.jsonl``.

The replacement for a row is a seeded function of (seed, row id), so it is the same every epoch and on every
rank, and a resumed run makes the same choices. The new answers are re-tokenized; every other field of the batch
(ids, weights) is kept.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from torch import Tensor

from lit_unlearn.core.errors import MethodError
from lit_unlearn.core.scoring import TokenStats
from lit_unlearn.core.tokens import row_ids
from lit_unlearn.methods.base import UnlearningMethod

REFUSALS = (
    "I'm not able to answer that.",
    "I don't have that information.",
    "That is something I cannot tell you.",
    "I have no knowledge of that.",
    "Sorry, I can't help with that question.",
    "I'm unsure; I don't know the answer.",
    "I can't recall anything about that.",
    "That isn't something I know about.",
)


def pick(options: tuple[str, ...] | list[str], seed: int, row_id: str) -> str:
    """One of ``options``, a seeded function of (seed, row id): the same in every epoch, on every rank, on resume."""
    return options[random.Random(f"{seed}:{row_id}").randrange(len(options))]


def _with_leading_space(original: str, new: str) -> str:
    return (" " + new.lstrip()) if original.startswith(" ") else new


class _ReplaceAnswers(UnlearningMethod):
    def replacements(self) -> list[str]:
        raise NotImplementedError

    def prepare_forget(self, batch: dict) -> dict:
        if "prompt" not in batch:
            raise MethodError(f"{type(self).__name__} needs the raw prompt/answer strings in forget batches")
        options = self.replacements()
        answers = [_with_leading_space(a, pick(options, self.seed, i)) for a, i in zip(batch["answer"], row_ids(batch))]
        return {**batch, **self.encode(batch["prompt"], answers)}

    def forget_loss(self, batch: dict, stats: TokenStats) -> Tensor:
        return stats.weighted_ce(batch.get("weight"))


class RandomLabel(_ReplaceAnswers):
    """L = CE(forget rows relabelled with a random word from ``labels``)."""

    default_retain = "none"

    def __init__(self, *args, labels: list[str] | None = None, **kwargs):
        """
        Args:
            labels: replacement words; default ``[neutral, unknown]``.
        """
        super().__init__(*args, **kwargs)
        self.labels = list(labels) if labels else ["neutral", "unknown"]

    def replacements(self) -> list[str]:
        return self.labels


class IDK(_ReplaceAnswers):
    """L = CE(forget prompts answered with a refusal) + retain_weight * CE_r."""

    default_retain = "nll"

    def __init__(self, *args, refusals: str | None = None, **kwargs):
        """
        Args:
            refusals: file of refusal answers (one per line, or JSONL with a ``text`` field); default: built-in.
        """
        super().__init__(*args, **kwargs)
        self.refusals_path = refusals
        self._refusals = self._read(refusals) if refusals else list(REFUSALS)

    @staticmethod
    def _read(path: str) -> list[str]:
        p = Path(path)
        if not p.is_file():
            raise MethodError(f"--model.refusals: file {p} does not exist")
        out = []
        for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
            line = line.strip()
            if not line:
                continue
            if line.startswith("{"):
                try:
                    line = json.loads(line)["text"]
                except (json.JSONDecodeError, KeyError):
                    raise MethodError(f"--model.refusals: {p} line {n} is JSON without a 'text' field") from None
            out.append(line)
        if not out:
            raise MethodError(f"--model.refusals: {p} holds no refusal")
        return out

    def replacements(self) -> list[str]:
        return self._refusals
