"""MUSE (Shi et al. 2024, "MUSE: Machine Unlearning Six-Way Evaluation for Language Models", arXiv 2407.06460; hub
``muse-bench/MUSE-News`` and ``muse-bench/MUSE-Books``): unlearn news articles or books, then check verbatim and
knowledge memorization, the privacy leak and the utility kept on the retain side.

Splits, read by hub id (``<repo>:<config>@<split>``; offline from the mirror, docs/data.md), in MUSE's schema:

=================  =====================================  ==========================================  ===============
split               source                                 rows                                        evaluated with
=================  =====================================  ==========================================  ===============
forget / retain     ``raw@forget`` / ``raw@retain1``       ``text``, cut into ``max_length``-token     (trained on)
                                                           chunks, every token scored
verbmem             ``verbmem@forget``                     ``prompt``; reference ``gt`` cut to its      ``rouge`` (F1,
                                                           first ``verbmem_tokens`` tokens              128 tokens)
knowmem_forget /    ``knowmem@forget_qa`` / ``@retain_qa``  ``question`` / ``answer``, after the         ``rouge`` (F1,
knowmem_retain                                             ``*_qa_icl`` rows as in-context examples     32 tokens)
privleak_forget /   ``privleak@forget`` / ``@holdout``     ``text``, every token scored                 ``mia``
privleak_holdout
=================  =====================================  ==========================================  ===============

Over the splits (:class:`MUSESummary`): ``verbmem`` and ``knowmem_forget`` (forget side: lower after unlearning),
``knowmem_retain`` (utility: higher), and ``privleak`` = (AUC - AUC_retrain) / AUC_retrain x 100, AUC in MUSE's
orientation (``privleak_auc``: ranking ``privleak_holdout`` above ``privleak_forget`` by the Min-K% score, k 0.4, so
about 0.5 for a model that never saw the forget texts and near 0 for one that knows them, privleak -100), against
the retrained model's AUC (the
MUSE authors' constants: News 0.4772, Books 0.5393, swj0419/muse_bench ``constants.py``; ``retrain_auc`` overrides
them, e.g. with a retrained model of your own). The knowledge prompt is MUSE's: ``Question: {q}\\nAnswer: {a}\\n\\n``
for each in-context example, then ``Question: {q}\\nAnswer:`` (``metrics/knowmem.py``; no trailing space here, the
answer's own leading space is scored). No MUSE number was measured on this project's machine: the rows are not in
its mirror; the tests run a small fixture in MUSE's schema.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from lit_unlearn.core.errors import DataError
from lit_unlearn.data.base import ForgetRetainDataModule
from lit_unlearn.data.sources import field
from lit_unlearn.eval import Aggregate, MIASummary
from lit_unlearn.eval.mia import auc

CORPORA = {"news": "muse-bench/MUSE-News", "books": "muse-bench/MUSE-Books"}
#: the retrained model's Min-40% AUC on privleak forget vs holdout (swj0419/muse_bench constants.py: AUC_RETRAIN)
RETRAIN_AUC = {"news": 0.4772, "books": 0.5393}
KNOW_STOP = ["\n\n", "\nQuestion", "Question:"]


class MUSEDataModule(ForgetRetainDataModule):
    """MUSE News or Books (module docstring)."""

    tradeoff_splits = ("knowmem_forget", "knowmem_retain")

    def __init__(self, *args, corpus: Literal["news", "books"] = "news", repo: str | None = None,
                 verbmem_tokens: int = 128, icl: bool = True, retrain_auc: float | None = None, **kwargs):
        """
        Args:
            corpus: ``news`` or ``books``.
            repo: the hub repository (default ``muse-bench/MUSE-News`` / ``muse-bench/MUSE-Books``).
            verbmem_tokens: the reference continuation of a verbmem row is its ``gt`` cut to this many tokens (the
                MUSE authors' 128, also the generation length).
            icl: put the ``*_qa_icl`` rows before each knowledge question as in-context examples (MUSE's prompt).
            retrain_auc: the retrained model's privleak AUC (default: the MUSE authors' constant of the corpus).
        """
        if corpus not in CORPORA:
            raise DataError(f"--data.corpus must be news or books, got {corpus!r}")
        for key in ("forget", "retain", "eval_splits"):
            if kwargs.pop(key, None) is not None:
                raise DataError(f"--data.{key}: MUSEDataModule sets its splits from --data.corpus; leave it out")
        if verbmem_tokens < 1:
            raise DataError(f"--data.verbmem_tokens must be >= 1, got {verbmem_tokens}")
        repo = repo or CORPORA[corpus]
        hub = f"{repo}:{{}}".format
        splits = {"verbmem": hub("verbmem@forget"), "knowmem_forget": hub("knowmem@forget_qa"),
                  "knowmem_retain": hub("knowmem@retain_qa"), "privleak_forget": hub("privleak@forget"),
                  "privleak_holdout": hub("privleak@holdout")}
        super().__init__(*args, forget=hub("raw@forget"), retain=hub("raw@retain1"), eval_splits=splits, **kwargs)
        self.corpus, self.repo, self.verbmem_tokens, self.icl = corpus, repo, verbmem_tokens, icl
        self.retrain_auc = RETRAIN_AUC[corpus] if retrain_auc is None else retrain_auc
        self._icl: dict[str, str] = {}

    KIND: ClassVar[dict[str, str]] = {"verbmem": "completion", "knowmem_forget": "completion",
                                      "knowmem_retain": "completion"}

    def kinds_of(self, split: str) -> tuple[str, ...]:
        return ("text", "completion") if split in self.KIND else ("text",)

    def default_evaluators_of(self, split: str) -> list:
        if split == "verbmem":
            return [{"class_path": "rouge", "init_args": {"max_new_tokens": self.verbmem_tokens}}]
        if split.startswith("knowmem"):
            return [{"class_path": "rouge", "init_args": {"max_new_tokens": 32, "stopwords": KNOW_STOP}}]
        if split.startswith("privleak"):
            return [{"class_path": "mia", "init_args": {"k": 0.4}}]
        return []  # the training corpora: too long to evaluate every epoch

    def read_rows(self, split: str) -> list[dict]:
        rows = super().read_rows(split)
        if split not in ("forget", "retain"):
            return rows
        out = []  # each text cut into max_length-token chunks (open-unlearning chunks the joined texts at 2048)
        for r in rows:
            text = field(r, "text", split, "forget")
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            step = max(1, self.max_length - 2)
            for k, start in enumerate(range(0, max(1, len(ids)), step)):
                chunk = self.tokenizer.decode(ids[start:start + step])
                out.append({**r, "text": chunk, "_index": len(out), "_where": f"{r['_where']} (chunk {k})"})
        return out

    def icl_prompt(self, split: str) -> str:
        """The in-context examples of a knowledge split (``*_qa_icl``), MUSE's template, read once."""
        if not self.icl:
            return ""
        if split not in self._icl:
            from lit_unlearn.data.sources import resolve

            name = f"{self.repo}:knowmem@{'forget' if split == 'knowmem_forget' else 'retain'}_qa_icl"
            examples = resolve(name, split).read(split)
            self._icl[split] = "".join(f"Question: {field(e, 'question', split, 'icl')}\nAnswer: "
                                       f"{field(e, 'answer', split, 'icl')}\n\n" for e in examples)
        return self._icl[split]

    def record(self, row: dict, split: str) -> dict:
        if split == "verbmem":
            prompt = field(row, "prompt", split, "verbmem")
            gt = field(row, "gt", split, "verbmem")
            ids = self.tokenizer(gt, add_special_tokens=False)["input_ids"][:self.verbmem_tokens]
            reference = self.tokenizer.decode(ids)
            return {"prompt": prompt, "answer": " " + gt.lstrip(), "reference": reference}
        if split.startswith("knowmem"):
            q, a = field(row, "question", split, "knowmem"), field(row, "answer", split, "knowmem")
            return {"prompt": f"{self.icl_prompt(split)}Question: {q}\nAnswer:", "answer": " " + a.strip(),
                    "reference": a.strip(), "question": q}
        text = field(row, "text", split, "forget")
        return {"text": text, "prompt": "", "answer": text}

    def aggregates(self) -> list[Aggregate]:
        """MUSE's table, and the project's membership AUCs of privleak forget (members) vs holdout."""
        return [MUSESummary(self.retrain_auc), MIASummary("privleak_forget", "privleak_holdout")]


class MUSESummary(Aggregate):
    """MUSE's table: ``verbmem``, ``knowmem_forget``, ``knowmem_retain`` (ROUGE-L F1) and ``privleak`` (module
    docstring)."""

    name = "muse"
    keys: ClassVar[tuple[str, ...]] = ("verbmem", "knowmem_forget", "knowmem_retain", "privleak", "privleak_auc")

    def __init__(self, retrain_auc: float):
        self.retrain_auc = retrain_auc

    def compute(self, rows: dict, results: dict) -> dict[str, float]:
        out = {k: results[k]["rouge"] for k in ("verbmem", "knowmem_forget", "knowmem_retain")
               if "rouge" in results.get(k, {})}
        members, others = rows.get("privleak_forget", {}).get("mia"), rows.get("privleak_holdout", {}).get("mia")
        if members and others:
            # MUSE's orientation: the AUC of ranking holdout above forget by the Min-K% score, 1 minus the AUC of
            # telling the forget rows (members) by it; near 0 for a model that knows the forget texts, about 0.5
            # for one that never saw them (privleak -100 and 0)
            value = 1.0 - auc([r["mink"] for r in members], [r["mink"] for r in others])
            out["privleak_auc"] = value
            out["privleak"] = (value - self.retrain_auc) / self.retrain_auc * 100
        return out
