"""Evaluation speed: ``eval.py``'s loop against minimal plain-transformers loops that compute the same numbers.

    python bench/eval_speed.py                                 # SmolLM2-135M-Instruct, CPU-sized rows
    python bench/eval_speed.py --tofu-rows 16 --mcq-rows 64 --json bench/results/eval-speed-cpu.json

In one process, on the same rows and the same model (the embedded SmolLM2, no adapter), four workloads:

* ``tofu``: TOFU mini's four evaluation sets (``--tofu-rows`` rows each) with ROUGE generations of
  ``--max-new-tokens`` and the membership attacks on forget and holdout (``--tofu-rows`` rows each): model utility,
  the per-set probability / ROUGE / truth ratio and the four attacks' AUCs;
* ``tofu_scripts``: the same TOFU evaluation against per-metric plain scripts instead of the per-row loop: one
  batched pass per metric (probability, truth ratio, ROUGE generations, membership attacks), each in batches of 16
  with padding, sharing nothing (the model loaded once for all four: their load time is not counted);
* ``mia``: the membership attacks alone on the same forget and holdout rows;
* ``mcq``: multiple-choice accuracy on ``--mcq-rows`` MMLU questions (``cais/mmlu``, college biology and
  computer science, read by hub id);
* ``label``: SST-2 label accuracy on ``--label-rows`` rows (``karuna-bhaila/Unlearning_SST2v3@test_forget``).

``lit`` is what ``eval.py`` runs: ``Trainer.validate`` with the data module's loaders and the evaluators it names
(Lightning's loop, collation, the suite's shared forward, length-sorted batches). ``plain`` is what a script
without the framework does, one row at a time: ``model(...)`` on that row's tokens, ``.logits`` read where the
metric needs them (a float64 log-softmax / cross-entropy over them, as eval.py's sums are float64; the letter
logits for MCQ), ``model.generate`` per prompt. Both use the same tokenization (the data module's records) and
formulas, and every number is asserted equal to 1e-5 (relative, ``--tolerance``; 1e-6 absolute) before any time is
printed. (With a float32 cross-entropy the plain loop's forget probability was 1.2e-5 from a float64 computation of
the same rows and eval.py's 6e-8: docs/benchmarks.md.) Printed: wall time of each side and their ratio (plain /
lit: above 1 means eval.py is faster), and the same for the process's CPU time (with ``--threads 1`` on a machine
that other jobs share, the CPU ratio is the one that does not move with their load; on an idle machine the two
agree). Datasets by hub id: offline, set ``LIT_UNLEARN_DATA`` to the mirror (docs/data.md). Not a test: CI does not
run it.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
import zlib

import torch

TOFU_SETS = {"forget": "forget", "retain_eval": "retain", "real_authors": "real_authors", "world_facts": "world_facts"}
SCORES = ("loss", "zlib", "mink", "minkpp")


def validate(model, dm) -> dict:
    """``eval.py``'s evaluation of ``dm`` with ``model``: one ``Trainer.validate``; ``{split: {key: value}}``."""
    import lightning as L

    model.suite = None  # the suite is the data module's: a new one per workload
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, inference_mode=False)
    trainer.validate(model, datamodule=dm, verbose=False)
    return model.last_eval


# ---- the plain loops --------------------------------------------------------------------------------------------
def row_logits(lm, rec: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(answer positions' logits (n, V), the answer tokens (n,)) of one encoded record, from one forward."""
    ids = torch.tensor([rec["input_ids"]])
    labels = torch.tensor(rec["labels"])
    logits = lm(input_ids=ids).logits[0, :-1]
    target = labels[1:]
    keep = target != -100
    return logits[keep], target[keep]


def plain_mia(lm, rec: dict, k: float) -> dict:
    return mia_scores(*row_logits(lm, rec), rec["answer_text"], k)


def mia_scores(logits: torch.Tensor, target: torch.Tensor, text: str, k: float) -> dict:
    """The four attacks' scores of one row from its answer positions' logits."""
    logp = torch.log_softmax(logits.double(), -1)
    lp = logp.gather(1, target[:, None]).squeeze(1)
    p = logp.exp()
    mu = (p * logp).sum(-1)
    sigma = (p * (logp - mu[:, None]) ** 2).sum(-1).sqrt()
    z = (lp - mu) / sigma
    m = max(1, int(k * lp.numel()))
    return {"loss": float(lp.mean()), "zlib": float(lp.mean()) / len(zlib.compress(text.encode())),
            "mink": float(lp.sort().values[:m].mean()), "minkpp": float(z.sort().values[:m].mean())}


def auc(members: list[float], nonmembers: list[float]) -> float:
    """Mann-Whitney: the share of (member, non-member) pairs ordered right, ties counting half."""
    pairs = [(a > b) + 0.5 * (a == b) for a in members for b in nonmembers]
    return sum(pairs) / len(pairs)


@torch.no_grad()
def plain_tofu_sets(lm, tok, dm, max_new_tokens: int) -> dict:
    """TOFU's per-set probability, ROUGE-L recall and truth ratio, one row at a time: ``model.generate`` on the row
    alone, then one forward per answer (gold, paraphrased, each perturbed)."""
    from rouge_score import rouge_scorer

    from lit_unlearn.core.tokens import encode

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)

    def nll(prompt: str, answer: str) -> float:
        rec = encode(tok, prompt, answer)
        logits, target = row_logits(lm, rec)
        return float(torch.nn.functional.cross_entropy(logits.double(), target))

    out: dict = {}
    for split, kind in TOFU_SETS.items():
        prob, rouge, tr = [], [], []
        for r in dm.datasets[split].rows:
            ids = tok(r["prompt"], return_tensors="pt")
            gen = lm.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                              pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
            text = tok.decode(gen[0, ids["input_ids"].size(1):], skip_special_tokens=True).strip()
            rouge.append(scorer.score(r["answer_text"], text)["rougeL"].recall)
            gold = nll(r["prompt"], r["answer"])
            para = nll(r["prompt"], r["paraphrased_answer"]) if kind in ("forget", "retain") else gold
            pert = [nll(r["prompt"], a) for a in r["perturbed_answer"]]
            ratio = math.exp(sum(pert) / len(pert) - para)
            p = math.exp(-gold)
            prob.append(p if kind in ("forget", "retain") else p / (p + sum(math.exp(-x) for x in pert)))
            tr.append(min(ratio, 1 / ratio) if kind == "forget" else max(0.0, 1 - 1 / ratio))
        n = len(prob)
        out[split] = {"prob": math.fsum(prob) / n, "rouge": math.fsum(rouge) / n, "truth_ratio": math.fsum(tr) / n}
    return out


@torch.no_grad()
def plain_tofu(lm, tok, dm, max_new_tokens: int, k: float, generate: bool = True) -> dict:
    """TOFU's sets and model utility (``generate``), then the membership attacks' AUCs on forget vs holdout."""
    from lit_unlearn.eval.tofu import harmonic_mean

    out: dict = {}
    if generate:
        out = plain_tofu_sets(lm, tok, dm, max_new_tokens)
        out["tofu"] = {"model_utility": harmonic_mean([out[s][m] for s in ("retain_eval", "real_authors", "world_facts")
                                                       for m in ("prob", "rouge", "truth_ratio")])}
    scores = {s: [plain_mia(lm, r, k) for r in dm.datasets[s].rows] for s in ("forget", "holdout")}
    out["mia"] = {f"auc_{s}": auc([r[s] for r in scores["forget"]], [r[s] for r in scores["holdout"]])
                  for s in SCORES}
    return out


# ---- the per-metric scripts: each metric its own batched pass, as a script per metric computes it -----------------
def batched_logits(lm, tok, recs: list[dict], batch_size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Each record's (answer positions' logits, answer tokens), in batches of ``batch_size`` in the given order,
    right-padded, one forward per batch (``model(input_ids, attention_mask).logits``)."""
    out = []
    for s in range(0, len(recs), batch_size):
        part = recs[s:s + batch_size]
        w = max(len(r["input_ids"]) for r in part)
        ids = torch.full((len(part), w), tok.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(part), w), dtype=torch.long)
        for j, r in enumerate(part):
            ids[j, :len(r["input_ids"])], mask[j, :len(r["input_ids"])] = torch.tensor(r["input_ids"]), 1
        logits = lm(input_ids=ids, attention_mask=mask).logits
        for j, r in enumerate(part):
            target = torch.tensor(r["labels"])[1:]
            keep = target != -100
            out.append((logits[j, :len(r["input_ids"]) - 1][keep], target[keep]))
    return out


@torch.no_grad()
def per_metric_scripts(lm, tok, dm, max_new_tokens: int, k: float, batch_size: int = 16) -> dict:
    """TOFU (4 sets + MIA) as four plain scripts compute it, one after the other: probability (gold answers; on real
    authors / world facts the perturbed ones too, for the normalisation), truth ratio (paraphrased and perturbed;
    the gold as paraphrase where there is none), ROUGE (``model.generate`` in batches, left padding) and the
    membership attacks (forget and holdout). Each batches its own rows (``batch_size``, dataset order) and shares
    nothing with the others."""
    from rouge_score import rouge_scorer

    from lit_unlearn.core.tokens import encode
    from lit_unlearn.eval.tofu import harmonic_mean

    def nlls(pairs: list[tuple[str, str]]) -> list[float]:
        scored = batched_logits(lm, tok, [encode(tok, p, a) for p, a in pairs], batch_size)
        return [float(torch.nn.functional.cross_entropy(lg.double(), t)) for lg, t in scored]

    def per_row(rows, answers) -> list[list[float]]:  # each row's answers' NLLs, scored in one batched pass
        flat = nlls([(r["prompt"], a) for r in rows for a in answers(r)])
        out, at = [], 0
        for r in rows:
            out.append(flat[at:at + len(answers(r))])
            at += len(answers(r))
        return out

    out: dict = {split: {} for split in TOFU_SETS}
    for split, kind in TOFU_SETS.items():  # script 1: probability
        rows = dm.datasets[split].rows
        if kind in ("forget", "retain"):
            probs = [math.exp(-x) for x in nlls([(r["prompt"], r["answer"]) for r in rows])]
        else:
            probs = [math.exp(-g[0]) / sum(math.exp(-x) for x in g)
                     for g in per_row(rows, lambda r: [r["answer"], *r["perturbed_answer"]])]
        out[split]["prob"] = math.fsum(probs) / len(rows)
    for split, kind in TOFU_SETS.items():  # script 2: truth ratio
        rows = dm.datasets[split].rows
        first = "paraphrased_answer" if kind in ("forget", "retain") else "answer"
        trs = []
        for g in per_row(rows, lambda r: [r[first], *r["perturbed_answer"]]):
            ratio = math.exp(sum(g[1:]) / len(g[1:]) - g[0])
            trs.append(min(ratio, 1 / ratio) if kind == "forget" else max(0.0, 1 - 1 / ratio))
        out[split]["truth_ratio"] = math.fsum(trs) / len(rows)
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    side = tok.padding_side
    tok.padding_side = "left"
    for split in TOFU_SETS:  # script 3: ROUGE of greedy generations
        rows, rouge = dm.datasets[split].rows, []
        for s in range(0, len(rows), batch_size):
            part = rows[s:s + batch_size]
            enc = tok([r["prompt"] for r in part], return_tensors="pt", padding=True)
            gen = lm.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                              pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
            for r, g in zip(part, gen[:, enc["input_ids"].size(1):]):
                text = tok.decode(g, skip_special_tokens=True).strip()
                rouge.append(scorer.score(r["answer_text"], text)["rougeL"].recall)
        out[split]["rouge"] = math.fsum(rouge) / len(rows)
    tok.padding_side = side
    out["tofu"] = {"model_utility": harmonic_mean([out[s][m] for s in ("retain_eval", "real_authors", "world_facts")
                                                   for m in ("prob", "rouge", "truth_ratio")])}
    scores = {}
    for split in ("forget", "holdout"):  # script 4: the membership attacks
        rows = dm.datasets[split].rows
        scores[split] = [mia_scores(lg, t, r["answer_text"], k)
                         for (lg, t), r in zip(batched_logits(lm, tok, rows, batch_size), rows)]
    out["mia"] = {f"auc_{s}": auc([r[s] for r in scores["forget"]], [r[s] for r in scores["holdout"]])
                  for s in SCORES}
    return out


@torch.no_grad()
def plain_mcq(lm, tok, dm, split: str) -> dict:
    from lit_unlearn.eval.mcq import letter_token_ids

    ids = letter_token_ids(tok, "bare")
    hits = []
    for r in dm.datasets[split].rows:
        z = lm(input_ids=tok(r["prompt"], return_tensors="pt")["input_ids"]).logits[0, -1, ids]
        hits.append(int(z.argmax()) == r["gold"])
    return {split: {"mcq_acc": sum(hits) / len(hits)}}


@torch.no_grad()
def plain_label(lm, tok, dm, split: str) -> dict:
    hits = []
    for r in dm.datasets[split].rows:
        logits, target = row_logits(lm, r)
        hits.append(bool((logits.argmax(-1) == target).all()))
    return {split: {"label_acc": sum(hits) / len(hits)}}


# ---- workloads ----------------------------------------------------------------------------------------------------
def compare(lit: dict, plain: dict, name: str, tolerance: float = 1e-5) -> float:
    """The largest relative difference over every number the plain loop computed; fails above ``tolerance``."""
    worst = 0.0
    for split, values in plain.items():
        for key, want in values.items():
            got = lit[split][key]
            diff = abs(got - want) / max(abs(want), 1e-1)
            worst = max(worst, diff)
            if not math.isclose(got, want, rel_tol=tolerance, abs_tol=1e-6):
                raise SystemExit(f"{name}: {split}/{key} is {got!r} in eval.py's loop and {want!r} in the plain loop")
    return worst


def timed(fn, *args) -> tuple[float, float, object]:
    """(wall seconds, CPU seconds of this process, the result) of ``fn(*args)``."""
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn(*args)
    return time.perf_counter() - t0, time.process_time() - c0, out


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--tofu-rows", type=int, default=8, help="rows of each TOFU set (and of forget / holdout)")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--mcq-rows", type=int, default=48)
    p.add_argument("--label-rows", type=int, default=48)
    p.add_argument("--workloads", default="tofu,mia,mcq,label")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--json", default=None, help="write the result here")
    p.add_argument("--tolerance", type=float, default=1e-5, help="largest relative difference allowed (1e-5)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from lit_unlearn.data import MCQDataModule, SST2DataModule, TOFUDataModule
    from lit_unlearn.eval.module import ScoredModel

    torch.manual_seed(0)
    model = ScoredModel(model=args.model, max_length=512)
    model.configure_model()
    model.lm.eval()
    lm, tok = model.lm, model.tokenizer
    k = 0.4
    n = args.tofu_rows
    tofu_args = dict(forget_split="forget01", mini=n, max_rows={"forget": n, "holdout": n}, tokenizer=args.model,
                     eval_batch_size=16, max_length=512,
                     evaluator_args={"tofu": {"max_new_tokens": args.max_new_tokens}, "mia": {"k": k}})
    mcq_split = "mmlu"
    workloads = {
        "tofu": (lambda: TOFUDataModule(**tofu_args),
                 lambda dm: plain_tofu(lm, tok, dm, args.max_new_tokens, k)),
        "tofu_scripts": (lambda: TOFUDataModule(**tofu_args),
                         lambda dm: per_metric_scripts(lm, tok, dm, args.max_new_tokens, k)),
        "mia": (lambda: TOFUDataModule(**tofu_args, evaluators={
                    "forget": ["mia"], "holdout": ["mia"], "retain_eval": [], "real_authors": [], "world_facts": []}),
                lambda dm: plain_tofu(lm, tok, dm, args.max_new_tokens, k, generate=False)),
        "mcq": (lambda: MCQDataModule(forget="cais/mmlu:college_biology@test", eval_splits={
                    mcq_split: ["cais/mmlu:college_biology@test", "cais/mmlu:college_computer_science@test"]},
                    max_rows={mcq_split: args.mcq_rows}, evaluators={"forget": []}, tokenizer=args.model,
                    eval_batch_size=16, max_length=1024),
                lambda dm: plain_mcq(lm, tok, dm, mcq_split)),
        "label": (lambda: SST2DataModule(forget="karuna-bhaila/Unlearning_SST2v3@test_forget",
                                         max_rows=args.label_rows, evaluators={"forget": ["label"]},
                                         tokenizer=args.model, eval_batch_size=16, max_length=512),
                  lambda dm: plain_label(lm, tok, dm, "forget")),
    }
    result = {"model": args.model, "threads": torch.get_num_threads(), "torch": torch.__version__,
              "machine": platform.machine(), "tofu_rows": n, "max_new_tokens": args.max_new_tokens,
              "mcq_rows": args.mcq_rows, "label_rows": args.label_rows, "tolerance": args.tolerance, "workloads": {}}
    print(f"{'workload':<10}{'rows':>6}{'eval.py s':>12}{'plain s':>10}{'plain/lit':>11}{'lit cpu':>10}"
          f"{'plain cpu':>10}{'cpu ratio':>10}{'max rel diff':>14}")
    for name in args.workloads.split(","):
        build, plain_fn = workloads[name]
        dm = build()
        dm.setup("validate")
        rows = sum(len(dm.datasets[s]) for s in dm.eval_split_names)
        validate(model, dm)  # warm-up: first-call allocations, the lean-head probe
        t_lit, c_lit, lit = timed(validate, model, dm)
        t_plain, c_plain, plain = timed(plain_fn, dm)
        diff = compare(lit, plain, name, args.tolerance)
        result["workloads"][name] = {"rows": rows, "lit_s": round(t_lit, 2), "plain_s": round(t_plain, 2),
                                     "ratio": round(t_plain / t_lit, 2), "lit_cpu_s": round(c_lit, 2),
                                     "plain_cpu_s": round(c_plain, 2), "cpu_ratio": round(c_plain / c_lit, 2),
                                     "max_rel_diff": diff, "lit": {s: lit[s] for s in plain}, "plain": plain}
        print(f"{name:<10}{rows:>6}{t_lit:>12.1f}{t_plain:>10.1f}{t_plain / t_lit:>11.2f}{c_lit:>10.1f}"
              f"{c_plain:>10.1f}{c_plain / c_lit:>10.2f}{diff:>14.1e}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    main()
