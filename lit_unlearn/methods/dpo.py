"""DPO for unlearning, as IdkDPO (Maini et al. 2024, TOFU, arXiv 2401.06121; DPO: Rafailov et al. 2023): prefer a
refusal to the forget answer, relative to the reference model (the model before unlearning, here the adapter
disabled).

For a forget row with prompt x, forget answer y_l (rejected) and a refusal y_w (chosen), with s(x, y) the summed
log-probability of the answer tokens:

    r_w = s_theta(x, y_w) - s_ref(x, y_w),     r_l = s_theta(x, y_l) - s_ref(x, y_l)
    L_f = -(2 / beta) * mean_rows log sigmoid(beta * (r_w - r_l))
    L   = forget_weight * L_f + retain_weight * CE_r

The 2 / beta scale and the defaults are open-unlearning's (``src/trainer/utils.py`` compute_dpo_loss, the NPO
paper's convention; ``configs/trainer/DPO.yaml``: beta 0.1, gamma = forget_weight 1, alpha = retain_weight 1, retain
NLL; IdkDPO is that trainer with ``configs/experiment/unlearn/tofu/idk.yaml``'s refusals as the preferred answers).
Departure: open-unlearning draws a new refusal for a row at every visit (``torch.randint`` in its dataset); here a
row's refusal is a seeded function of (seed, row id), as the IDK method's, so an epoch, a rank and a resumed run see
the same pair, and the reference log-probabilities of both answers can be cached per row (``reference: cached``).
Refusals: the IDK method's built-in ones or ``refusals`` (a file, one per line or JSONL ``{"text": ...}``, e.g.
TOFU's ``idontknow.jsonl``).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from lit_unlearn.core.errors import MethodError
from lit_unlearn.core.scoring import TokenStats, row_mean
from lit_unlearn.core.tokens import row_ids
from lit_unlearn.methods.base import positive
from lit_unlearn.methods.relabel import IDK, _with_leading_space, pick
from lit_unlearn.models.scorer import fuse_batches

#: the suffix that tells a chosen (refusal) row from its rejected twin in the fused forget batch
CHOSEN = "#chosen"


class DPO(IDK):
    """L_f = -(2/beta) log sigmoid(beta (r_chosen - r_rejected)), the chosen answer a refusal (module docstring)."""

    default_retain = "nll"
    needs_reference = True

    def __init__(self, *args, beta: float = 0.1, **kwargs):
        """
        Args:
            beta: the DPO inverse temperature (> 0; open-unlearning: 0.1).
        """
        super().__init__(*args, **kwargs)
        positive(beta=beta)
        self.beta = beta

    def prepare_forget(self, batch: dict) -> dict:
        """The forget rows twice in one batch: first with their own answers (rejected), then with a refusal each
        (chosen, ids suffixed ``#chosen`` so the reference cache keeps both)."""
        if "prompt" not in batch:
            raise MethodError("DPO needs the raw prompt/answer strings in forget batches")
        options = self.replacements()
        ids = row_ids(batch)
        refusals = [_with_leading_space(a, pick(options, self.seed, i)) for a, i in zip(batch["answer"], ids)]
        chosen = {**batch, **self.encode(batch["prompt"], refusals), "id": [i + CHOSEN for i in ids]}
        fused = fuse_batches([{**batch, "id": ids}, chosen], self.tokenizer.pad_token_id)
        fused["n_rejected"] = len(ids)
        return fused

    def forget_loss(self, batch: dict, stats: TokenStats) -> Tensor:
        n = batch["n_rejected"]
        ratio = -(stats.seq_nll - self.reference_seq_nll(batch))  # s_theta - s_ref per row
        margin = ratio[n:] - ratio[:n]  # chosen minus rejected
        weight = batch.get("weight")
        per_row = -(2.0 / self.beta) * F.logsigmoid(self.beta * margin)
        return row_mean(per_row, weight[:n] if weight is not None else None)
