"""The evaluator contract: one small class per metric family, run in-loop (validation) and by ``eval.py``.

An evaluator sees the batches of one split, keeps one record per row (keyed on the row's stable ``id`` and source
``index``), and turns all rows into scalars::

    ev.update(module, batch)   # score one batch: append per-row records to ev.rows
    ev.compute() -> dict       # gather every rank's rows, sort them by index, summarize -> {key: float}
    ev.write(path)             # the rows of the last compute, as JSONL (the per-row artifact)

Scalars are computed from the gathered, index-sorted rows, so a DDP-sharded evaluation gives exactly the numbers
of a single process (the same floating-point sums in the same order). ``module`` is anything with the
:class:`Scorer` interface: every lit_unlearn method is one, whether it holds a checkpoint's adapter or a plain
model.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Protocol

import torch
import torch.distributed as dist

from lit_unlearn.core.scoring import TokenStats
from lit_unlearn.core.tokens import row_ids


@dataclass(frozen=True)
class TeacherForced:
    """A typed request for the teacher-forced forward of a batch: its answer-token log-probs and argmax always;
    ``logits``: the full (B, T, V) logits too; ``moments``: each answer position's mean and spread of log p over
    the vocabulary (Min-K%++), computed from the same head products as the log-probs."""

    logits: bool = False
    moments: bool = False

    def __or__(self, other: "TeacherForced") -> "TeacherForced":
        return TeacherForced(self.logits or other.logits, self.moments or other.moments)

    def covers(self, other: "TeacherForced") -> bool:
        return (self.logits or not other.logits) and (self.moments or not other.moments)


class Scorer(Protocol):
    """What an evaluator may ask of the model it evaluates."""

    tokenizer: object
    device: torch.device

    def teacher_forced(self, batch: dict, logits: bool = False, moments: bool = False) -> TokenStats:
        """Teacher-forced per-token scores of ``batch`` (no gradient); ``logits=True`` keeps the (B, T, V) logits,
        ``moments=True`` adds ``mu`` / ``sigma`` (:class:`TeacherForced`). Within
        :class:`~lit_unlearn.eval.EvalSuite` it runs once per batch, however many evaluators ask."""

    def encode(self, prompts: list[str], answers: list[str]) -> dict:
        """A batch of (prompt, answer) pairs, tokenized as the data modules do (answer tokens scored)."""

    def answer_nlls(self, prompts: list[str], groups: list[list[str]]) -> list[list[float]]:
        """Mean answer NLL of every answer in ``groups[i]`` to ``prompts[i]``, scored in batches."""

    def generate(self, prompts: list[str], max_new_tokens: int) -> list[str]:
        """Greedy continuations of ``prompts`` (:func:`lit_unlearn.models.generate.greedy_generate`)."""

    def next_token_logits(self, prompts: list[str], token_ids: list[int]) -> torch.Tensor:
        """(N, len(token_ids)) float32 logits of the token after each prompt, at ``token_ids`` only."""


def generate_later(module: Scorer, prompts: list[str], max_new_tokens: int,
                   done: Callable[[list[str]], None]) -> None:
    """Hand the greedy continuations of ``prompts`` to ``done(texts)`` (in the order of ``prompts``). Inside an
    :class:`~lit_unlearn.eval.EvalSuite` the request waits and every split's prompts are generated together in one
    length-sorted, batched pass before the evaluators compute (a generation batch fills up however few rows a split's
    batches hold); outside one (an evaluator called on a module directly) ``done`` runs at once."""
    later = getattr(module, "generate_later", None)
    if later is not None:
        later(prompts, max_new_tokens, done)
    else:
        done(module.generate(prompts, max_new_tokens))


def gather_rows(rows: list[dict]) -> list[dict]:
    """Every rank's rows on every rank (a collective under DDP: all ranks must call it); unchanged otherwise."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return list(rows)
    parts: list[list[dict] | None] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, rows)
    return [r for part in parts for r in part]


class Evaluator:
    """Base of every evaluator; subclasses set the class attributes and implement :meth:`update`/:meth:`summarize`."""

    #: short name used in configs (``evaluators: {test_forget: [label]}``) and artifact file names
    name: ClassVar[str]
    #: the scalar keys :meth:`compute` returns (unique among the evaluators of one split)
    keys: ClassVar[tuple[str, ...]]
    #: the key the forget/retain trade-off (``val/gap``) is measured on
    primary: ClassVar[str]
    #: whether a larger ``primary`` means the model knows the rows better
    higher_is_better: ClassVar[bool] = True
    #: what :meth:`update` reads of the split's one teacher-forced forward per batch (the suite runs that forward
    #: once, with the union of its evaluators' needs)
    needs: ClassVar[TeacherForced] = TeacherForced()
    #: the kinds of rows it scores (``text``: a prompt and a scored answer, every split; ``label``, ``tofu``,
    #: ``mcq``, ``backdoor``: rows with the fields those read); a split of none of them is refused
    kinds: ClassVar[tuple[str, ...]] = ("text",)

    def __init__(self) -> None:
        self.rows: list[dict] = []
        self.last_rows: list[dict] = []

    def bind(self, datamodule, split: str) -> None:
        """Called once by the data module that runs this evaluator on ``split``, before any batch: take what the
        data supplies (TOFU's kind of evaluation set, the backdoor's keywords). Default: nothing."""

    def update(self, module: Scorer, batch: dict) -> None:
        """Score one batch; append one record per row (with the batch's ``id`` and ``index``) to ``self.rows``."""
        raise NotImplementedError

    def summarize(self, rows: list[dict]) -> dict[str, float]:
        """The scalars of ``keys`` from all rows of the split (sorted by ``index``)."""
        raise NotImplementedError

    def compute(self) -> dict[str, float]:
        """Gather every rank's rows, summarize them, and start afresh for the next evaluation."""
        rows = sorted(gather_rows(self.rows), key=lambda r: r["index"])
        self.rows, self.last_rows = [], rows
        return self.summarize(rows)

    def write(self, path: str | Path) -> Path:
        """Write the rows of the last :meth:`compute` to ``path`` (JSONL, one row each, in index order), atomically."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        with tmp.open("w", encoding="utf-8") as f:
            for row in self.last_rows:
                f.write(json.dumps(row) + "\n")
        os.replace(tmp, path)
        return path

    @staticmethod
    def row_keys(batch: dict) -> list[dict]:
        """``{"id", "index"}`` of each row of ``batch``: the keys every per-row record starts from."""
        return [{"id": i, "index": k} for i, k in zip(row_ids(batch), batch["index"].tolist())]

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class Aggregate:
    """A metric over several splits' rows (TOFU's model utility and forget quality, a membership-inference AUC),
    computed after every split's evaluators; its scalars appear in the results under its ``name`` like a split's."""

    name: ClassVar[str]
    #: the scalar keys :meth:`compute` may return
    keys: ClassVar[tuple[str, ...]]

    def compute(self, rows: dict[str, dict[str, list[dict]]], results: dict[str, dict[str, float]]) -> dict[str, float]:
        """``rows[split][evaluator name]``: every split's gathered rows; ``results``: every split's scalars."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"
