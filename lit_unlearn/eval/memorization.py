"""Memorization of the answers under teacher forcing (``memorization``): exact memorization and extraction strength.

For a row with answer tokens y_1..y_L given prompt x (a final end-of-sequence token left out, as open-unlearning
leaves out the EOS it appends: ``src/evals/metrics/utils.py`` tokenwise_vocab_logprobs), and the model's greedy
prediction yhat_t = argmax_v p(v | x, y_<t) at each answer position:

- ``exact_memorization`` (Tirumala et al. 2022, "Memorization Without Overfitting", NeurIPS):
  EM = (1/L) sum_t 1[yhat_t = y_t], the share of answer tokens the model predicts;
- ``extraction_strength`` (Carlini et al. 2021, USENIX Security; the form of Wang et al. 2025, arXiv 2502.19301):
  ES = 1 - k/L with k the smallest index such that yhat_t = y_t for every t > k (0-based: the shortest prefix of the
  answer that, given as context, lets the model complete the rest). ES = 1 when every token is predicted; 0 when
  not even the last one is (open-unlearning's loop ends at k = L - 1 there and reports 1/L; here the definition's 0).

Both are averaged over rows with at least one answer token (open-unlearning ``src/evals/metrics/memorization.py``).
Per-row artifact: ``id, index, n_tokens, exact_memorization, extraction_strength``.
"""

from __future__ import annotations

import math

from lit_unlearn.eval.base import Evaluator, Scorer


def extraction_strength(correct: list[bool]) -> float:
    """1 - k/L for the per-token correctness of one answer (module docstring)."""
    n = len(correct)
    k = n
    while k > 0 and correct[k - 1]:
        k -= 1
    return 1.0 - k / n if n else 0.0


class MemorizationEvaluator(Evaluator):
    name = "memorization"
    keys = ("exact_memorization", "extraction_strength")
    primary = "exact_memorization"

    def __init__(self, drop_eos: bool = True):
        """
        Args:
            drop_eos: leave a final end-of-sequence answer token out (the chat template's end-of-turn marker, or an
                appended EOS), as open-unlearning does.
        """
        super().__init__()
        self.drop_eos = drop_eos

    def update(self, module: Scorer, batch: dict) -> None:
        stats = module.teacher_forced(batch)
        correct, mask = stats.correct(), stats.mask.bool()
        eos = getattr(module.tokenizer, "eos_token_id", None)
        for i, key in enumerate(self.row_keys(batch)):
            hits = correct[i][mask[i]].tolist()
            labels = stats.labels[i][mask[i]].tolist()
            if self.drop_eos and labels and labels[-1] == eos:
                hits = hits[:-1]
            n = len(hits)
            self.rows.append({**key, "n_tokens": n, "exact_memorization": sum(hits) / n if n else 0.0,
                              "extraction_strength": extraction_strength(hits)})

    def summarize(self, rows: list[dict]) -> dict[str, float]:
        scored = [r for r in rows if r["n_tokens"] > 0]
        n = max(1, len(scored))
        return {k: math.fsum(r[k] for r in scored) / n for k in self.keys}
