"""TOFU's evaluation (Maini et al. 2024, "TOFU: A Task of Fictitious Unlearning for LLMs", arXiv 2401.06121), as
defined in docs/methods.md section 5.

Per row, with L(y) = answer NLL / answer tokens of answer y given the row's prompt (teacher forcing; the answer
tokens start where the tokenizations of prompt and prompt + answer first differ, docs/methods.md section 7), and the
answers written as the data module writes them (``Question: {q}\\nAnswer:`` + `` {answer}``):

- ``prob``: forget / retain rows: exp(-L(answer)); real authors / world facts rows:
  p(answer) / (p(answer) + sum_k p(perturbed_k)) with p(y) = exp(-L(y));
- ``rouge``: ROUGE-L recall of the greedy generation against the answer (``rouge-score``, Porter stemmer), the
  generation stopping at EOS or ``max_new_tokens``;
- R (``truth_ratio_raw`` in the rows): exp(mean_k L(perturbed_k) - L(paraphrased)); real authors / world facts have
  no paraphrase, so the answer takes its place;
- ``truth_ratio``: forget rows: mean of min(R, 1/R); the other sets: mean of max(0, 1 - 1/R).

Over splits (:class:`TOFUSummary`): ``model_utility`` is the harmonic mean of the nine values {prob, rouge,
truth_ratio} x {retain, real authors, world facts} (0 when any is 0); ``forget_quality`` is the p-value of the
two-sample Kolmogorov-Smirnov test (``scipy.stats.ks_2samp``, two-sided) between the forget rows' R of this model and
of the retain-only model, read from that model's saved rows and matched on row ids (the raw R: the test is the same
for 1/R, not for min(R, 1/R)). A reference computed on other rows is refused, not compared.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import ClassVar, Literal

from lit_unlearn.core.errors import EvalError
from lit_unlearn.eval.base import Aggregate, Evaluator, Scorer, generate_later
from lit_unlearn.eval.rouge import rouge_l

Kind = Literal["forget", "retain", "real_authors", "world_facts"]
#: the three sets whose prob / rouge / truth_ratio make model utility, in docs order
UTILITY_SPLITS = ("retain_eval", "real_authors", "world_facts")


class TOFUEvaluator(Evaluator):
    """Probability, ROUGE-L recall and truth ratio of one TOFU evaluation set (``kind`` picks the formulas)."""

    name = "tofu"
    keys = ("prob", "rouge", "truth_ratio")
    primary = "rouge"
    kinds = ("tofu",)

    def __init__(self, kind: Kind | None = None, max_new_tokens: int = 64, generate: bool = True):
        """
        Args:
            kind: which formulas (module docstring): forget, retain, real_authors or world_facts; None: the kind
                of the TOFU evaluation set it runs on (the data module's ``tofu_kinds``; ``retain`` on a split of
                another question/answer data module).
            max_new_tokens: longest greedy generation for ROUGE (>= 1).
            generate: false: teacher-forced only (probability and truth ratio, no generation, no ``rouge``): the
                cheap proxy evaluation of a sweep's trials (lit_unlearn.sweep).
        """
        super().__init__()
        if kind not in (None, "forget", "retain", "real_authors", "world_facts"):
            raise EvalError(f"tofu: kind must be forget, retain, real_authors or world_facts, got {kind!r}")
        if max_new_tokens < 1:
            raise EvalError(f"tofu: max_new_tokens must be >= 1 for ROUGE of generations, got {max_new_tokens}")
        self.kind, self.max_new_tokens, self.generate = kind, max_new_tokens, generate
        if not generate:
            self.keys, self.primary = ("prob", "truth_ratio"), "prob"

    def bind(self, datamodule, split: str) -> None:
        if self.kind is None:
            self.kind = getattr(datamodule, "tofu_kinds", {}).get(split, "retain")

    def rouge_recall(self, reference: str, generated: str) -> float:
        return rouge_l(reference, generated, stemmer=True).recall

    def update(self, module: Scorer, batch: dict) -> None:
        if self.kind is None:
            self.bind(None, batch.get("split"))  # built outside a data module: the retain formulas
        n = batch["input_ids"].size(0)
        for field in ("perturbed_answer",) + (("paraphrased_answer",) if self.kind in ("forget", "retain") else ()):
            if field not in batch or any(v is None for v in batch[field]):
                raise EvalError(f"split {batch.get('split')!r}: the TOFU evaluator needs every row's {field!r} "
                                "(use the *_perturbed TOFU sets for evaluation)")
        prompts = batch["prompt"]
        # the gold answer from the batch's teacher-forced forward when another evaluator reads it too (MIA on
        # forget); alone, it is scored with the row's other answers, which share its prompt (EvalSuite)
        alone = not getattr(module, "forward_shared", lambda ev: True)(self)
        # every row's paraphrased and perturbed answers (the data module's scored continuations, under the same
        # answer template as the gold answer), scored together in length-sorted batches
        with_para = self.kind in ("forget", "retain")
        groups = [([batch["answer"][i]] if alone else []) + ([batch["paraphrased_answer"][i]] if with_para else [])
                  + list(pert) for i, pert in enumerate(batch["perturbed_answer"])]
        scored = module.answer_nlls(prompts, groups)
        if alone:
            answer_nll, scored = [g[0] for g in scored], [g[1:] for g in scored]
        else:
            answer_nll = module.teacher_forced(batch).mean_nll.double().tolist()
        para_nll = [g[0] for g in scored] if with_para else answer_nll
        pert_nll = [g[1:] if with_para else g for g in scored]
        references = batch.get("answer_text") or [a.strip() for a in batch["answer"]]
        rows = []
        for i, key in enumerate(self.row_keys(batch)):
            ratio = math.exp(sum(pert_nll[i]) / len(pert_nll[i]) - para_nll[i])
            p_true = math.exp(-answer_nll[i])
            prob = p_true if self.kind in ("forget", "retain") else \
                p_true / (p_true + sum(math.exp(-x) for x in pert_nll[i]))
            rows.append({**key, "question": batch.get("question", [None] * n)[i], "answer": references[i],
                         "generated": None, "prob": prob, "rouge": None, "truth_ratio_raw": ratio,
                         "answer_nll": answer_nll[i], "paraphrased_nll": para_nll[i], "perturbed_nll": pert_nll[i]})
        self.rows.extend(rows)
        if self.generate:
            def score(texts: list[str]) -> None:  # the generations, when the suite has them (pooled over splits)
                for row, text in zip(rows, texts):
                    row["generated"] = text.strip()
                    row["rouge"] = self.rouge_recall(row["answer"], row["generated"])

            generate_later(module, prompts, self.max_new_tokens, score)

    def summarize(self, rows: list[dict]) -> dict[str, float]:
        n = max(1, len(rows))
        if self.kind == "forget":
            tr = [min(r["truth_ratio_raw"], 1.0 / r["truth_ratio_raw"]) for r in rows]
        else:
            tr = [max(0.0, 1.0 - 1.0 / r["truth_ratio_raw"]) for r in rows]
        out = {"prob": math.fsum(r["prob"] for r in rows) / n}
        if self.generate:
            out["rouge"] = math.fsum(r["rouge"] for r in rows) / n
        return {**out, "truth_ratio": math.fsum(tr) / n}

    def __repr__(self) -> str:
        return f"TOFUEvaluator(kind={self.kind!r}, max_new_tokens={self.max_new_tokens}, generate={self.generate})"


def harmonic_mean(values: list[float]) -> float:
    """n / sum(1/v); 0 when any value is 0 (the limit), as scipy.stats.hmean."""
    if any(v <= 0 for v in values):
        return 0.0
    return len(values) / math.fsum(1.0 / v for v in values)


def read_reference(directory: str | Path, split: str, evaluator: str) -> tuple[Path, list[dict]]:
    """The rows another run (the retain-only model) wrote for ``split`` / ``evaluator``."""
    path = Path(directory) / f"{split}.{evaluator}.jsonl"
    if not path.is_file():
        raise EvalError(f"--data.reference: {path} does not exist; point it at the rows folder of the retain-only "
                        "model's evaluation (e.g. checkpoints/tofu/retain/rows/after)")
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                raise EvalError(f"--data.reference: {path} line {n} is not valid JSON") from None
    return path, rows


def matched(ours: list[dict], path: Path, theirs: list[dict], fields: tuple[str, ...] = ("question",)) -> list[dict]:
    """The rows of ``theirs`` with the ids of ``ours``, in the order of ``ours``; refused unless ``theirs`` holds
    every row of ours (ids and ``fields``). A reference evaluated on a whole set serves an evaluation of part of it
    (one request of a sequence)."""
    by_id = {r["id"]: r for r in theirs}
    missing = sorted({r["id"] for r in ours} - set(by_id))
    if missing:
        raise EvalError(f"--data.reference: {path} holds other rows than this evaluation ({len(theirs)} vs "
                        f"{len(ours)} rows; e.g. id {missing[0]!r} is not in the reference): refusing to compare")
    for r in ours:
        for f in fields:
            if r.get(f) != by_id[r["id"]].get(f):
                raise EvalError(f"--data.reference: {path} row {r['id']!r} has another {f} than this evaluation's: "
                                "refusing to compare")
    return [by_id[r["id"]] for r in ours]


class TOFUSummary(Aggregate):
    """``model_utility`` and, with a reference, ``forget_quality`` (module docstring); also ``model_utility_tf``, the
    teacher-forced part of model utility: the harmonic mean of the six values {prob, truth_ratio} x {retain, real
    authors, world facts}, with no generation (what a sweep's proxy evaluation can compute; not TOFU's MU)."""

    name = "tofu"
    keys: ClassVar[tuple[str, ...]] = ("model_utility", "model_utility_tf", "forget_quality")

    def __init__(self, forget: str = "forget", utility: tuple[str, ...] = UTILITY_SPLITS,
                 reference: str | None = None):
        self.forget, self.utility, self.reference = forget, utility, reference

    def compute(self, rows: dict, results: dict) -> dict[str, float]:
        out = {}
        if all(s in results for s in self.utility):
            if all("rouge" in results[s] for s in self.utility):
                out["model_utility"] = harmonic_mean([results[s][k] for s in self.utility
                                                      for k in ("prob", "rouge", "truth_ratio")])
            out["model_utility_tf"] = harmonic_mean([results[s][k] for s in self.utility
                                                     for k in ("prob", "truth_ratio")])
        if self.reference is not None and "tofu" in rows.get(self.forget, {}):
            from scipy.stats import ks_2samp

            ours = rows[self.forget]["tofu"]
            path, theirs = read_reference(self.reference, self.forget, "tofu")
            theirs = matched(ours, path, theirs)
            out["forget_quality"] = float(ks_2samp([r["truth_ratio_raw"] for r in ours],
                                                   [r["truth_ratio_raw"] for r in theirs]).pvalue)
        return out
