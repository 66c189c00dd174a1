"""The workload every system runs: the model shapes, the random model directory of a shape, and the same rows for
all systems (synthetic ids, or generated QA JSONL through lit_unlearn's QADataModule), cut into batches or served
by a LightningDataModule."""

from __future__ import annotations

import hashlib
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from .measure import free_memory

IGNORE = -100

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
def make_rows(args, model_dir: Path, vocab: int) -> tuple[dict, dict, tuple[Path, Path] | None]:
    """The forget and retain rows of ``--data``, and with ``qa`` the two JSONL files they were read from."""
    if args.data == "synthetic":
        return synthetic_rows(args, vocab, "forget"), synthetic_rows(args, vocab, "retain"), None
    from lit_unlearn.models.loading import load_tokenizer

    tok = load_tokenizer(str(model_dir))
    data_dir = Path(tempfile.mkdtemp(prefix="lit_unlearn_bench_qa_"))
    qa_files = (data_dir / "forget.jsonl", data_dir / "retain.jsonl")
    qa_jsonl(qa_files[0], tok, args, "forget")
    qa_jsonl(qa_files[1], tok, args, "retain")
    dm = qa_datamodule(args, model_dir, qa_files)
    dm.setup("fit")
    return qa_rows(dm, "forget"), qa_rows(dm, "retain"), qa_files


def qa_datamodule(args, model_dir: Path, qa_files: tuple[Path, Path]):
    """lit_unlearn's QADataModule over the generated JSONL files."""
    from lit_unlearn.data import QADataModule

    return QADataModule(forget=str(qa_files[0]), retain=str(qa_files[1]), tokenizer=str(model_dir),
                        max_length=args.seq_len, batch_size=args.batch, seed=args.seed)


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

    from lit_unlearn.core.tokens import encode

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


def tokens_per_step(rows_f: dict, rows_r: dict, batch: int, method: str) -> int:
    """Non-pad tokens of the rows one step of ``method`` feeds through the model (GradAscent: forget rows only)."""
    n_f = int(rows_f["attention_mask"][:batch].sum())
    n_r = int(rows_r["attention_mask"][:batch].sum())
    return n_f + (0 if method == "GradAscent" else n_r)


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
