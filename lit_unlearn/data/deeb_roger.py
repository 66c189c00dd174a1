"""The data sets of Deeb & Roger, "Do Unlearning Methods Remove Information from Language Model Weights?"
(arXiv 2410.08827; files under ``data/`` of GitHub aghyad-deeb/unlearning_evaluation).

Each data set has per split a file of four-choice questions and three corpora: true statements (``corpus_``),
wrong facts (``whp_corpus_``, for RIA) and one fixed wrong fact per question (``fwf_corpus_``). Splits are chosen
by index, as the original does:

- ``random_bd`` (ten splits of ~157 fictitious birthdays; learned first, then forget 0-4, retain 5-9),
  ``wmdp-deduped`` (five splits), ``dates-years-trimmed``: ``split_<i>.jsonl``, ``<corpus>_split_<i>.jsonl``;
- ``mmlu_cats_random_trimmed`` (MMLU by category): index i names the category ``MMLU_CATEGORIES[i]`` - 0-4 the
  forget categories of the paper (STEM, business, chemistry, culture, geography), 5-9 its retain categories
  (health, history, law, philosophy, social sciences) - in files ``mmlu_<category>.jsonl``,
  ``<corpus>_mmlu_<category>.jsonl``.

| split | rows | trained on | evaluators |
|---|---|---|---|
| ``forget`` | the ``forget_corpus`` of each of ``forget_splits`` | yes | none |
| ``retain`` | the ``retain_corpus`` of each of ``retain_splits`` | yes | none |
| ``forget_mcq`` | the questions of ``forget_splits`` (a row's ``subject``: its file, e.g. ``split_3``) | no | ``mcq`` |
| ``retain_mcq`` | the questions of ``retain_splits`` | no | ``mcq`` |
| ``heldout_mcq`` | the questions of ``heldout_splits`` (RTT's held-out split V; only when given) | no | ``mcq`` |

A corpus row is scored whole (``corpus_loss: text``: ``prompt`` empty, ``answer`` the text, the NLL of every token of
the statement) or on its last number alone (``corpus_loss: number``: ``prompt`` the text before it, ``answer`` the
number; the text after it is dropped, which leaves the number's NLL unchanged under causal attention). ``number`` is
the original's loss on the random birthdays (``conf/random_bd.yaml:70``, the NUMBER loss: the mean NLL of the
year's tokens, found as the last run of digits, ``unlearn_corpus.py:282-292``), for GD, RIA and the retain term
alike; ``configs/deeb_roger/base.yaml`` sets it. Ascending on the whole statement instead pushes up the NLL of
"was born in" too, which is most of what collapsed GD on that data (docs/results/relearning.md).
``forget_corpus`` picks what the forget rows are: ``corpus`` (the true facts: GD ascends on them), ``whp_corpus``
(RIA descends on wrong facts), ``fwf_corpus`` (fixed wrong fact) or ``mcq``: the questions themselves in training
form, ``{question}\\nA. c0 .. D. c3\\nAnswer: X. {choice}`` - what the learn stage and the relearning attack (RTT)
train on. ``mcq_loss`` says which tokens of that form are scored: ``text`` (all of them; docs/methods.md's RTT
loss) or ``answer`` (``" X. {choice}"`` only: the original's LETTER_ANSWER loss, which its learn stage uses).

``questions_per_split`` keeps the first N questions of each split file (CPU-sized runs) and, in the corpora, the
statements about those questions: the rows whose ``original_question`` is one of them, or - in a corpus without
that field (``random_bd``'s true statements, three per question in question order) - the first N * (corpus rows
/ questions) rows. Every stage of a run (learn, unlearn, RTT) that sets the same N sees the same facts.

The trade-off scalar ``val/gap`` is retain minus forget MCQ accuracy; ``mcq_acc/split_<i>`` gives each split's.

Sources: ``source`` is a name the local mirror serves (``aghyad-deeb/unlearning_evaluation``, the default: each
file is ``aghyad-deeb/unlearning_evaluation:<dataset>@<file stem>``), or a local folder holding the repository's
``data/`` layout (``<source>/<dataset>/<file>.jsonl``) - what a user with network clones.
"""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path
from typing import Literal

from lit_unlearn.core.errors import DataError
from lit_unlearn.data.mcq import MCQDataModule
from lit_unlearn.data.sources import field, resolve

Corpus = Literal["corpus", "whp_corpus", "fwf_corpus", "mcq"]
CORPORA = ("corpus", "whp_corpus", "fwf_corpus", "mcq")
TRAIN = ("forget", "retain")
#: the ten categories of ``mmlu_cats_random_trimmed``, by split index: 0-4 forgotten, 5-9 retained in the paper
MMLU_CATEGORIES = ("STEM", "business", "chemistry", "culture", "geography",
                   "health", "history", "law", "philosophy", "social sciences")


def split_file(dataset: str, corpus: str, index: int) -> str:
    """The file stem of split ``index`` of ``dataset``: its questions (``corpus="mcq"``) or one of its corpora."""
    if dataset == "mmlu_cats_random_trimmed":
        if not 0 <= index < len(MMLU_CATEGORIES):
            raise DataError(f"--data.*_splits: {dataset} has splits 0-{len(MMLU_CATEGORIES) - 1} (one per MMLU "
                            f"category), got {index}")
        stem = f"mmlu_{MMLU_CATEGORIES[index]}"
    else:
        stem = f"split_{index}"
    return stem if corpus == "mcq" else f"{corpus}_{stem}"


class DeebRogerDataModule(MCQDataModule):
    """Corpora to train on and multiple-choice splits to evaluate, chosen by split index (module docstring)."""

    tradeoff_splits = ("forget_mcq", "retain_mcq")

    def __init__(self, *args, dataset: str = "random_bd", forget_splits: list[int] | None = None,
                 retain_splits: list[int] | None = None, heldout_splits: list[int] | None = None,
                 forget_corpus: Corpus = "corpus", retain_corpus: Corpus = "corpus",
                 mcq_loss: Literal["text", "answer"] = "text", corpus_loss: Literal["text", "number"] = "text",
                 questions_per_split: int | None = None,
                 source: str = "aghyad-deeb/unlearning_evaluation", retain_dataset: str | None = None,
                 eval_splits: dict[str, str | list[str]] | None = None,
                 evaluators: dict[str, list[str]] | None = None, **kwargs):
        """
        Args:
            dataset: the data set folder: random_bd, wmdp-deduped, dates-years-trimmed, mmlu_cats_random_trimmed.
            forget_splits: split indices to forget (default 0-4).
            retain_splits: split indices to keep (default 5-9); none may also be a forget split.
            heldout_splits: split indices evaluated only, as ``heldout_mcq`` (RTT's V); disjoint from the others.
            forget_corpus: the forget rows trained on: corpus (true facts), whp_corpus (wrong facts, RIA),
                fwf_corpus (a fixed wrong fact) or mcq (the questions with their answers: learn stage, RTT).
            retain_corpus: the retain rows trained on (corpus by default; the same choices).
            mcq_loss: with an ``mcq`` corpus, the tokens scored: text (all) or answer (`` X. {choice}`` only).
            corpus_loss: with a statement corpus, the tokens scored: text (all) or number (the last number of each
                statement: the year of a random birthday).
            questions_per_split: keep the first N questions of each split and their statements (CPU-sized runs).
            source: ``aghyad-deeb/unlearning_evaluation`` (read from the local mirror) or a local folder with the
                repository's ``data/`` layout.
            retain_dataset: the data set of the retain splits when it is another one (the WMDP setting retains
                MMLU categories: ``dataset: wmdp-deduped``, ``retain_dataset: mmlu_cats_random_trimmed``,
                ``retain_splits: [5, 6, 7, 8, 9]``); null: ``dataset``.
            eval_splits: further evaluation-only splits (e.g. MMLU subjects), beside the ``*_mcq`` ones.
            evaluators: split -> evaluator names, over the defaults (the corpora: none; the ``*_mcq``: mcq).
        """
        forget_splits = list(range(5)) if forget_splits is None else list(forget_splits)
        retain_splits = list(range(5, 10)) if retain_splits is None else list(retain_splits)
        heldout_splits = list(heldout_splits or [])
        for a, b, sa, sb in ((forget_splits, retain_splits, "forget", "retain"),
                             (heldout_splits, forget_splits, "heldout", "forget"),
                             (heldout_splits, retain_splits, "heldout", "retain")):
            both = sorted(set(a) & set(b))
            if both and (retain_dataset in (None, dataset) or "retain" not in (sa, sb)):
                raise DataError(f"--data.{sa}_splits and --data.{sb}_splits share split {both[0]}: a split has one "
                                "role")
        if not forget_splits:
            raise DataError("--data.forget_splits is empty: name at least one split to forget")
        for flag, value in (("forget_corpus", forget_corpus), ("retain_corpus", retain_corpus)):
            if value not in CORPORA:
                raise DataError(f"--data.{flag} must be one of {', '.join(CORPORA)}, got {value!r}")
        if mcq_loss not in ("text", "answer"):
            raise DataError(f"--data.mcq_loss must be text or answer, got {mcq_loss!r}")
        if corpus_loss not in ("text", "number"):
            raise DataError(f"--data.corpus_loss must be text or number, got {corpus_loss!r}")
        if questions_per_split is not None and questions_per_split < 1:
            raise DataError(f"--data.questions_per_split must be >= 1, got {questions_per_split}")
        local = Path(source).expanduser()
        self._questions_of: dict[str, str] = {}  # a corpus file's name -> the name of its split's question file

        def names(corpus: str, splits: list[int], data: str = dataset) -> list[str]:
            out = []
            for i in splits:
                stems = split_file(data, corpus, i), split_file(data, "mcq", i)
                name, questions = (str(local / data / f"{s}.jsonl") if local.is_dir() else f"{source}:{data}@{s}"
                                   for s in stems)
                self._questions_of[name] = questions
                out.append(name)
            return out

        mcq_splits = {"forget_mcq": names("mcq", forget_splits)}
        if retain_splits:
            mcq_splits["retain_mcq"] = names("mcq", retain_splits, retain_dataset or dataset)
        if heldout_splits:
            mcq_splits["heldout_mcq"] = names("mcq", heldout_splits)
        retain = names(retain_corpus, retain_splits, retain_dataset or dataset) if retain_splits else None
        super().__init__(*args, forget=names(forget_corpus, forget_splits), retain=retain,
                         eval_splits={**mcq_splits, **(eval_splits or {})},
                         evaluators={"forget": [], **({"retain": []} if retain_splits else {}), **(evaluators or {})},
                         **kwargs)
        self.dataset, self.retain_dataset = dataset, retain_dataset or dataset
        self.forget_splits, self.retain_splits = forget_splits, retain_splits
        self.heldout_splits, self.questions_per_split, self.mcq_loss = heldout_splits, questions_per_split, mcq_loss
        self.corpus_loss = corpus_loss
        self.forget_corpus, self.retain_corpus, self.source = forget_corpus, retain_corpus, source

    def kinds_of(self, split: str) -> tuple[str, ...]:
        """Corpus splits hold text rows; the question splits multiple-choice ones."""
        return self.row_kinds if self.corpus_of(split) == "mcq" else ("text",)

    def corpus_of(self, split: str) -> str:
        """What the rows of ``split`` are: ``mcq`` for the evaluation splits, else the configured corpus."""
        return {"forget": self.forget_corpus, "retain": self.retain_corpus}.get(split, "mcq")

    def read_rows(self, split: str) -> list[dict]:
        rows = super().read_rows(split)
        n = self.questions_per_split
        if n is None:
            return rows
        by_source: dict[str, list[dict]] = defaultdict(list)
        for r in rows:
            by_source[r["_source"]].append(r)
        kept = []
        for name, part in by_source.items():
            questions_file = self._questions_of.get(name, name)
            if questions_file == name:  # a question file: its first n rows
                kept += part[:n]
                continue
            questions = resolve(questions_file, split).read(split)
            if "original_question" in part[0]:
                keep = {q.get("question") for q in questions[:n]}
                kept += [r for r in part if r.get("original_question") in keep]
            elif len(part) % len(questions) == 0:
                kept += part[:n * (len(part) // len(questions))]
            else:
                raise DataError(f"{split}: {name} has {len(part)} statements for {len(questions)} questions and no "
                                "original_question field: --data.questions_per_split cannot tell which are whose")
        return kept

    def record(self, row: dict, split: str) -> dict:
        corpus = self.corpus_of(split)
        if corpus != "mcq":
            text = field(row, "text", split, f"{split}_corpus")
            if self.corpus_loss == "text":
                return {"text": text, "prompt": "", "answer": text}
            numbers = list(re.finditer(r"\d+", text))
            if not numbers:
                raise DataError(f"{split}: {row['_where']} has no number to score (--data.corpus_loss number scores "
                                "each statement's last number; use text for this corpus)")
            last = numbers[-1]
            return {"text": text, "prompt": text[:last.start()], "answer": text[last.start():last.end()]}
        rec = super().record(row, split)
        rec["subject"] = Path(row["_source"].split("@")[-1]).stem  # split_<i> or mmlu_<category>
        if split in TRAIN and self.mcq_loss == "text":
            rec.update(prompt="", answer=rec["prompt"] + rec["answer"])
        return rec
