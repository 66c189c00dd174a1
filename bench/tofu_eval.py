"""Speed of the TOFU evaluation: lit_unlearn's evaluators against a plain transformers loop, in one process.

    python bench/tofu_eval.py                       # SmolLM2-135M-Instruct, 8 rows of each of the four sets
    python bench/tofu_eval.py --rows 16 --max-new-tokens 48 --json bench/results/tofu-eval-cpu.json

Both compute the same numbers over the same rows of TOFU's four evaluation sets (forget01, retain, real authors,
world facts): each row's answer probability, the paraphrased and perturbed answers' NLL (truth ratio) and a greedy
generation of ``--max-new-tokens`` for ROUGE-L.

* ``lit``: ``EvalSuite`` with the ``tofu`` evaluators: batched teacher-forced forwards (the paraphrased and
  perturbed answers of a batch scored together, in length-sorted chunks) and batched greedy generation with left
  padding and the KV cache.
* ``plain``: what peer code does: per row, ``model.generate`` on that row alone, then one forward pass per
  answer (gold, paraphrased, each perturbed).

It prints the wall time of each, tokens per second (teacher-forced tokens scored + tokens generated, the same
count for both) and their ratio, and checks that the two agree on every metric (the largest difference is
printed: batched and one-by-one matrix products round differently in the last bits). The datasets are read by hub
id: offline, set ``LIT_UNLEARN_DATA`` to the mirror (docs/data.md). Not a test: CI does not run it.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

if not __package__:  # run as a file: import this checkout's package ``bench`` (bench/throughput.py does the same)
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    import bench  # noqa: F401
    sys.path.pop(0)

SETS = {"forget": "forget", "retain_eval": "retain", "real_authors": "real_authors", "world_facts": "world_facts"}


def build(model: str, rows: int, max_new_tokens: int):
    from lit_unlearn.adapters import LoRA
    from lit_unlearn.data import TOFUDataModule
    from lit_unlearn.methods import Finetune

    torch.manual_seed(0)
    method = Finetune(model=model, adapter=LoRA(r=8, alpha=16))  # a fresh LoRA: the base model's numbers
    method.configure_model()
    method.lm.eval()
    dm = TOFUDataModule(forget_split="forget01", mini=rows, max_rows={"forget": rows}, tokenizer=model,
                        evaluator_args={"tofu": {"max_new_tokens": max_new_tokens}}, eval_batch_size=16,
                        max_length=512)
    dm.setup("validate")
    return method, dm


def run_lit(method, dm) -> dict:
    from lit_unlearn.eval import EvalSuite

    suite = EvalSuite({s: [e for e in dm.evaluators_for(s) if e.name == "tofu"] for s in SETS})
    for loader, split in zip(dm.val_dataloader(), dm.eval_split_names):
        if split in SETS:
            for batch in loader:
                suite.update(method, batch)
    return suite.compute()


def run_plain(method, dm, max_new_tokens: int) -> dict:
    """One row at a time, one forward per answer: the reference loop (same tokenization and metrics), shared with
    bench/eval_speed.py."""
    from bench.eval_speed import plain_tofu_sets

    return plain_tofu_sets(method.lm, method.tokenizer, dm, max_new_tokens)


def work_tokens(dm, max_new_tokens: int) -> int:
    """Teacher-forced tokens (prompt + answer, every answer of every row) plus the generation budget."""
    from lit_unlearn.core.tokens import encode

    tok, total = dm.tokenizer, 0
    for split in SETS:
        for r in dm.datasets[split].rows:
            answers = [r["answer"], *r["perturbed_answer"]]
            if r.get("paraphrased_answer") is not None:
                answers.append(r["paraphrased_answer"])
            total += sum(len(encode(tok, r["prompt"], a)["input_ids"]) for a in answers) + max_new_tokens
    return total


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--rows", type=int, default=8, help="rows of each of the four evaluation sets")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--json", default=None, help="write the result here")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    method, dm = build(args.model, args.rows, args.max_new_tokens)
    tokens = work_tokens(dm, args.max_new_tokens)
    run_lit(method, dm)  # warm-up (first-call allocations, the lean-head probe)
    t0 = time.perf_counter()
    lit = run_lit(method, dm)
    t_lit = time.perf_counter() - t0
    t0 = time.perf_counter()
    plain = run_plain(method, dm, args.max_new_tokens)
    t_plain = time.perf_counter() - t0
    diff = max(abs(lit[s][k] - plain[s][k]) for s in SETS for k in plain[s])
    result = {"model": args.model, "rows_per_set": args.rows, "max_new_tokens": args.max_new_tokens,
              "threads": torch.get_num_threads(), "torch": torch.__version__, "machine": platform.machine(),
              "tokens": tokens, "lit_s": round(t_lit, 2), "plain_s": round(t_plain, 2),
              "lit_tokens_per_s": round(tokens / t_lit, 1), "plain_tokens_per_s": round(tokens / t_plain, 1),
              "speedup": round(t_plain / t_lit, 2), "max_metric_difference": diff, "lit": lit, "plain": plain}
    print(f"TOFU evaluation, {args.rows} rows x 4 sets, {args.max_new_tokens} new tokens, {tokens} tokens of work, "
          f"{torch.get_num_threads()} threads")
    print(f"  lit    {t_lit:8.1f} s  {tokens / t_lit:8.1f} tokens/s")
    print(f"  plain  {t_plain:8.1f} s  {tokens / t_plain:8.1f} tokens/s")
    print(f"  lit is {t_plain / t_lit:.2f}x the plain loop; largest metric difference {diff:.2e}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
