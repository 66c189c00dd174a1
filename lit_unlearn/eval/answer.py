"""Teacher-forced answer metrics (``answer``): the default evaluator of every split.

For each row with answer tokens y_1..y_n given prompt x, L = (1/n) sum_t -log p(y_t | x, y_<t), and

- ``nll``   = mean over rows of L                      (TOFU's length-normalised answer NLL)
- ``prob``  = mean over rows of exp(-L)                (TOFU "Probability" of the gold answer)
- ``acc``   = argmax-correct answer tokens / all answer tokens (micro average)
- ``exact`` = rows whose every answer token is argmax-correct / rows (for a classification row: label accuracy,
  and a prediction that is not the label word counts as wrong)

Rows without answer tokens do not count. Per-row artifact: ``id, index, n_tokens, nll, prob, correct, exact``.
"""

from __future__ import annotations

import math

from lit_unlearn.eval.base import Evaluator, Scorer


class AnswerEvaluator(Evaluator):
    name = "answer"
    keys = ("nll", "prob", "acc", "exact")
    primary = "acc"

    def update(self, module: Scorer, batch: dict) -> None:
        stats = module.teacher_forced(batch)
        n_tokens = stats.n_tokens.tolist()
        nll = stats.mean_nll.detach().double().tolist()
        correct = stats.correct().sum(-1).tolist()
        for key, n, l, c in zip(self.row_keys(batch), n_tokens, nll, correct):
            self.rows.append({**key, "n_tokens": n, "nll": l, "prob": math.exp(-l), "correct": c, "exact": c == n})

    def summarize(self, rows: list[dict]) -> dict[str, float]:
        scored = [r for r in rows if r["n_tokens"] > 0]
        n_rows, n_tokens = max(1, len(scored)), max(1, sum(r["n_tokens"] for r in scored))
        return {"nll": math.fsum(r["nll"] for r in scored) / n_rows,
                "prob": math.fsum(r["prob"] for r in scored) / n_rows,
                "acc": sum(r["correct"] for r in scored) / n_tokens,
                "exact": sum(r["exact"] for r in scored) / n_rows}
