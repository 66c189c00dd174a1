"""The data sets of Deeb & Roger, "Do Unlearning Methods Remove Information from Language Model Weights?"
(arXiv 2410.08827; files under ``data/`` of GitHub aghyad-deeb/unlearning_evaluation).

Each data set (``random_bd``: ten splits of ~157 fictitious birthdays; ``wmdp-deduped``, ``dates-years-trimmed``,
``mmlu_cats_random_trimmed``) has per split ``split_<i>.jsonl`` (four-choice questions), ``corpus_split_<i>.jsonl``
(true statements, ``{"text", "split"}``), ``whp_corpus_split_<i>.jsonl`` (wrong facts, for RIA) and
``fwf_corpus_split_<i>.jsonl`` (one fixed wrong fact per question). Forget and retain splits are chosen by index,
as the original does (``random_bd``: forget 0-4, retain 5-9):

| split | rows | trained on | evaluators |
|---|---|---|---|
| ``forget`` | ``<forget_corpus>_split_<i>`` for i in ``forget_splits`` | yes | none |
| ``retain`` | ``<retain_corpus>_split_<i>`` for i in ``retain_splits`` | yes | none |
| ``forget_mcq`` | ``split_<i>`` for i in ``forget_splits`` (each row's ``subject`` is its split) | no | ``mcq`` |
| ``retain_mcq`` | ``split_<i>`` for i in ``retain_splits`` | no | ``mcq`` |

A corpus row is scored whole (``prompt`` empty, ``answer`` the text): the NLL of every token of the statement.
``forget_corpus`` picks what the forget rows are: ``corpus`` (the true facts: GD ascends on them, the learn stage
descends), ``whp_corpus`` (RIA descends on wrong facts) or ``fwf_corpus`` (fixed wrong fact). The trade-off scalar
``val/gap`` is retain minus forget MCQ accuracy; ``mcq_acc/split_<i>`` gives each split's.

Sources: ``source`` is a name the local mirror serves (``aghyad-deeb/unlearning_evaluation``, the default: each
file is ``aghyad-deeb/unlearning_evaluation:<dataset>@<file stem>``), or a local folder holding the repository's
``data/`` layout (``<source>/<dataset>/<file>.jsonl``) - what a user with network clones.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from lit_unlearn.core.errors import DataError
from lit_unlearn.data.mcq import MCQDataModule
from lit_unlearn.data.sources import field

Corpus = Literal["corpus", "whp_corpus", "fwf_corpus"]
TRAIN = ("forget", "retain")


class DeebRogerDataModule(MCQDataModule):
    """Corpora to train on and multiple-choice splits to evaluate, chosen by split index (module docstring)."""

    tradeoff_splits = ("forget_mcq", "retain_mcq")

    def __init__(self, *args, dataset: str = "random_bd", forget_splits: list[int] | None = None,
                 retain_splits: list[int] | None = None, forget_corpus: Corpus = "corpus",
                 retain_corpus: Corpus = "corpus", source: str = "aghyad-deeb/unlearning_evaluation", **kwargs):
        """
        Args:
            dataset: the data set folder: random_bd, wmdp-deduped, dates-years-trimmed, mmlu_cats_random_trimmed.
            forget_splits: split indices to forget (default 0-4).
            retain_splits: split indices to keep (default 5-9); none may also be a forget split.
            forget_corpus: the forget rows trained on: corpus (true facts), whp_corpus (wrong facts, RIA) or
                fwf_corpus (a fixed wrong fact).
            retain_corpus: the retain rows trained on (corpus by default).
            source: ``aghyad-deeb/unlearning_evaluation`` (read from the local mirror) or a local folder with the
                repository's ``data/`` layout.
        """
        forget_splits = list(range(5)) if forget_splits is None else list(forget_splits)
        retain_splits = list(range(5, 10)) if retain_splits is None else list(retain_splits)
        both = sorted(set(forget_splits) & set(retain_splits))
        if both:
            raise DataError(f"--data.forget_splits and --data.retain_splits share split {both[0]}: a split is "
                            "either forgotten or retained")
        if not forget_splits:
            raise DataError("--data.forget_splits is empty: name at least one split to forget")
        for flag, value in (("forget_corpus", forget_corpus), ("retain_corpus", retain_corpus)):
            if value not in ("corpus", "whp_corpus", "fwf_corpus"):
                raise DataError(f"--data.{flag} must be corpus, whp_corpus or fwf_corpus, got {value!r}")

        def names(prefix: str, splits: list[int]) -> list[str]:
            files = [f"{prefix}split_{i}" for i in splits]
            if Path(source).expanduser().is_dir():
                return [str(Path(source).expanduser() / dataset / f"{f}.jsonl") for f in files]
            return [f"{source}:{dataset}@{f}" for f in files]

        eval_splits = {"forget_mcq": names("", forget_splits), **dict(kwargs.pop("eval_splits", None) or {})}
        if retain_splits:
            eval_splits["retain_mcq"] = names("", retain_splits)
        evaluators = {"forget": [], **({"retain": []} if retain_splits else {}),
                      **dict(kwargs.pop("evaluators", None) or {})}
        super().__init__(*args, forget=names(f"{forget_corpus}_", forget_splits),
                         retain=names(f"{retain_corpus}_", retain_splits) if retain_splits else None,
                         eval_splits=eval_splits, evaluators=evaluators, **kwargs)
        self.dataset, self.forget_splits, self.retain_splits = dataset, forget_splits, retain_splits
        self.forget_corpus, self.retain_corpus, self.source = forget_corpus, retain_corpus, source

    def record(self, row: dict, split: str) -> dict:
        if split in TRAIN:
            text = field(row, "text", split, f"{split}_corpus")
            return {"text": text, "prompt": "", "answer": text}
        rec = super().record(row, split)
        rec["subject"] = Path(row["_source"].split("@")[-1]).stem  # split_<i>
        return rec
