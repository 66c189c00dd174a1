"""Empty greedy generations on TOFU mini under the plain prompt and under the model's chat template.

    python bench/tofu_templates.py                       # SmolLM2-135M-Instruct, 40 rows of each TOFU mini set
    python bench/tofu_templates.py --rows 40 --max-new-tokens 48 --json bench/results/tofu-templates-cpu.json

For each of TOFU mini's four evaluation sets (forget01 and 40 seeded rows of retain, real authors and world facts,
as ``configs/tofu/mini.yaml``), the base model (no adapter) generates greedily from each row's prompt, once with
``template: plain`` (``Question: {q}\\nAnswer:``) and once with ``template: auto`` (the tokenizer's chat template),
through the evaluator's own generation (:meth:`lit_unlearn.models.scorer.Scorer.generate`). It prints, per set and
template, the rows whose generation is empty after stripping whitespace, and the mean ROUGE-L recall of the
generations against the answers (the ``tofu`` evaluator's scorer). Datasets by hub id: offline, set
``LIT_UNLEARN_DATA`` to the mirror (docs/data.md). Not a test: CI does not run it.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

SETS = ("forget", "retain_eval", "real_authors", "world_facts")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--rows", type=int, default=40)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)

    from lit_unlearn.data import TOFUDataModule
    from lit_unlearn.eval import TOFUEvaluator
    from lit_unlearn.eval.module import ScoredModel

    torch.manual_seed(0)
    model = ScoredModel(model=args.model, max_length=512)
    model.configure_model()
    rouge = TOFUEvaluator("retain").rouge_recall
    out: dict = {"model": args.model, "rows": args.rows, "max_new_tokens": args.max_new_tokens, "sets": {}}
    for template in ("plain", "auto"):
        dm = TOFUDataModule(forget_split="forget01", mini=args.rows, max_rows={"forget": args.rows},
                            tokenizer=args.model, template=template, max_length=512)
        dm.setup("validate")
        for split in SETS:
            rows = list(dm.datasets[split])
            t0 = time.perf_counter()
            texts = [t.strip() for t in model.generate([r["prompt"] for r in rows], args.max_new_tokens)]
            seconds = time.perf_counter() - t0
            empty = sum(not t for t in texts)
            score = sum(rouge(r["answer_text"], t) for r, t in zip(rows, texts)) / len(rows)
            out["sets"].setdefault(split, {})[template] = {"rows": len(rows), "empty": empty, "rouge": score,
                                                            "seconds": round(seconds, 1)}
            print(f"{split:<13}{template:<6} empty {empty:>3} / {len(rows):<3} ROUGE-L recall {score:.3f}  "
                  f"({seconds:.0f} s)", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return out


if __name__ == "__main__":
    main()
