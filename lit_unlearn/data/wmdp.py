"""WMDP (Li et al. 2024, "The WMDP Benchmark: Measuring and Reducing Malicious Use With Unlearning", arXiv 2403.03218)
by hub id: hazardous knowledge to unlearn from a pretrained model, measured by multiple choice, with MMLU as the
utility kept.

Splits, read by hub id (offline from the local mirror, docs/data.md):

==============  ===============================================================  ===================================
split           source (default)                                                 rows
==============  ===============================================================  ===================================
forget          ``cais/wmdp-corpora:cyber-forget-corpus@train``                   ``text`` (trained on)
retain          ``Salesforce/wikitext:wikitext-2-raw-v1@test``                     ``text`` (trained on)
wmdp_<subset>   ``cais/wmdp:wmdp-<subset>@test`` for each of ``subsets``           ``question``, ``choices``,
                (bio 1,273, chem 408, cyber 1,987 questions)                      ``answer``: the ``mcq`` evaluator
mmlu            ``cais/mmlu:<subject>@test`` for each of ``mmlu_subjects``         the same (per-subject accuracy)
==============  ===============================================================  ===================================

The corpora follow the RMU code of the WMDP authors (``centerforaisafety/wmdp``, ``rmu/unlearn.py``, ``get_data``;
read in forks of it, the repository itself could not be fetched on this machine): a text of at most ``min_chars``
(50) characters is dropped, a longer one is cut at ``max_chars`` (2,000) characters, and the tokenized text is cut at
``max_length`` tokens (the RMU script tokenizes with truncation at 512, the shipped config's ``max_length``). Their
retain corpus is wikitext-2's test split, as here. The bio forget corpus is gated on the hub (an access form): with
access, give ``forget: cais/wmdp-bio-forget-corpus@train`` (or a local file), or a list of both forget corpora.

The Deeb & Roger deduplicated subset (785 questions with their statements) stays in ``DeebRogerDataModule``
(``configs/deeb_roger/wmdp.yaml``); it is the only WMDP data on this project's machine.
"""

from __future__ import annotations

from lit_unlearn.core.errors import DataError
from lit_unlearn.data.mcq import MCQDataModule
from lit_unlearn.data.sources import field

SUBSETS = ("bio", "chem", "cyber")
#: the MMLU subjects the WMDP paper reports beside WMDP as the knowledge kept nearest to it (its auxiliary
#: benchmarks: college biology and virology for bio, college computer science and computer security for cyber)
MMLU_NEAR = ("college_biology", "virology", "college_computer_science", "computer_security")
TRAIN = ("forget", "retain")


class WMDPDataModule(MCQDataModule):
    """WMDP by hub id (module docstring): text corpora to train on, multiple-choice splits to evaluate."""

    def __init__(self, *args, subsets: list[str] | None = None, mmlu_subjects: list[str] | None = None,
                 forget: str | list[str] = "cais/wmdp-corpora:cyber-forget-corpus@train",
                 retain: str | list[str] | None = "Salesforce/wikitext:wikitext-2-raw-v1@test",
                 wmdp_repo: str = "cais/wmdp", mmlu_repo: str = "cais/mmlu", min_chars: int = 50,
                 max_chars: int = 2000, eval_splits: dict[str, str | list[str]] | None = None,
                 evaluators: dict[str, list] | None = None, **kwargs):
        """
        Args:
            subsets: the WMDP question sets evaluated, each as split ``wmdp_<subset>``: among bio, chem, cyber
                (default bio and cyber, the two the paper unlearns).
            mmlu_subjects: the MMLU subjects of split ``mmlu`` (``cais/mmlu:<subject>@test``; default the four the
                WMDP paper reports as nearest; ``all`` is MMLU's every-subject config); an empty list: no MMLU.
            forget: the forget corpus (a hub id, a local file, or a list read as one split).
            retain: the retain corpus (RMU: wikitext-2); null trains on the forget corpus alone.
            wmdp_repo / mmlu_repo: the hub repositories of the questions.
            min_chars: corpus texts of at most this many characters are dropped (RMU: 50).
            max_chars: corpus texts are cut at this many characters (RMU: 2,000); then at ``max_length`` tokens.
            eval_splits: further evaluation-only splits, beside ``wmdp_*`` and ``mmlu``.
            evaluators: split -> evaluators, over the defaults (the corpora: none; the question splits: mcq).
        """
        subsets = ["bio", "cyber"] if subsets is None else list(subsets)
        bad = [s for s in subsets if s not in SUBSETS]
        if bad or not subsets:
            raise DataError(f"--data.subsets: {bad[0] if bad else 'nothing'!r} is not a WMDP subset; choose among "
                            f"{', '.join(SUBSETS)}")
        if min_chars < 0 or max_chars <= min_chars:
            raise DataError(f"--data.max_chars ({max_chars}) must exceed --data.min_chars ({min_chars}) >= 0")
        subjects = list(MMLU_NEAR if mmlu_subjects is None else mmlu_subjects)
        splits = {f"wmdp_{s}": f"{wmdp_repo}:wmdp-{s}@test" for s in subsets}
        if subjects:
            splits["mmlu"] = [f"{mmlu_repo}:{s}@test" for s in subjects]
        clash = sorted(set(splits) & set(eval_splits or {}))
        if clash:
            raise DataError(f"--data.eval_splits: {clash[0]!r} is a split WMDPDataModule makes from --data.subsets / "
                            "--data.mmlu_subjects; give it another name")
        super().__init__(*args, forget=forget, retain=retain, eval_splits={**splits, **(eval_splits or {})},
                         evaluators={"forget": [], **({"retain": []} if retain else {}), **(evaluators or {})},
                         **kwargs)
        self.subsets, self.mmlu_subjects = subsets, subjects
        self.min_chars, self.max_chars = min_chars, max_chars
        self.tradeoff_splits = (f"wmdp_{subsets[0]}", "mmlu" if subjects else f"wmdp_{subsets[0]}")

    def kinds_of(self, split: str) -> tuple[str, ...]:
        """The corpora hold text rows; the question splits multiple-choice ones."""
        return ("text",) if split in TRAIN else self.row_kinds

    def read_rows(self, split: str) -> list[dict]:
        rows = super().read_rows(split)
        if split not in TRAIN:
            return rows
        kept = [r for r in rows if len(str(field(r, "text", split, split))) > self.min_chars]
        if not kept:
            raise DataError(f"{split}: no text of {self._names(split)[0]} is longer than --data.min_chars "
                            f"({self.min_chars})")
        return kept

    def record(self, row: dict, split: str) -> dict:
        if split not in TRAIN:
            rec = super().record(row, split)
            rec["subject"] = row["_source"].split(":")[-1].split("@")[0]  # wmdp-bio, college_biology, ...
            return rec
        text = str(field(row, "text", split, split))[:self.max_chars]
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) > self.max_length - 2:  # the first tokens, as RMU's truncating tokenizer keeps (room for BOS/EOS)
            text = self.tokenizer.decode(ids[:self.max_length - 2])
        return {"text": text, "prompt": "", "answer": text}
