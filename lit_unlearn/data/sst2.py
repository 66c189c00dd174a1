"""Sentiment classification as next-token prediction (SST-2, Yelp polarity), as in SPUL / PI-Prefix.

Rows ``text,label,label_text`` (hub ``karuna-bhaila/Unlearning_SST2v3`` and ``karuna-bhaila/Unlearning_Yelp_Polarity``,
splits ``train_forget``, ``train_retain``, ``test_forget``, ``test_retain``). The prompt (docs/methods.md, section 1)
is scored on the label word only:

    ### Text: {text}\\n\\n### Question: What is the sentiment of the given text?\\n\\n### Sentiment: {label_text}

Every split runs the ``label`` evaluator (label accuracy and weighted F1; a prediction that is not the label word
counts as wrong) and the ``answer`` evaluator. A row's ``label_text`` must be one of ``labels``, and its ``label``
(when the field is there) the index of that word in ``labels``; either mismatch is refused with the row's file and
line. ``forget_size`` trains on a seeded fraction of the forget split (SPUL's forget-size ablation).

Offline, Yelp's retain splits are a proxy (docs/data.md): the Yelp review sentences of Shen et al. 2017.
"""

from __future__ import annotations

import random

from lit_unlearn.core.errors import DataError
from lit_unlearn.data.base import ForgetRetainDataModule
from lit_unlearn.data.sources import field

SST2_PROMPT = "### Text: {text}\n\n### Question: What is the sentiment of the given text?\n\n### Sentiment:"


class SST2DataModule(ForgetRetainDataModule):
    """SST-2 / Yelp forget-retain classification; splits are CSVs or hub splits with text, label and label_text."""

    default_evaluators = ("label", "answer")
    row_kinds = ("text", "label")

    def __init__(self, *args, text_field: str = "text", label_field: str = "label_text",
                 label_id_field: str | None = "label", labels: list[str] | None = None, forget_size: float = 1.0,
                 prompt_template: str = SST2_PROMPT, **kwargs):
        """
        Args:
            text_field: the field holding the text to classify.
            label_field: the field holding the label word (``positive`` / ``negative``).
            label_id_field: the field holding the label's index in ``labels`` (checked against the word); null:
                no such field.
            labels: the label words, in label-index order (default ``[negative, positive]``).
            forget_size: the fraction of the forget split trained on, in (0, 1]: a seeded subset (before
                ``max_rows``).
            prompt_template: the prompt with ``{text}``; the label follows after one space.
        """
        super().__init__(*args, **kwargs)
        if not 0 < forget_size <= 1:
            raise DataError(f"--data.forget_size must be in (0, 1], got {forget_size}")
        self.text_field, self.label_field, self.label_id_field = text_field, label_field, label_id_field
        self.labels = list(labels) if labels else ["negative", "positive"]
        self.forget_size, self.prompt_template = forget_size, prompt_template

    def read_rows(self, split: str) -> list[dict]:
        rows = super().read_rows(split)
        if split == "forget" and self.forget_size < 1:
            keep = max(1, round(self.forget_size * len(rows)))
            rows = [rows[i] for i in sorted(random.Random(f"{self.seed}:forget_size").sample(range(len(rows)), keep))]
        return rows

    def record(self, row: dict, split: str) -> dict:
        text = field(row, self.text_field, split, "text_field")
        label = field(row, self.label_field, split, "label_field").strip()
        if label not in self.labels:
            raise DataError(f"{split}: {row['_where']} has the label {label!r}, which is not one of --data.labels "
                            f"{self.labels}")
        if self.label_id_field is not None:
            index = field(row, self.label_id_field, split, "label_id_field")
            if index.strip() != str(self.labels.index(label)):
                raise DataError(f"{split}: {row['_where']} has {self.label_id_field}={index} but label {label!r}, "
                                f"which is index {self.labels.index(label)} of --data.labels {self.labels}")
        return {"text": text, "label": label, "prompt": self.prompt_template.format(text=text), "answer": " " + label}
