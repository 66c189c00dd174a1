"""Throughput of lit_unlearn's unlearning step against two references, in one process, on one model shape.

Systems (all on a freshly built model from the same saved random weights, same seed, same batches):

* ``lit``   lit_unlearn as a user runs it: ``lightning.Trainer.fit`` on a method module (GradAscent, GradDiff,
            NPO with ``reference: adapter_off`` and NPO with ``reference: cached``; NPO with ``retain: nll``)
            over a LightningDataModule that yields ``{"forget": batch, "retain": batch}``.
* ``lit-logits``  the same with ``lean_head=False`` (full (B, T, V) logits): the ablation of the memory-lean head.
* ``(a)``   speed-of-light reference: a plain PyTorch + transformers + peft loop; forward, backward, AdamW step
            on one batch (forget + retain rows concatenated, CE loss).
* ``(b)``   the architecture of the original papers / open-unlearning: a ``transformers.Trainer`` subclass whose
            ``compute_loss`` runs forget and retain as two separate forward passes (NPO: plus a no-grad forward
            of the reference model, ``model.disable_adapter()``, every step); one backward by the Trainer.

Measured per system: median step time (a Lightning Callback / HF TrainerCallback / the loop itself, around the
step, ``torch.cuda.synchronize`` on GPU, warm-up steps dropped), tokens/s = non-pad tokens of the rows the step
feeds through the model / median step time, a loop-level "wall" tokens/s (all timed steps incl. data loading and
inter-step overhead), peak memory (CUDA: max_memory_allocated; CPU: approximate peak RSS increase sampled by a
thread) and the loss of the first step (the three systems see the same first batch with ``--data synthetic``, and
a fresh LoRA is the identity, so lit and (b) must agree there). On CPU one extra, untimed step per run measures the
exact peak of the tensors the step allocates (``StepMemory``, the profiler's memory timeline).

    python bench/throughput.py --shape tiny                          # CPU, a few minutes
    python bench/throughput.py --shape llama-1b --device cuda        # bf16, LoRA r=16 on all projections
    python bench/throughput.py --shape llama-8b-nf4 --device cuda    # nf4 QLoRA (bitsandbytes)

Random weights: the model directory is written once from a Llama config (``lit_unlearn.testing``'s tiny tokenizer,
320 tokens); ``--vocab`` builds the model with a larger vocabulary (GPU shapes default to Llama-3's 128256) so that
the LM head costs what it costs on the real model. Token ids are drawn over the model's whole vocabulary.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

if not __package__:  # run as a file (python bench/throughput.py, from any directory): import the package ``bench``
    # of this checkout, then give sys.path back as a script has it, so lit_unlearn resolves as it always did
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    import bench  # noqa: F401
    sys.path.pop(0)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from bench.measure import Run, free_memory  # noqa: E402
from bench.report import markdown_table, print_report, summarise, write_json  # noqa: E402
from bench.systems import METHODS, SYSTEMS, plan, quiet, run_plain, run_system  # noqa: E402
from bench.workload import IGNORE, SHAPES, build_model_dir, make_rows  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--shape", choices=sorted(SHAPES), default="tiny")
    p.add_argument("--device", choices=["cpu", "cuda"], default=None, help="default: the shape's (tiny: cpu)")
    p.add_argument("--methods", default="GradAscent,GradDiff,NPO",
                   help="comma list of GradAscent, GradDiff, NPO (= NPO:adapter_off + NPO:cached), NPO:adapter_off,"
                        " NPO:cached")
    p.add_argument("--steps", type=int, default=None, help="timed steps per system and round")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (>= --pool so NPO's cache is full)")
    p.add_argument("--rounds", type=int, default=None,
                   help="repeat every system; odd rounds run in reverse order; step times are pooled")
    p.add_argument("--batch", type=int, default=None, help="forget rows per step (and as many retain rows)")
    p.add_argument("--seq-len", type=int, default=None, help="tokens per row (prompt + answer)")
    p.add_argument("--answer-frac", type=float, default=0.5, help="fraction of each row that is the (scored) answer")
    p.add_argument("--pool", type=int, default=None, help="distinct batches per split (the data cycles over them)")
    p.add_argument("--vocab", type=int, default=None,
                   help="model vocabulary (default: shape's; tiny: the tiny tokenizer's 320)")
    p.add_argument("--dtype", default=None, help="override the shape's dtype (float32, bfloat16)")
    p.add_argument("--quantize", default=None, choices=["none", "nf4", "int8"], help="override the shape's quantize")
    p.add_argument("--attn", default="auto", help="attention backend for all systems; auto = lit_unlearn's choice")
    p.add_argument("--lora-r", type=int, default=16)
    p.add_argument("--lora-alpha", type=float, default=32.0)
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--beta", type=float, default=0.1, help="NPO beta")
    p.add_argument("--hf-optim", default="adamw_torch",
                   help="TrainingArguments.optim of (b); adamw_torch = torch.optim.AdamW as in lit and (a)")
    p.add_argument("--data", choices=["synthetic", "qa"], default="synthetic",
                   help="synthetic: in-bench DataModule of fixed-length random ids (same batch order in all systems);"
                        " qa: lit_unlearn's QADataModule over generated JSONL rows of exactly --seq-len tokens")
    p.add_argument("--systems", default="a,b,lit",
                   help="comma list of a, b, lit, lit-logits (lit with lean_head=False: full (B, T, V) logits)")
    p.add_argument("--lit-cli-logging", action="store_true",
                   help="lit with the CLI's logging (TensorBoardLogger, log_every_n_steps=1) instead of logger=False")
    p.add_argument("--model-dir", default=None, help="where the random model is written/reused")
    p.add_argument("--threads", type=int, default=None,
                   help="torch.set_num_threads; tiny: 1 (on a shared 2-core machine 2 threads were ~10x slower)")
    p.add_argument("--process-warmup", action=argparse.BooleanOptionalAction, default=None,
                   help="one untimed (a) step before everything, so that one-time process costs (kernel caches,"
                        " allocator pools) are not charged to the first system; default: on for cpu")
    p.add_argument("--step-memory", action=argparse.BooleanOptionalAction, default=None,
                   help="one extra, untimed step per run whose exact tensor-memory peak the profiler measures"
                        " (StepMemory); default: on for cpu (CUDA has max_memory_allocated)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="write all results to this JSON file")
    p.add_argument("--markdown", metavar="JSON", default=None,
                   help="print a saved --json result as the markdown table of docs/benchmarks.md, run nothing")
    args = p.parse_args(argv)
    shape = SHAPES[args.shape]
    for k in ("steps", "warmup", "rounds", "batch", "pool"):
        if getattr(args, k) is None:
            setattr(args, k, shape[k])
    args.seq_len = args.seq_len or shape["seq_len"]
    args.threads = args.threads or (shape.get("threads") if (args.device or shape["device"]) == "cpu" else None)
    args.device = args.device or shape["device"]
    if args.step_memory is None:
        args.step_memory = args.device == "cpu"
    if args.process_warmup is None:
        args.process_warmup = args.device == "cpu"
    args.vocab = args.vocab if args.vocab is not None else shape["vocab"]
    args.dtype = args.dtype or shape["dtype"]
    args.quantize = shape["quantize"] if args.quantize is None else (None if args.quantize == "none" else args.quantize)
    methods = []
    for m in args.methods.split(","):
        m = m.strip()
        methods += ["NPO:adapter_off", "NPO:cached"] if m == "NPO" else [m]
    bad = [m for m in methods if m not in METHODS]
    if bad:
        p.error(f"unknown method(s) {bad}; choose from GradAscent, GradDiff, NPO, NPO:adapter_off, NPO:cached")
    args.methods = list(dict.fromkeys(methods))
    args.systems = [s.strip() for s in args.systems.split(",")]
    unknown = sorted(set(args.systems) - set(SYSTEMS))
    if unknown:
        p.error(f"--systems: unknown {unknown}; choose from {', '.join(SYSTEMS)}")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda but torch.cuda.is_available() is False")
    if args.warmup < args.pool:
        print(f"[bench] note: --warmup {args.warmup} < --pool {args.pool}: NPO:cached still fills its cache in "
              "timed steps", file=sys.stderr)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.markdown:
        print(markdown_table(args.markdown))
        return 0
    quiet()
    if args.threads:
        torch.set_num_threads(args.threads)
    from lit_unlearn.models.loading import pick_attn_backend

    args.attn_impl = pick_attn_backend(args.attn)
    t_start = time.time()
    load_start = os.getloadavg() if hasattr(os, "getloadavg") else None
    model_dir = build_model_dir(args)
    from transformers import AutoConfig

    vocab = AutoConfig.from_pretrained(str(model_dir)).vocab_size
    rows_f, rows_r, qa_files = make_rows(args, model_dir, vocab)

    n_ans = int((rows_f["labels"][0] != IGNORE).sum())
    print(f"[bench] shape={args.shape} device={args.device} dtype={args.dtype} quantize={args.quantize} "
          f"attn={args.attn_impl} vocab={vocab} rows/step={args.batch}+{args.batch} x {args.seq_len} tokens "
          f"(answer {n_ans}) data={args.data} warmup={args.warmup} steps={args.steps} rounds={args.rounds} "
          f"threads={torch.get_num_threads()}", file=sys.stderr)

    if args.process_warmup:
        t0 = time.time()
        run_plain(argparse.Namespace(**{**vars(args), "warmup": 0, "steps": 1}), model_dir, rows_f, rows_r)
        free_memory()
        print(f"[bench] process warm-up (one untimed (a) step) {time.time() - t0:.1f}s", file=sys.stderr)

    order = plan(args)
    runs: list[Run] = []
    for rnd in range(args.rounds):
        for system, method in (order if rnd % 2 == 0 else order[::-1]):
            t0 = time.time()
            run = run_system(args, system, method, model_dir, rows_f, rows_r, qa_files)
            free_memory()
            run.round = rnd
            runs.append(run)
            med = statistics.median(run.step_s) * 1e3 if run.step_s else float("nan")
            print(f"[bench] round {rnd} {system:<3} {method:<16} median {med:8.1f} ms  "
                  f"loss@0 {run.first_loss if run.first_loss is not None else float('nan'):.4f}  "
                  f"({time.time() - t0:.1f}s)", file=sys.stderr)

    rows = summarise(runs)
    print_report(rows, args, vocab, t_start, load_start)
    if args.json:
        write_json(args.json, args, model_dir, vocab, rows, runs, t_start, load_start)
    return 0


if __name__ == "__main__":
    sys.exit(main())
