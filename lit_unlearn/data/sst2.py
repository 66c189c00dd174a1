"""Sentiment classification as next-token prediction (SST-2, Yelp polarity), as in SPUL / PI-Prefix.

Rows ``text,label,label_text`` (hub ``karuna-bhaila/Unlearning_SST2v3`` and ``karuna-bhaila/Unlearning_Yelp_Polarity``,
splits ``train_forget``, ``train_retain``, ``test_forget``, ``test_retain``). The prompt (docs/methods.md, section 1)
is scored on the label word only:

    ### Text: {text}\\n\\n### Question: What is the sentiment of the given text?\\n\\n### Sentiment: {label_text}

Every split runs the ``label`` evaluator (label accuracy and weighted F1; a prediction that is not the label word
counts as wrong) and the ``answer`` evaluator.
"""

from __future__ import annotations

from lit_unlearn.data.base import ForgetRetainDataModule
from lit_unlearn.data.sources import field

SST2_PROMPT = "### Text: {text}\n\n### Question: What is the sentiment of the given text?\n\n### Sentiment:"


class SST2DataModule(ForgetRetainDataModule):
    """SST-2 / Yelp forget-retain classification; splits are CSVs or hub splits with text and label_text."""

    default_evaluators = ("label", "answer")

    def __init__(self, *args, text_field: str = "text", label_field: str = "label_text",
                 prompt_template: str = SST2_PROMPT, **kwargs):
        """
        Args:
            text_field: the field holding the text to classify.
            label_field: the field holding the label word (``positive`` / ``negative``).
            prompt_template: the prompt with ``{text}``; the label follows after one space.
        """
        super().__init__(*args, **kwargs)
        self.text_field, self.label_field, self.prompt_template = text_field, label_field, prompt_template

    def record(self, row: dict, split: str) -> dict:
        text = field(row, self.text_field, split, "text_field")
        label = field(row, self.label_field, split, "label_field").strip()
        return {"text": text, "label": label, "prompt": self.prompt_template.format(text=text), "answer": " " + label}
