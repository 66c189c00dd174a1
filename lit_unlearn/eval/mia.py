"""Membership inference: can the forget rows still be told from rows the model never saw?

Per row (``mia`` evaluator), over the answer tokens y_1..y_n given the prompt (teacher forcing), with
lp_t = log p(y_t | x, y_<t), every score oriented so that higher means "more likely trained on":

- ``loss``:   mean_t lp_t (= -L, the LOSS attack; Yeom et al. 2018)
- ``zlib``:   mean_t lp_t / zlib_bytes, zlib_bytes = len(zlib.compress(answer UTF-8 bytes)) (Carlini et al. 2021,
  arXiv 2012.07805: the model's per-token NLL against a generic compressor's length; the form of open-unlearning
  and the mimir attacks it follows). ``zlib="sum_bits"`` keeps this project's earlier form, sum_t lp_t /
  (8 * zlib_bytes), in which the answer's length enters the score
- ``mink``:   mean of the k% lowest lp_t (Min-K% Prob; Shi et al. 2023, arXiv 2310.16789), k = 40% by default
  (open-unlearning's TOFU setting; 20% until issue 22), at least one token
- ``minkpp``: mean of the k% lowest z_t, z_t = (lp_t - mu_t) / sigma_t with mu_t and sigma_t^2 the mean and
  variance of log p(v | x, y_<t) over the vocabulary under the model's own distribution (Min-K%++; Zhang et al.
  2024, arXiv 2404.02936)

Two more attacks, on request (``attacks``), as open-unlearning defines them (``src/evals/metrics/mia/``):

- ``gradnorm``: -(1/J) sum_j ||d L / d theta_j||_p over the model's J parameter tensors (every weight of the model,
  base and adapter), L the row's mean answer NLL (Wang et al. 2024, arXiv 2402.17012): a trained-on row sits where
  the gradient is small. One backward per row; ``p`` 2 by default (open-unlearning's ``mia_gradnorm.yaml``);
- ``reference``: L_ref - L, the row's mean answer NLL under a reference model minus under this one (the reference
  MIA of MIMIR and MUSE; open-unlearning ``reference.py``); the reference is ``reference_model`` (with
  ``reference_adapter`` folded in: e.g. TOFU's retain-only model, the base plus its adapter), loaded once.

Over splits (:class:`MIASummary`): ``auc_<score>`` = ROC AUC of telling the ``members`` split (forget, label 1)
from the ``non-members`` split (TOFU's holdout, label 0) by the score (``torchmetrics`` ``binary_auroc``). A model
that never trained on either sits near 0.5. With the retain-only model's rows as reference, ``privleak_<score>`` =
(AUC - AUC_retain) / AUC_retain (MUSE's PrivLeak, Shi et al. 2024, arXiv 2407.06460): 0 when unlearning left no
more trace than never training on the rows, positive when the forget rows still stand out.
"""

from __future__ import annotations

import math
import zlib
from typing import ClassVar

import torch

from lit_unlearn.core.errors import EvalError
from lit_unlearn.core.scoring import distribution_moments
from lit_unlearn.eval.base import Aggregate, Evaluator, Scorer, TeacherForced
from lit_unlearn.eval.tofu import matched, read_reference

SCORES = ("loss", "zlib", "mink", "minkpp")
#: the attacks that need more than the shared forward: a backward per row, or a second model
EXTRA = ("gradnorm", "reference")


class MIAEvaluator(Evaluator):
    """Per-row membership scores (module docstring); the AUCs come from :class:`MIASummary`."""

    name = "mia"
    keys = ("loss", "zlib", "mink", "minkpp")  # split means of the scores; the AUCs are the summary's
    primary = "loss"
    needs = TeacherForced(moments=True)  # mu and sigma from the lean head's products: no (B, T, V) logits

    def __init__(self, k: float = 0.4, zlib: str = "mean_bytes", attacks: list[str] | None = None, p: float = 2.0,
                 reference_model: str | None = None, reference_adapter: str | list[str] | None = None):
        """
        Args:
            k: the share of lowest-scoring tokens of Min-K% and Min-K%++ (at least one token); 0.4 as
                open-unlearning's TOFU configs (``configs/eval/tofu_metrics/mia_min_k.yaml``: ``k: 0.4``).
            zlib: ``mean_bytes`` (mean token log-prob / zlib bytes, open-unlearning's) or ``sum_bits`` (summed
                log-prob / zlib bits, the earlier form).
            attacks: extra attacks beside the four of the shared forward: ``gradnorm``, ``reference``.
            p: the gradient norm's order (1, 2 or inf).
            reference_model: the reference attack's model (an alias, hub id or directory).
            reference_adapter: saved adapters folded into ``reference_model`` (e.g. the retain-only model's).
        """
        super().__init__()
        if not 0 < k <= 1:
            raise EvalError(f"mia: k must be in (0, 1], got {k}")
        if zlib not in ("mean_bytes", "sum_bits"):
            raise EvalError(f"mia: zlib must be mean_bytes or sum_bits, got {zlib!r}")
        attacks = list(attacks or [])
        unknown = [a for a in attacks if a not in EXTRA]
        if unknown:
            raise EvalError(f"mia: unknown attack {unknown[0]!r}; the extra attacks are {', '.join(EXTRA)}")
        if p not in (1, 2, math.inf):
            raise EvalError(f"mia: p must be 1, 2 or inf, got {p}")
        if "reference" in attacks and not reference_model:
            raise EvalError("mia: the reference attack needs reference_model (e.g. the retain-only model's base, "
                            "with reference_adapter its adapter)")
        self.k, self.zlib, self.attacks, self.p = k, zlib, attacks, p
        self.reference_model, self.reference_adapter = reference_model, reference_adapter
        self._reference = None
        self.keys = (*SCORES, *attacks)

    def gradnorms(self, module: Scorer, batch: dict) -> list[float]:
        """-(mean over the model's parameter tensors of ||grad||_p) of each row's mean answer NLL."""
        lm = module.scorer.lm if hasattr(module, "scorer") else module.lm
        params = list(lm.parameters())
        flags = [q.requires_grad for q in params]
        out = []
        try:
            for q in params:
                q.requires_grad_(True)
            with torch.enable_grad():
                for i in range(batch["input_ids"].size(0)):
                    row = {k: (v[i:i + 1] if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
                    loss = module.forward(row, logits=True).mean_nll.sum()  # the full head: its weight gets its gradient
                    grads = torch.autograd.grad(loss, params, allow_unused=True)
                    norms = [torch.linalg.vector_norm(g.double(), ord=self.p) for g in grads if g is not None]
                    out.append(-float(torch.stack(norms).mean()))
        finally:
            for q, flag in zip(params, flags):
                q.requires_grad_(flag)
        return out

    def reference_nll(self, module: Scorer, batch: dict) -> list[float]:
        """Each row's mean answer NLL under the reference model (loaded once, on the module's device)."""
        if self._reference is None:
            from lit_unlearn.models.assembly import assemble
            from lit_unlearn.models.scorer import Scorer as ModelScorer

            lm, tokenizer = assemble(self.reference_model, None, self.reference_adapter, "float32", None, "auto",
                                     False)
            if tokenizer.get_vocab() != module.tokenizer.get_vocab():
                raise EvalError(f"mia: the reference model {self.reference_model} has another tokenizer than the "
                                "evaluated model; the reference attack compares the same tokens")
            lm.requires_grad_(False).eval().to(module.device)
            self._reference = ModelScorer(lm, tokenizer)
        inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "labels")}
        return self._reference.teacher_forced(inputs).mean_nll.double().tolist()

    def update(self, module: Scorer, batch: dict) -> None:
        stats = module.teacher_forced(batch, moments=True)
        answers = batch.get("answer_text") or [a.strip() for a in batch["answer"]]
        extra = {}
        if "gradnorm" in self.attacks:
            extra["gradnorm"] = self.gradnorms(module, batch)
        if "reference" in self.attacks:
            ours = stats.mean_nll.double().tolist()
            extra["reference"] = [r - o for r, o in zip(self.reference_nll(module, batch), ours)]
        for i, key in enumerate(self.row_keys(batch)):
            mask = stats.mask[i]
            lp = -stats.token_nll[i][mask].double()
            if stats.mu is not None:
                mu, sigma = stats.mu[i][mask].double(), stats.sigma[i][mask].double()
            else:  # a scorer that only gives logits
                mu, sigma = (v.double() for v in distribution_moments(stats.logits[i][mask]))
            z = (lp - mu) / sigma
            m = max(1, int(self.k * lp.numel()))
            size = len(zlib.compress(answers[i].encode("utf-8")))
            ratio = float(lp.mean()) / size if self.zlib == "mean_bytes" else float(lp.sum()) / (8 * size)
            self.rows.append({**key, "question": batch.get("question", [None] * len(answers))[i],
                              "loss": float(lp.mean()), "zlib": ratio,
                              "mink": float(torch.topk(lp, m, largest=False).values.mean()),
                              "minkpp": float(torch.topk(z, m, largest=False).values.mean()),
                              **{a: values[i] for a, values in extra.items()}})

    def summarize(self, rows: list[dict]) -> dict[str, float]:
        n = max(1, len(rows))
        return {s: math.fsum(r[s] for r in rows) / n for s in self.keys}


def auc(members: list[float], nonmembers: list[float]) -> float:
    """ROC AUC of scores where members (label 1) should score higher than non-members (label 0)."""
    from torchmetrics.functional.classification import binary_auroc

    scores = torch.tensor(members + nonmembers, dtype=torch.float64)
    labels = torch.tensor([1] * len(members) + [0] * len(nonmembers))
    return float(binary_auroc(scores, labels))


class MIASummary(Aggregate):
    """AUC per score of members vs non-members and, with a reference, the relative privacy leak (module docstring)."""

    name = "mia"
    keys: ClassVar[tuple[str, ...]] = tuple(f"{kind}_{s}" for kind in ("auc", "privleak") for s in (*SCORES, *EXTRA))

    def __init__(self, members: str = "forget", nonmembers: str = "holdout", reference: str | None = None):
        self.members, self.nonmembers, self.reference = members, nonmembers, reference

    def compute(self, rows: dict, results: dict) -> dict[str, float]:
        if "mia" not in rows.get(self.members, {}) or "mia" not in rows.get(self.nonmembers, {}):
            return {}
        ours_in, ours_out = rows[self.members]["mia"], rows[self.nonmembers]["mia"]
        scores = [s for s in (*SCORES, *EXTRA) if ours_in and s in ours_in[0] and ours_out and s in ours_out[0]]
        out = {f"auc_{s}": auc([r[s] for r in ours_in], [r[s] for r in ours_out]) for s in scores}
        if self.reference is not None:
            theirs = []
            for split, ours in ((self.members, ours_in), (self.nonmembers, ours_out)):
                path, rows_ref = read_reference(self.reference, split, "mia")
                theirs.append(matched(ours, path, rows_ref))
            for s in (s for s in scores if s in theirs[0][0] and s in theirs[1][0]):
                ref = auc([r[s] for r in theirs[0]], [r[s] for r in theirs[1]])
                if ref > 0:  # undefined against a reference AUC of 0: left out
                    out[f"privleak_{s}"] = (out[f"auc_{s}"] - ref) / ref
        return out
