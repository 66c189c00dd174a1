"""ROUGE-L of greedy generations against a reference text (``rouge``): MUSE's verbatim and knowledge memorization.

Per row: the model continues the row's ``prompt`` greedily for at most ``max_new_tokens`` tokens, the continuation
is cut at the first of ``stopwords`` and stripped, and scored against the row's ``reference`` (a question/answer
row's raw answer where it has none) with ROUGE-L
(``rouge-score``): ``f1`` (the F-measure, MUSE's ``mean_rougeL``) or ``recall`` (TOFU's). The split's value is the
mean over rows, in [0, 1] (MUSE's code reports it x 100).

Defaults follow the MUSE authors' code (swj0419/muse_bench ``metrics/logger.py``: ``use_stemmer=False``, the
F-measure; ``metrics/knowmem.py``: 32 new tokens, cut at "\\n\\n", "\\nQuestion", "Question:"); open-unlearning
scores with the Porter stemmer (``stemmer: true`` here gives that).
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Literal

from lit_unlearn.core.errors import EvalError
from lit_unlearn.eval.base import Evaluator, Scorer, generate_later


@lru_cache(maxsize=2)
def _scorer(stemmer: bool):
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=stemmer)


def rouge_l(reference: str, generated: str, stemmer: bool):
    """ROUGE-L of ``generated`` against ``reference`` (``rouge-score``; its precision, recall and fmeasure)."""
    return _scorer(stemmer).score(reference, generated)["rougeL"]


class ROUGEEvaluator(Evaluator):
    name = "rouge"
    keys = ("rouge",)
    primary = "rouge"
    kinds = ("completion", "tofu")  # MUSE's prompt/reference rows; question/answer rows (the raw answer)

    def __init__(self, max_new_tokens: int = 32, stopwords: list[str] | None = None,
                 score: Literal["f1", "recall"] = "f1", stemmer: bool = False):
        """
        Args:
            max_new_tokens: longest greedy continuation (>= 1).
            stopwords: the continuation is cut at the first of these (MUSE's knowledge memorization: "\\n\\n",
                "\\nQuestion", "Question:"); none by default.
            score: the ROUGE-L ``f1`` (MUSE) or ``recall`` (TOFU).
            stemmer: score with the Porter stemmer (open-unlearning's) instead of MUSE's plain tokens.
        """
        super().__init__()
        if max_new_tokens < 1:
            raise EvalError(f"rouge: max_new_tokens must be >= 1, got {max_new_tokens}")
        if score not in ("f1", "recall"):
            raise EvalError(f"rouge: score must be f1 or recall, got {score!r}")
        self.max_new_tokens, self.stopwords, self.score, self.stemmer = max_new_tokens, list(stopwords or []), \
            score, stemmer

    def rouge(self, reference: str, generated: str) -> float:
        result = rouge_l(reference, generated, self.stemmer)
        return result.fmeasure if self.score == "f1" else result.recall

    def cut(self, text: str) -> str:
        for word in self.stopwords:
            text = text.split(word, 1)[0]
        return text.strip()

    def update(self, module: Scorer, batch: dict) -> None:
        references = batch.get("reference") or batch.get("answer_text")
        if references is None:
            raise EvalError(f"split {batch.get('split')!r}: the rouge evaluator needs each row's reference text "
                            "(MUSE's verbmem / knowmem splits, or question/answer rows)")
        rows = [{**key, "reference": ref, "generated": None, "rouge": None}
                for key, ref in zip(self.row_keys(batch), references)]
        self.rows.extend(rows)

        def score(texts: list[str]) -> None:  # the generations, when the suite has them (pooled over splits)
            for row, gen in zip(rows, texts):
                row["generated"] = self.cut(gen)
                row["rouge"] = self.rouge(row["reference"], row["generated"])

        generate_later(module, batch["prompt"], self.max_new_tokens, score)

    def summarize(self, rows: list[dict]) -> dict[str, float]:
        return {"rouge": math.fsum(r["rouge"] for r in rows) / max(1, len(rows))}
