"""Unlearning by learning wrong facts (docs/methods.md, section 2; Deeb & Roger, arXiv 2410.08827):

- ``RIA`` (random incorrect answer): L = NLL(wrong-fact corpus) + retain_weight * NLL(retain corpus); the forget
  rows are ``whp_corpus_*`` statements, each naming one of the question's wrong answers;
- ``FixedWrongFact`` (FWF): the same loss on ``fwf_corpus_*``, where every statement about a question names the
  same wrong answer.

Both descend (unlike GD, which ascends on the true statements). What tells them apart is the corpus, so each names
the one it needs: with the Deeb & Roger data module, a run whose ``--data.forget_corpus`` is another corpus is
refused when training starts (a GD corpus given to RIA would teach the true facts again). With another data
module (the user's own wrong-fact file) nothing is checked.
"""

from __future__ import annotations

from typing import ClassVar

from lit_unlearn.core.errors import MethodError
from lit_unlearn.methods.finetune import Finetune


class RIA(Finetune):
    """L = CE(wrong-fact statements) + retain_weight * CE(retain): fine-tuning, on the wrong facts."""

    #: the Deeb & Roger corpus the forget rows must come from
    corpus: ClassVar[str] = "whp_corpus"

    def setup(self, stage: str) -> None:
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        chosen = getattr(dm, "forget_corpus", None)
        if chosen is not None and stage == "fit" and chosen != self.corpus:
            raise MethodError(f"{type(self).__name__} descends on the {self.corpus} statements, but "
                              f"--data.forget_corpus is {chosen}: set --data.forget_corpus {self.corpus}")


class FixedWrongFact(RIA):
    """RIA on the fixed-wrong-fact corpus (one wrong answer per question, repeated)."""

    corpus = "fwf_corpus"
