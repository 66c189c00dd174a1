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
import ctypes
import gc
import hashlib
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

IGNORE = -100

# ---------------------------------------------------------------------------------------------------------------
# shapes
# ---------------------------------------------------------------------------------------------------------------
SHAPES = {
    "tiny": dict(
        config=dict(hidden_size=256, layers=4, heads=4, kv_heads=2, intermediate_size=768, max_positions=256),
        vocab=None, tie=False, dtype="float32", quantize=None, device="cpu",
        batch=4, seq_len=128, warmup=3, steps=8, rounds=3, pool=2, threads=1,
    ),
    # SmolLM2-135M (the embedded model's shape, random weights): hidden 576, 30 layers, 9 heads, 3 kv heads,
    # intermediate 1536, vocab 49152, tied head. On a CPU: the LM head is ~1/5 of the forward's FLOPs, as in Llama-1B
    "smollm2-135m": dict(
        config=dict(hidden_size=576, layers=30, heads=9, kv_heads=3, intermediate_size=1536, max_positions=2048),
        vocab=49152, tie=True, dtype="float32", quantize=None, device="cpu",
        batch=4, seq_len=64, warmup=3, steps=4, rounds=2, pool=2, threads=1,
    ),
    # Llama-3.2-1B: hidden 2048, 16 layers, 32 heads, 8 kv heads, intermediate 8192, vocab 128256, tied head
    "llama-1b": dict(
        config=dict(hidden_size=2048, layers=16, heads=32, kv_heads=8, intermediate_size=8192, max_positions=2048),
        vocab=128256, tie=True, dtype="bfloat16", quantize=None, device="cuda",
        batch=4, seq_len=512, warmup=5, steps=20, rounds=2, pool=4,
    ),
    # Llama-3-8B: hidden 4096, 32 layers, 32 heads, 8 kv heads, intermediate 14336, vocab 128256; nf4 QLoRA
    "llama-8b-nf4": dict(
        config=dict(hidden_size=4096, layers=32, heads=32, kv_heads=8, intermediate_size=14336, max_positions=2048),
        vocab=128256, tie=False, dtype="bfloat16", quantize="nf4", device="cuda",
        batch=4, seq_len=512, warmup=5, steps=20, rounds=1, pool=4,
    ),
}

METHODS = ("GradAscent", "GradDiff", "NPO:adapter_off", "NPO:cached")
SYSTEMS = ("a", "b", "lit", "lit-logits")  # table order; lit-logits = lit with lean_head=False
HF_METHOD = {"GradAscent": "GradAscent", "GradDiff": "GradDiff", "NPO:adapter_off": "NPO", "NPO:cached": "NPO"}


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


# ---------------------------------------------------------------------------------------------------------------
# model directory
# ---------------------------------------------------------------------------------------------------------------
def build_model_dir(args) -> Path:
    """Write (or reuse) a random Llama of the shape, with lit_unlearn.testing's tiny tokenizer."""
    from lit_unlearn.testing import make_tiny_model, make_tokenizer, tiny_llama_config

    shape = SHAPES[args.shape]
    cfg_kw = shape["config"]
    tok = make_tokenizer()
    vocab = args.vocab or len(tok)
    save_dtype = "float32" if args.dtype == "float32" else "bfloat16"
    spec = json.dumps({**cfg_kw, "vocab": vocab, "tie": shape["tie"], "dtype": save_dtype, "seed": args.seed},
                      sort_keys=True)
    tag = f"{args.shape}_v{vocab}_{save_dtype}_s{args.seed}_{hashlib.sha1(spec.encode()).hexdigest()[:8]}"
    root = Path(args.model_dir) if args.model_dir else Path(tempfile.gettempdir()) / "lit_unlearn_bench" / tag
    if (root / "config.json").is_file() and (root / "tokenizer.json").is_file():
        return root
    t0 = time.time()
    if vocab == len(tok) and not shape["tie"] and save_dtype == "float32":
        make_tiny_model(root, seed=args.seed, **cfg_kw)
    else:
        from transformers import AutoModelForCausalLM

        cfg = tiny_llama_config(vocab, **cfg_kw)
        cfg.tie_word_embeddings = shape["tie"]
        cfg.pad_token_id, cfg.eos_token_id = tok.pad_token_id, tok.eos_token_id
        torch.manual_seed(args.seed)
        dev = "cuda" if torch.cuda.is_available() else "cpu"  # random init of 8B parameters is much faster on a GPU
        with torch.device(dev):
            model = AutoModelForCausalLM.from_config(cfg, dtype=getattr(torch, save_dtype))
        root.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(root)
        tok.save_pretrained(root)
        del model
        free_memory()
    print(f"[bench] wrote random model {root} in {time.time() - t0:.1f}s", file=sys.stderr)
    return root


# ---------------------------------------------------------------------------------------------------------------
# data: the same rows for all systems
# ---------------------------------------------------------------------------------------------------------------
def synthetic_rows(args, vocab: int, role: str) -> dict:
    """``pool * batch`` rows of exactly ``seq_len`` random ids (never the pad id 0); answer = the last part."""
    g = torch.Generator().manual_seed(args.seed * 1000 + (0 if role == "forget" else 1))
    n, L = args.pool * args.batch, args.seq_len
    ids = torch.randint(1, vocab, (n, L), generator=g)
    labels = ids.clone()
    prompt_len = L - max(1, int(round(args.answer_frac * L)))
    labels[:, :prompt_len] = IGNORE
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels, "index": torch.arange(n)}


_WORDS = ("where was the writer born in which city year did painter composer Lisbon Oslo Cairo Lima Dublin Prague "
          "Seoul Vienna quick brown fox jumps over lazy dog film funny dull long gripping answer question").split()


def qa_jsonl(path: Path, tokenizer, args, role: str) -> None:
    """JSONL rows whose ``Question: {q}\\nAnswer: {a}`` is exactly ``seq_len`` tokens (answer ~ answer_frac)."""
    import random

    from lit_unlearn.data.tokenize import encode

    rng = random.Random(f"{args.seed}:{role}")
    L = args.seq_len
    q_target = max(1, int(round((1 - args.answer_frac) * L)) - 4)
    rows = []
    for _ in range(args.pool * args.batch):
        q = ""
        while len(tokenizer("Question: " + q)["input_ids"]) < q_target:
            q += rng.choice(_WORDS) + " "
        q = q.strip() + "?"
        a = ""

        def n_tok(ans: str) -> int:
            return len(encode(tokenizer, f"Question: {q}\nAnswer:", " " + ans)["input_ids"])

        while n_tok(a + " " + rng.choice(_WORDS)) <= L:
            a = (a + " " + rng.choice(_WORDS)).strip()
        for _ in range(400):  # fine-tune the length one character at a time
            k = n_tok(a)
            if k == L:
                break
            a = a[:-1] if k > L else a + rng.choice("abcdefghijklmnopqrstuvwxyz.,")
        if n_tok(a) != L:
            raise RuntimeError(f"could not build a {role} row of exactly {L} tokens; use --data synthetic")
        rows.append({"question": q, "answer": a})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def qa_rows(dm, role: str) -> dict:
    rows = dm.datasets[role].rows
    ids = torch.tensor([r["input_ids"] for r in rows])
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids),
            "labels": torch.tensor([r["labels"] for r in rows]), "index": torch.tensor([r["index"] for r in rows])}


def batches(rows: dict, batch: int) -> list[dict]:
    n = rows["input_ids"].size(0)
    return [{k: v[i:i + batch] for k, v in rows.items()} for i in range(0, n, batch)]


def make_lit_datamodule(rows_f: dict, rows_r: dict, batch: int):
    """A tiny LightningDataModule with QADataModule's loader structure: a CombinedLoader of two DataLoaders."""
    import lightning as L
    from lightning.pytorch.utilities import CombinedLoader
    from torch.utils.data import DataLoader

    class Rows(torch.utils.data.Dataset):
        def __init__(self, rows):
            self.rows = rows

        def __len__(self):
            return self.rows["input_ids"].size(0)

        def __getitem__(self, i):
            return {k: v[i] for k, v in self.rows.items()}

    def collate(items):
        return {k: torch.stack([it[k] for it in items]) for k in items[0]}

    class FixedShapeData(L.LightningDataModule):
        def train_dataloader(self):
            loaders = {role: DataLoader(Rows(r), batch_size=batch, shuffle=False, collate_fn=collate)
                       for role, r in (("forget", rows_f), ("retain", rows_r))}
            return CombinedLoader(loaders, mode="max_size_cycle")

    return FixedShapeData()


# ---------------------------------------------------------------------------------------------------------------
# timing and memory
# ---------------------------------------------------------------------------------------------------------------
def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    try:  # give freed heap pages back to the OS so the next system's RSS baseline is honest
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


try:
    import psutil

    _PROC = psutil.Process()
except ImportError:  # fall back to /proc/self/statm (resident pages)
    _PROC = None


def _rss_bytes() -> int:
    if _PROC is not None:
        return _PROC.memory_info().rss
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakMemory:
    """CUDA: peak ``max_memory_allocated`` (weights + activations + optimizer). CPU: peak RSS increase over the
    baseline at entry, sampled every 5 ms by a thread (approximate: allocator reuse and sampling can hide peaks)."""

    def __init__(self, device: str):
        self.device, self.peak, self._stop = device, 0, threading.Event()

    def __enter__(self):
        free_memory()
        if self.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
            self.base = 0
        else:
            self.base = self.peak = _rss_bytes()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self):
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, _rss_bytes())

    def freeze(self) -> None:
        """Take the value now (before the memory-profiled step, whose profiler buffers would count otherwise)."""
        if hasattr(self, "value"):
            return
        if self.device == "cuda":
            torch.cuda.synchronize()
            self.value = torch.cuda.max_memory_allocated()
        else:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, _rss_bytes())
            self.value = self.peak - self.base

    def __exit__(self, *exc):
        self.freeze()
        return False


@dataclass
class Run:
    system: str  # a | b | lit
    method: str  # lit/b: the method; a: "CE"
    tokens_per_step: int
    step_s: list[float] = field(default_factory=list)  # timed steps (after warm-up)
    loop_s: float = 0.0  # from the end of the last warm-up step to the end of the last step
    first_loss: float | None = None
    peak_bytes: int = 0
    step_peak_bytes: int | None = None  # CPU: exact peak of tensors allocated during one step (StepMemory)
    setup_s: float = 0.0
    round: int = 0


class StepMemory:
    """CPU: the exact peak, during one training step, of the bytes of tensors allocated in that step and still alive
    (activations, gradients, temporaries, optimizer updates), from the PyTorch profiler's memory timeline
    (``profile_memory`` + ``record_shapes`` + ``with_stack``; a private torch API, so failures give None). Tensors
    alive before the step (weights, optimizer state) are not counted, so the systems compare on what the step
    itself needs. The profiled step is slow and is not timed."""

    def start(self) -> None:
        from torch.profiler import ProfilerActivity, profile

        self.prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True,
                            with_stack=True)
        self.prof.start()

    def stop(self) -> int | None:
        self.prof.stop()
        try:
            from torch.profiler._memory_profiler import Action

            live, cur, peak = {}, 0, 0
            for _, action, (key, _version), size in self.prof._memory_profile().timeline:
                if action == Action.CREATE:
                    live[key] = size
                    cur += size
                elif action == Action.DESTROY and key in live:
                    cur -= live.pop(key)
                peak = max(peak, cur)
            return peak
        except Exception as e:  # noqa: BLE001 - a private API: report, do not fail the benchmark
            print(f"[bench] step memory unavailable: {e!r}", file=sys.stderr)
            return None


def total_steps(args) -> int:
    """Warm-up + timed steps, plus the untimed memory-profiled step (CPU) at the end."""
    return args.warmup + args.steps + (1 if args.step_memory else 0)


class Timer:
    """Shared bookkeeping for the three systems' step hooks; profiles the memory of the step after the timed ones."""

    def __init__(self, args):
        self.device, self.warmup = args.device, args.warmup
        self.probe_at = args.warmup + args.steps if args.step_memory else None
        self.times: list[float] = []
        self.ends: list[float] = []
        self.t0 = 0.0
        self.probe: StepMemory | None = None
        self.step_peak: int | None = None
        self.mem: PeakMemory | None = None  # frozen before the profiled step

    def start(self):
        sync(self.device)
        if len(self.times) == self.probe_at:
            if self.mem is not None:
                self.mem.freeze()
            self.probe = StepMemory()
            self.probe.start()
        self.t0 = time.perf_counter()

    def stop(self):
        sync(self.device)
        t = time.perf_counter()
        if self.probe is not None:
            self.step_peak, self.probe = self.probe.stop(), None
            return
        self.times.append(t - self.t0)
        self.ends.append(t)

    def fill(self, run: Run) -> None:
        run.step_s = self.times[self.warmup:]
        run.step_peak_bytes = self.step_peak
        if len(self.ends) > self.warmup:
            first = self.ends[self.warmup - 1] if self.warmup > 0 else self.ends[0] - self.times[0]
            run.loop_s = self.ends[-1] - first


# ---------------------------------------------------------------------------------------------------------------
# the reference model of (a) and (b): loaded as lit_unlearn loads it (same dtype / quantization / attention / LoRA)
# ---------------------------------------------------------------------------------------------------------------
def load_peft_model(args, model_dir: Path):
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    dtype = getattr(torch, args.dtype)
    kw = dict(dtype=dtype, attn_implementation=args.attn_impl)
    if args.quantize == "nf4":
        kw["quantization_config"] = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                       bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=dtype)
    elif args.quantize == "int8":
        kw["quantization_config"] = BitsAndBytesConfig(load_in_8bit=True)
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), **kw)
    if args.quantize:
        for m in model.modules():  # bitsandbytes' CPU-inference repacking has no backward (see lit_unlearn.models)
            if getattr(m, "support_avx512bf16_for_cpu", False):
                m.support_avx512bf16_for_cpu = False
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    else:
        model = model.to(args.device)
    lora = LoraConfig(r=args.lora_r, lora_alpha=args.lora_alpha, lora_dropout=0.0, target_modules="all-linear",
                      bias="none", task_type="CAUSAL_LM")
    model = get_peft_model(model, lora)
    model.train()
    return model


def seq_nll(logits, labels):
    """(B,) summed answer-token NLL per row (open-unlearning's compute_batch_nll)."""
    import torch.nn.functional as F

    logits, labels = logits[:, :-1], labels[:, 1:]
    nll = F.cross_entropy(logits.float().transpose(1, 2), labels, ignore_index=IGNORE, reduction="none")
    return nll.sum(-1)


def run_plain(args, model_dir, rows_f, rows_r) -> Run:
    """(a): forward + backward + AdamW step on forget+retain rows concatenated, CE loss."""
    bf, br = batches(rows_f, args.batch), batches(rows_r, args.batch)
    data = [{k: torch.cat([f[k], r[k]]).to(args.device) for k in ("input_ids", "attention_mask", "labels")}
            for f, r in zip(bf, br)]
    run = Run("a", "CE", int(data[0]["attention_mask"].sum()))
    t0 = time.perf_counter()
    timer = Timer(args)
    with PeakMemory(args.device) as mem:
        timer.mem = mem
        seed_all(args.seed)
        model = load_peft_model(args, model_dir)
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.lr, weight_decay=0.0)
        run.setup_s = time.perf_counter() - t0
        for step in range(total_steps(args)):
            b = data[step % len(data)]
            timer.start()
            out = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], labels=b["labels"],
                        use_cache=False)
            out.loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            timer.stop()
            if step == 0:
                run.first_loss = float(out.loss)
        del model, opt, out
    run.peak_bytes = mem.value
    timer.fill(run)
    return run


# ---------------------------------------------------------------------------------------------------------------
# (b): transformers.Trainer with separate forget / retain forwards (the open-unlearning architecture)
# ---------------------------------------------------------------------------------------------------------------
def run_hf(args, model_dir, rows_f, rows_r, method: str) -> Run:
    import torch.nn.functional as F
    from torch.utils.data import Dataset, SequentialSampler
    from transformers import PrinterCallback, Trainer, TrainerCallback, TrainingArguments

    keys = ("input_ids", "attention_mask", "labels")

    class PairedRows(Dataset):
        """Item i = forget row i and retain row i, as open-unlearning's ForgetRetainDataset pairs them."""

        def __len__(self):
            return rows_f["input_ids"].size(0)

        def __getitem__(self, i):
            return {"forget": {k: rows_f[k][i] for k in keys}, "retain": {k: rows_r[k][i] for k in keys}}

    def collator(items):
        return {role: {k: torch.stack([it[role][k] for it in items]) for k in keys} for role in ("forget", "retain")}

    def fwd(model, b):
        return model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], labels=b["labels"],
                     use_cache=False)

    class UnlearnTrainer(Trainer):
        first_loss = None

        def _get_train_sampler(self, train_dataset=None):
            return SequentialSampler(train_dataset if train_dataset is not None else self.train_dataset)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            f, r = inputs["forget"], inputs["retain"]
            f_out = fwd(model, f)
            if method == "GradAscent":
                loss = -f_out.loss
            elif method == "GradDiff":
                loss = -f_out.loss + fwd(model, r).loss
            else:  # NPO: reference logits recomputed every step with the adapter disabled
                with torch.no_grad(), model.disable_adapter():
                    ref_nll = seq_nll(fwd(model, f).logits, f["labels"])
                log_ratio = seq_nll(f_out.logits, f["labels"]) - ref_nll
                forget_loss = -F.logsigmoid(args.beta * log_ratio).mean() * 2 / args.beta
                loss = forget_loss + fwd(model, r).loss
            if self.first_loss is None:
                UnlearnTrainer.first_loss = float(loss)
            return (loss, f_out) if return_outputs else loss

    timer = Timer(args)

    class StepTimer(TrainerCallback):
        def on_step_begin(self, a, state, control, **kw):
            timer.start()

        def on_step_end(self, a, state, control, **kw):
            timer.stop()

    n_f = int(rows_f["attention_mask"][:args.batch].sum())
    n_r = int(rows_r["attention_mask"][:args.batch].sum())
    run = Run("b", method, n_f + (0 if method == "GradAscent" else n_r))
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as out_dir, PeakMemory(args.device) as mem:
        timer.mem = mem
        seed_all(args.seed)
        model = load_peft_model(args, model_dir)
        targs = TrainingArguments(
            output_dir=out_dir, max_steps=total_steps(args), per_device_train_batch_size=args.batch,
            learning_rate=args.lr, weight_decay=0.0, lr_scheduler_type="constant", warmup_steps=0,
            optim=args.hf_optim, max_grad_norm=0.0, eval_strategy="no", save_strategy="no", report_to=[],
            disable_tqdm=True, use_cpu=args.device == "cpu", remove_unused_columns=False, seed=args.seed,
            dataloader_num_workers=0, dataloader_pin_memory=args.device == "cuda", logging_strategy="no",
        )
        trainer = UnlearnTrainer(model=model, args=targs, train_dataset=PairedRows(), data_collator=collator,
                                 callbacks=[StepTimer()])
        trainer.remove_callback(PrinterCallback)  # the end-of-train metrics print
        UnlearnTrainer.first_loss = None
        run.setup_s = time.perf_counter() - t0
        trainer.train()
        run.first_loss = UnlearnTrainer.first_loss
        del trainer, model
    run.peak_bytes = mem.value
    timer.fill(run)
    return run


# ---------------------------------------------------------------------------------------------------------------
# lit_unlearn: lightning.Trainer.fit on the method module
# ---------------------------------------------------------------------------------------------------------------
def run_lit(args, model_dir, rows_f, rows_r, method: str, qa_files=None, system: str = "lit") -> Run:
    import lightning as L

    from lit_unlearn.adapters import LoRA
    from lit_unlearn.methods import NPO, GradAscent, GradDiff

    timer = Timer(args)

    class StepTimer(L.Callback):
        first_loss = None

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            timer.start()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            timer.stop()
            if self.first_loss is None:
                self.first_loss = float(outputs["loss"])

    n_f = int(rows_f["attention_mask"][:args.batch].sum())
    n_r = int(rows_r["attention_mask"][:args.batch].sum())
    run = Run(system, method, n_f + (0 if method == "GradAscent" else n_r))
    lora = LoRA(r=args.lora_r, alpha=args.lora_alpha, target_modules="all-linear")
    common = dict(model=str(model_dir), adapter=lora, dtype=args.dtype, quantize=args.quantize,
                  attn_backend=args.attn_impl, lr=args.lr, max_length=args.seq_len, seed=args.seed,
                  lean_head=system == "lit")
    t0 = time.perf_counter()
    with PeakMemory(args.device) as mem:
        timer.mem = mem
        L.seed_everything(args.seed, verbose=False)
        if method == "GradAscent":
            module = GradAscent(**common)
        elif method == "GradDiff":
            module = GradDiff(**common)
        else:
            module = NPO(**common, beta=args.beta, retain="nll", reference=method.split(":")[1])
        if qa_files is None:
            dm = make_lit_datamodule(rows_f, rows_r, args.batch)
        else:
            from lit_unlearn.data import QADataModule

            dm = QADataModule(forget=str(qa_files[0]), retain=str(qa_files[1]), tokenizer=str(model_dir),
                              max_length=args.seq_len, batch_size=args.batch, seed=args.seed)
        cb = StepTimer()
        log_kw = dict(logger=False)
        if args.lit_cli_logging:
            from lightning.pytorch.loggers import TensorBoardLogger

            tb = TensorBoardLogger(tempfile.mkdtemp(prefix="lit_unlearn_bench_tb_"))
            log_kw = dict(logger=tb, log_every_n_steps=1)
        trainer = L.Trainer(
            max_steps=total_steps(args), **log_kw, enable_checkpointing=False,
            enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
            accelerator="gpu" if args.device == "cuda" else "cpu", devices=1, callbacks=[cb],
        )
        run.setup_s = time.perf_counter() - t0  # model loading happens inside fit (configure_model)
        trainer.fit(module, datamodule=dm)
        run.first_loss = cb.first_loss
        del trainer, module, dm
    run.peak_bytes = mem.value
    timer.fill(run)
    return run


# ---------------------------------------------------------------------------------------------------------------
# driver
# ---------------------------------------------------------------------------------------------------------------
def seed_all(seed: int) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def quiet() -> None:
    import lightning  # noqa: F401  (it sets its loggers' levels on import)
    import transformers

    warnings.filterwarnings("ignore")
    transformers.utils.logging.disable_progress_bar()
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)
    transformers.logging.set_verbosity_error()


def environment(args) -> dict:
    import lightning
    import peft
    import transformers

    env = {"python": platform.python_version(), "torch": torch.__version__, "lightning": lightning.__version__,
           "transformers": transformers.__version__, "peft": peft.__version__, "nproc": os.cpu_count(),
           "torch_threads": torch.get_num_threads(), "platform": platform.platform()}
    try:
        cpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        env["cpu"] = next((ln.split(":", 1)[1].strip() for ln in cpu.splitlines() if ln.startswith("Model name")), None)
    except OSError:
        env["cpu"] = platform.processor()
    if args.device == "cuda":
        env["gpu"] = torch.cuda.get_device_name()
        env["cuda"] = torch.version.cuda
    return env


def fmt_mem(nbytes: int, device: str) -> str:
    return f"{nbytes / 2**30:.2f} GiB" if device == "cuda" else f"~{nbytes / 2**20:.0f} MiB"


def summarise(runs: list[Run], args) -> list[dict]:
    """Pool the rounds of each (system, method): median step time over all timed steps, max peak memory."""
    groups: dict[tuple[str, str], list[Run]] = {}
    for r in runs:
        groups.setdefault((r.system, r.method), []).append(r)
    rows = []
    for (system, method), rs in groups.items():
        steps = [t for r in rs for t in r.step_s]
        med = statistics.median(steps)
        n_timed = sum(len(r.step_s) for r in rs)
        rows.append({
            "system": system, "method": method, "tokens_per_step": rs[0].tokens_per_step,
            "step_ms_median": med * 1e3, "step_ms_min": min(steps) * 1e3, "step_ms_max": max(steps) * 1e3,
            "tokens_per_s": rs[0].tokens_per_step / med,
            "wall_tokens_per_s": rs[0].tokens_per_step * n_timed / sum(r.loop_s for r in rs),
            "peak_bytes": max(r.peak_bytes for r in rs),
            "step_peak_bytes": max((r.step_peak_bytes for r in rs if r.step_peak_bytes is not None), default=None),
            "first_loss": rs[0].first_loss, "setup_s": statistics.median(r.setup_s for r in rs),
            "timed_steps": n_timed, "rounds": len(rs),
        })
    # ratios: per round (the systems of one round run minutes apart at most, so a drifting machine speed mostly
    # cancels), then the median over rounds; the per-round values are kept
    def tps(system: str, method: str, rnd: int) -> float | None:
        rs = [r for r in runs if r.system == system and r.method == method and r.round == rnd]
        steps = [t for r in rs for t in r.step_s]
        return rs[0].tokens_per_step / statistics.median(steps) if steps else None

    def ratios(num: tuple[str, str], den: tuple[str, str]) -> list[float]:
        out = []
        for rnd in sorted({r.round for r in runs}):
            x, y = tps(*num, rnd), tps(*den, rnd)
            if x is not None and y is not None:
                out.append(x / y)
        return out

    peaks = {(r["system"], r["method"]): r["peak_bytes"] for r in rows}
    step_peaks = {(r["system"], r["method"]): r["step_peak_bytes"] for r in rows}
    for r in rows:
        key = (r["system"], r["method"])
        refs = {}
        if r["system"] != "a":
            refs["a"] = ("a", "CE")
        if r["system"].startswith("lit"):
            refs["b"] = ("b", HF_METHOD[r["method"]])
        for name, ref in refs.items():
            vals = ratios(key, ref)
            r[f"vs_{name}"] = statistics.median(vals) if vals else None
            r[f"vs_{name}_per_round"] = vals
        if "b" in refs and peaks.get(refs["b"]):
            r["mem_vs_b"] = r["peak_bytes"] / peaks[refs["b"]]
        if "b" in refs and r["step_peak_bytes"] and step_peaks.get(refs["b"]):
            r["step_mem_vs_b"] = r["step_peak_bytes"] / step_peaks[refs["b"]]
    b_order = list(dict.fromkeys(HF_METHOD.values()))
    rows.sort(key=lambda r: (SYSTEMS.index(r["system"]), METHODS.index(r["method"]) if r["system"].startswith("lit")
                             else b_order.index(r["method"]) if r["system"] == "b" else 0))
    return rows


def print_table(rows: list[dict], args) -> None:
    mem_head = "peak mem" if args.device == "cuda" else "peak RSS+ (approx)"
    step_mem = any(r.get("step_peak_bytes") for r in rows)
    head = (f"{'system':<7}{'method':<17}{'tok/step':>9}{'step ms':>10}{'tokens/s':>11}{'wall tok/s':>11}"
            f"{mem_head:>20}{'loss@0':>10}{'vs (a)':>8}{'vs (b)':>8}{'mem/(b)':>9}"
            + (f"{'step peak':>11}{'step/(b)':>10}" if step_mem else "") + "   vs (b) per round")
    print(head)
    print("-" * len(head))
    name = {"a": "(a)", "b": "(b)", "lit": "lit", "lit-logits": "lit-lg"}
    for r in rows:
        def ratio(k):
            v = r.get(k)
            return f"{v:.2f}x" if v is not None else "-"
        loss = f"{r['first_loss']:.4f}" if r["first_loss"] is not None else "-"
        step = ""
        if step_mem:
            sp = r.get("step_peak_bytes")
            step = f"{(f'{sp / 2**20:.1f} MiB' if sp else '-'):>11}{ratio('step_mem_vs_b'):>10}"
        print(f"{name[r['system']]:<7}{r['method']:<17}{r['tokens_per_step']:>9}{r['step_ms_median']:>10.1f}"
              f"{r['tokens_per_s']:>11.0f}{r['wall_tokens_per_s']:>11.0f}{fmt_mem(r['peak_bytes'], args.device):>20}"
              f"{loss:>10}{ratio('vs_a'):>8}{ratio('vs_b'):>8}{ratio('mem_vs_b'):>9}{step}   "
              + " ".join(f"{v:.2f}" for v in r.get("vs_b_per_round", [])))


def markdown_table(path: str) -> str:
    """The summary of a ``--json`` result file as the markdown table docs/benchmarks.md shows."""
    d = json.loads(Path(path).read_text())
    device = d["args"]["device"]
    rows = d["summary"]
    step_mem = any(r.get("step_peak_bytes") for r in rows)
    name = {"a": "(a)", "b": "(b)", "lit": "lit", "lit-logits": "lit, logits"}

    def ratio(r, k, bold=False):
        v = r.get(k)
        return "-" if v is None else (f"**{v:.2f}x**" if bold else f"{v:.2f}x")

    head = ["system", "method", "tok/step", "step ms median [min-max]", "tokens/s", "wall tok/s",
            "peak mem" if device == "cuda" else "peak RSS+ (approx)", "loss@0", "vs (a)", "vs (b) (per round)",
            "mem / (b)"] + (["step peak (exact)", "step / (b)"] if step_mem else [])
    out = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * 2 + ["---:"] * (len(head) - 2)) + "|"]
    for r in rows:
        lit = r["system"].startswith("lit")
        per_round = " ".join(f"{v:.2f}" for v in r.get("vs_b_per_round", []))
        cells = [name[r["system"]], r["method"].replace(":", ", ") if lit else
                 (f"CE, {r['tokens_per_step'] // d['args']['seq_len']} rows" if r["system"] == "a" else r["method"]),
                 str(r["tokens_per_step"]),
                 f"{r['step_ms_median']:.1f} [{r['step_ms_min']:.0f}-{r['step_ms_max']:.0f}]",
                 f"{r['tokens_per_s']:.0f}", f"{r['wall_tokens_per_s']:.0f}", fmt_mem(r["peak_bytes"], device),
                 f"{r['first_loss']:.4f}" if r["first_loss"] is not None else "-",
                 ratio(r, "vs_a"), (f"{ratio(r, 'vs_b', r['system'] == 'lit')} ({per_round})" if lit else "-"),
                 ratio(r, "mem_vs_b")]
        if step_mem:
            sp = r.get("step_peak_bytes")
            cells += [f"{sp / 2**20:.1f} MiB" if sp else "-", ratio(r, "step_mem_vs_b", r["system"] == "lit")]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.markdown:
        print(markdown_table(args.markdown))
        return 0
    quiet()
    if args.threads:
        torch.set_num_threads(args.threads)
    from lit_unlearn.models.loading import load_tokenizer, pick_attn_backend

    args.attn_impl = pick_attn_backend(args.attn)
    t_start = time.time()
    load_start = os.getloadavg() if hasattr(os, "getloadavg") else None
    model_dir = build_model_dir(args)
    from transformers import AutoConfig

    vocab = AutoConfig.from_pretrained(str(model_dir)).vocab_size

    qa_files = None
    if args.data == "synthetic":
        rows_f, rows_r = synthetic_rows(args, vocab, "forget"), synthetic_rows(args, vocab, "retain")
    else:
        from lit_unlearn.data import QADataModule

        tok = load_tokenizer(str(model_dir))
        data_dir = Path(tempfile.mkdtemp(prefix="lit_unlearn_bench_qa_"))
        qa_files = (data_dir / "forget.jsonl", data_dir / "retain.jsonl")
        qa_jsonl(qa_files[0], tok, args, "forget")
        qa_jsonl(qa_files[1], tok, args, "retain")
        dm = QADataModule(forget=str(qa_files[0]), retain=str(qa_files[1]), tokenizer=str(model_dir),
                          max_length=args.seq_len, batch_size=args.batch, seed=args.seed)
        dm.setup("fit")
        rows_f, rows_r = qa_rows(dm, "forget"), qa_rows(dm, "retain")
        del dm

    n_ans = int((rows_f["labels"][0] != IGNORE).sum())
    print(f"[bench] shape={args.shape} device={args.device} dtype={args.dtype} quantize={args.quantize} "
          f"attn={args.attn_impl} vocab={vocab} rows/step={args.batch}+{args.batch} x {args.seq_len} tokens "
          f"(answer {n_ans}) data={args.data} warmup={args.warmup} steps={args.steps} rounds={args.rounds} "
          f"threads={torch.get_num_threads()}", file=sys.stderr)

    # (a) first and last, between them lit and (b) of each method side by side; odd rounds run it reversed
    plan: list[tuple[str, str]] = []
    if "a" in args.systems:
        plan.append(("a", "CE"))
    for m in args.methods:
        for lit in ("lit", "lit-logits"):
            if lit in args.systems:
                plan.append((lit, m))
        if "b" in args.systems and ("b", HF_METHOD[m]) not in plan:
            plan.append(("b", HF_METHOD[m]))
    if "a" in args.systems and len(plan) > 1:
        plan.append(("a", "CE"))

    if args.process_warmup:
        t0 = time.time()
        run_plain(argparse.Namespace(**{**vars(args), "warmup": 0, "steps": 1}), model_dir, rows_f, rows_r)
        free_memory()
        print(f"[bench] process warm-up (one untimed (a) step) {time.time() - t0:.1f}s", file=sys.stderr)

    runs: list[Run] = []
    for rnd in range(args.rounds):
        for system, method in (plan if rnd % 2 == 0 else plan[::-1]):
            t0 = time.time()
            if system == "a":
                run = run_plain(args, model_dir, rows_f, rows_r)
            elif system == "b":
                run = run_hf(args, model_dir, rows_f, rows_r, method)
            else:
                run = run_lit(args, model_dir, rows_f, rows_r, method, qa_files, system)
            free_memory()
            run.round = rnd
            runs.append(run)
            med = statistics.median(run.step_s) * 1e3 if run.step_s else float("nan")
            print(f"[bench] round {rnd} {system:<3} {method:<16} median {med:8.1f} ms  "
                  f"loss@0 {run.first_loss if run.first_loss is not None else float('nan'):.4f}  "
                  f"({time.time() - t0:.1f}s)", file=sys.stderr)

    rows = summarise(runs, args)
    print()
    print(f"shape={args.shape}  device={args.device}  dtype={args.dtype}  quantize={args.quantize}  "
          f"attn={args.attn_impl}  vocab={vocab}  batch={args.batch} forget + {args.batch} retain x {args.seq_len} "
          f"tokens  LoRA r={args.lora_r} alpha={args.lora_alpha:g} all-linear  data={args.data}"
          f"  lit logging={'TensorBoard every step' if args.lit_cli_logging else 'off'}")
    print(f"median over {args.rounds} round(s) x {args.steps} timed steps (after {args.warmup} warm-up)  "
          f"torch {torch.__version__}  threads={torch.get_num_threads()}")
    print_table(rows, args)
    if args.device == "cpu":
        print("peak RSS+ is approximate: the increase of the process RSS over its value before the system was "
              "built, sampled every 5 ms.")
    if args.step_memory:
        print("step peak is exact: the profiler's peak of bytes of tensors allocated during one extra, untimed step "
              "and alive at once (weights and optimizer state excluded); step/(b) its ratio to (b)'s.")
    print("tokens/step: non-pad tokens of the rows the step feeds through the model (GradAscent: forget rows only).")
    print("step ms, tokens/s: median over the timed steps of all rounds; vs (a) / vs (b): tokens/s ratio computed "
          "within each round, median over rounds (lit NPO:* vs (b) NPO).")
    print(f"total wall time {time.time() - t_start:.0f}s  load average at start {load_start}, at end "
          f"{os.getloadavg() if hasattr(os, 'getloadavg') else None}")

    if args.json:
        out = {"args": {k: v for k, v in vars(args).items()}, "model_dir": str(model_dir), "vocab": vocab,
               "model_config": SHAPES[args.shape]["config"], "environment": environment(args), "summary": rows,
               "runs": [vars(r) for r in runs], "total_wall_s": time.time() - t_start}
        out["environment"]["loadavg_start"] = load_start
        try:
            out["environment"]["loadavg_end"] = os.getloadavg()
        except OSError:
            pass
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=2, default=str) + "\n")
        print(f"[bench] wrote {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
