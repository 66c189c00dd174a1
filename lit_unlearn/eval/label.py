"""Classification label accuracy and weighted F1 (``label``), for label words scored as next tokens (SST-2, Yelp).

A row's prediction comes from the teacher-forced argmax at its label-token positions: if every argmax equals the gold
token, the prediction is the gold label; otherwise it is the decoded argmax tokens (stripped), which is either
another label of the split or, when it is no label word at all (or only decodes like the gold label from other
tokens), ``"<other>"``: a prediction that is not a label word counts as wrong.

- ``label_acc`` = rows predicted as their gold label / rows (the same rows as ``answer``'s ``exact``)
- ``label_f1``  = F1 per gold class c (2 TP_c / (2 TP_c + FP_c + FN_c)), averaged with weights = rows whose gold
  label is c (scikit-learn's and torchmetrics' ``average="weighted"``, computed by torchmetrics); predictions of
  ``"<other>"`` are false negatives only.

Per-row artifact: ``id, index, gold, pred``.
"""

from __future__ import annotations

from collections import Counter

import torch

from lit_unlearn.eval.base import Evaluator, Scorer

OTHER = "<other>"


class LabelEvaluator(Evaluator):
    name = "label"
    keys = ("label_acc", "label_f1")
    kinds = ("label",)
    primary = "label_acc"

    def update(self, module: Scorer, batch: dict) -> None:
        stats = module.teacher_forced(batch)
        hits, predicted = stats.correct(), stats.predicted()
        for i, key in enumerate(self.row_keys(batch)):
            mask = stats.mask[i]
            gold = batch["answer"][i].strip() if "answer" in batch else module.tokenizer.decode(stats.labels[i][mask])
            if bool(hits[i][mask].all()):
                pred = gold
            else:  # another token sequence; one that only decodes like the gold label is not the label's tokens
                pred = module.tokenizer.decode(predicted[i][mask]).strip()
                pred = OTHER if pred == gold else pred
            self.rows.append({**key, "gold": gold, "pred": pred})

    def summarize(self, rows: list[dict]) -> dict[str, float]:
        if not rows:
            return {"label_acc": 0.0, "label_f1": 0.0}
        from torchmetrics.functional.classification import multiclass_f1_score

        classes = sorted(Counter(r["gold"] for r in rows)) + [OTHER]
        index = {c: i for i, c in enumerate(classes)}
        gold = torch.tensor([index[r["gold"]] for r in rows])
        pred = torch.tensor([index.get(r["pred"], index[OTHER]) for r in rows])
        f1 = multiclass_f1_score(pred, gold, num_classes=len(classes), average="weighted")
        return {"label_acc": (gold == pred).float().mean().item(), "label_f1": f1.item()}
