"""TOFU (Maini et al. 2024, arXiv 2401.06121; hub ``locuslab/TOFU``): fictitious authors to forget, the rest to keep.

Splits, all read by hub id (offline from the mirror, docs/data.md), ``XX`` / ``YY`` / ``ZZ`` from ``forget_split``:

============  =====================================  ========================  =================================
split          source                                 trained on                evaluated with
============  =====================================  ========================  =================================
forget         ``forgetXX_perturbed`` (the forget     yes (question, answer)    ``tofu`` (forget formulas), ``mia``
               rows with paraphrased / perturbed
               answers)
retain         ``retainYY`` (``retain_perturbed``     yes                       - (too large; ``retain_eval``
               in the mini setting)                                             stands for it)
retain_eval    ``retain_perturbed``                   no                        ``tofu``
real_authors   ``real_authors_perturbed``             no                        ``tofu`` (normalised probability)
world_facts    ``world_facts_perturbed``              no                        ``tofu`` (normalised probability)
holdout        ``holdoutZZ``                          no                        ``mia`` (the non-members)
============  =====================================  ========================  =================================

Over the splits: model utility and forget quality (:class:`lit_unlearn.eval.TOFUSummary`) and membership-inference
AUCs (:class:`lit_unlearn.eval.MIASummary`); forget quality and the privacy leak need ``reference``, the rows
folder of the retain-only model's evaluation. The evaluators' own arguments (generation length, Min-K%'s k) are
theirs: ``evaluator_args: {tofu: {max_new_tokens: 48}, mia: {k: 0.4}}`` (lit_unlearn/eval/specs.py).

``mini: N`` makes the whole pipeline fit a 2-core CPU: the retain set becomes a seeded subset of N rows of
``retain_perturbed`` (so the retain rows evaluated are rows the model learned, as in the full setting where
``retain_perturbed`` lies inside every retain set), and every evaluation set but forget and holdout is cut to a
seeded N rows.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from lit_unlearn.core.errors import DataError
from lit_unlearn.data.qa import QADataModule
from lit_unlearn.eval import Aggregate, MIASummary, TOFUSummary

ForgetSplit = Literal["forget01", "forget05", "forget10"]
PAIRS = {"forget01": ("retain99", "holdout01"), "forget05": ("retain95", "holdout05"),
         "forget10": ("retain90", "holdout10")}
KINDS = {"forget": "forget", "retain_eval": "retain", "real_authors": "real_authors", "world_facts": "world_facts"}
#: the answer fields each evaluation set must have
NEEDS = {"forget": ("paraphrased_answer", "perturbed_answer"), "retain_eval": ("paraphrased_answer", "perturbed_answer"),
         "real_authors": ("perturbed_answer",), "world_facts": ("perturbed_answer",)}


class TOFUDataModule(QADataModule):
    """TOFU's forget / retain / evaluation sets from one ``forget_split`` (module docstring)."""

    tradeoff_splits = ("forget", "retain_eval")

    def __init__(
        self,
        *args,
        forget_split: ForgetSplit = "forget10",
        mini: int | None = None,
        reference: str | None = None,
        forget_parts: list[int] | None = None,
        tofu: str = "locuslab/TOFU",
        **kwargs,
    ):
        """
        Args:
            forget_split: forget01, forget05 or forget10; the retain (retain99/95/90) and holdout sets follow.
            mini: a CPU-sized setting: N seeded retain rows (from retain_perturbed) and at most N rows per
                evaluation set besides forget and holdout; null: the full sets.
            reference: the rows folder of the retain-only model's evaluation (e.g.
                ``checkpoints/tofu/retain/rows/after``), for forget quality and the privacy leak; null: neither.
            forget_parts: ``[first, last, k]``: the forget set cut into k consecutive parts of its rows (as equal as
                may be, in source order), and only parts first..last kept (1-based, inclusive), trained on and
                evaluated: the forget requests of a sequence (``lit_unlearn.sequential``); null: every row.
            tofu: the TOFU hub repository.
        """
        if forget_split not in PAIRS:
            raise DataError(f"--data.forget_split must be one of {', '.join(PAIRS)}, got {forget_split!r}")
        if mini is not None and mini < 1:
            raise DataError(f"--data.mini must be >= 1 (retain rows) or null, got {mini}")
        if forget_parts is not None and not (len(forget_parts) == 3 and 1 <= forget_parts[0] <= forget_parts[1]
                                             <= forget_parts[2]):
            raise DataError(f"--data.forget_parts must be [first, last, k] with 1 <= first <= last <= k, got "
                            f"{forget_parts}")
        for key in ("forget", "retain", "eval_splits"):
            if kwargs.pop(key, None) is not None:
                raise DataError(f"--data.{key}: TOFUDataModule sets its splits from --data.forget_split; leave it out")
        retain, holdout = PAIRS[forget_split]
        hub = f"{tofu}:{{}}@train".format
        sources = dict(forget=hub(f"{forget_split}_perturbed"), retain=hub("retain_perturbed" if mini else retain),
                       eval_splits={"retain_eval": hub("retain_perturbed"), "real_authors": hub("real_authors_perturbed"),
                                    "world_facts": hub("world_facts_perturbed"), "holdout": hub(holdout)})
        if mini is not None:
            limits = {s: mini for s in ("retain", "retain_eval", "real_authors", "world_facts")}
            user = kwargs.pop("max_rows", None)
            kwargs["max_rows"] = {**limits, **(user if isinstance(user, dict) else {})} if not isinstance(user, int) \
                else user
        super().__init__(*args, **sources, **kwargs)
        self.forget_split, self.mini, self.reference = forget_split, mini, reference
        self.forget_parts = list(forget_parts) if forget_parts is not None else None
        #: which TOFU set each evaluation split is (the formulas of its ``tofu`` evaluator)
        self.tofu_kinds = dict(KINDS)

    def setup(self, stage: str | None = None) -> None:
        if self.reference is not None:  # checked before any training, not at the end of it
            missing = [f for f in ("forget.tofu.jsonl", "forget.mia.jsonl", "holdout.mia.jsonl")
                       if not (Path(self.reference) / f).is_file()]
            if missing:
                raise DataError(f"--data.reference: {Path(self.reference) / missing[0]} does not exist; point it at "
                                "the rows folder of the retain-only model's evaluation (run configs/tofu/retain.yaml "
                                "first: checkpoints/tofu/retain/rows/after), or set it to null")
        super().setup(stage)

    def read_rows(self, split: str) -> list[dict]:
        rows = super().read_rows(split)
        if split == "forget" and self.forget_parts is not None:
            first, last, k = self.forget_parts
            if k > len(rows):
                raise DataError(f"--data.forget_parts {self.forget_parts}: the forget set has {len(rows)} rows, fewer "
                                f"than {k} parts")
            bounds = [round(i * len(rows) / k) for i in range(k + 1)]
            rows = rows[bounds[first - 1]:bounds[last]]  # the rows keep their source index: the set's own ids
        return rows

    def record(self, row: dict, split: str) -> dict:
        rec = super().record(row, split)
        for field in NEEDS.get(split, ()):
            value = rec.get(field)
            ok = isinstance(value, list) and value and all(isinstance(v, str) for v in value) \
                if field == "perturbed_answer" else isinstance(value, str)
            if not ok:
                raise DataError(f"{split}: {row['_where']} has no usable {field!r} (TOFU's evaluation sets carry it; "
                                f"check --data.eval_splits / the *_perturbed sources)")
        return rec

    def default_evaluators_of(self, split: str) -> list[str]:
        return (["tofu"] if split in KINDS else []) + (["mia"] if split in ("forget", "holdout") else [])

    def kinds_of(self, split: str) -> tuple[str, ...]:
        """The four evaluation sets carry paraphrased / perturbed answers (``tofu``); every split is text."""
        return ("text", "tofu") if split in KINDS else ("text",)

    def aggregates(self) -> list[Aggregate]:
        return [TOFUSummary(reference=self.reference), MIASummary(reference=self.reference)]
