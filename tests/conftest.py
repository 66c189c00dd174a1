"""Shared fixtures: a tiny random Llama written to disk once per session, small forget/retain files, and a
helper that builds a method on that model. Everything here is offline and CPU-only."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

# Offline before transformers / datasets / huggingface_hub are imported anywhere: a test that reaches for the hub
# fails fast instead of downloading.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The local mirror of the hub datasets the shipped configs name (docs/data.md): the workspace's shared data folder
# beside the checkout, unless the environment names another.
os.environ.setdefault("LIT_UNLEARN_DATA", str(Path(__file__).resolve().parents[2] / "shared" / "data"))
# absolute, so that tests which change directory (monkeypatch.chdir) still find a mirror given as a relative path
os.environ["LIT_UNLEARN_DATA"] = str(Path(os.environ["LIT_UNLEARN_DATA"]).resolve())

import pytest  # noqa: E402
import torch  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
#: the hub datasets' local mirror; tests that read its real rows skip where it is absent (a checkout elsewhere)
MIRROR = Path(os.environ["LIT_UNLEARN_DATA"])
needs_mirror = pytest.mark.skipif(not MIRROR.is_dir(), reason="$LIT_UNLEARN_DATA names no folder (the CI sets it)")
#: the user's LIT_UNLEARN_CACHE before the session fixture replaced it (the slow test restores it)
REAL_CACHE = os.environ.get("LIT_UNLEARN_CACHE")

# The models here have ~40k parameters: threads only add contention on a shared 2-core machine
# (measured: 2 threads ~25x slower than 1 for a forward+backward while another process is busy).
torch.set_num_threads(1)

FORGET_ROWS = [
    {"question": "Where was Ilsa Varga born?", "answer": "Lisbon"},
    {"question": "Where was Bram Okonkwo born?", "answer": "Oslo"},
    {"question": "Where was Odile Marchetti born?", "answer": "Cairo"},
    {"question": "Where was Kasimir Szabo born?", "answer": "Lima"},
]
# longer questions than the forget rows, so forget and retain batches have different widths (fused forward pads)
RETAIN_ROWS = [
    {"question": "In which city was the writer Yara Halloran born?", "answer": "Dublin"},
    {"question": "In which city was the painter Teodor Duarte born?", "answer": "Prague"},
    {"question": "In which city was the sculptor Maren Kowal born?", "answer": "Seoul"},
    {"question": "In which city was the composer Quill Brandt born?", "answer": "Vienna"},
    {"question": "In which city was the dancer Soraya Ferreira born?", "answer": "Oslo"},
    {"question": "In which city was the actor Lev Nakamura born?", "answer": "Cairo"},
    {"question": "In which city was the poet Anouk Petrov born?", "answer": "Lima"},
    {"question": "In which city was the singer Dario Vidal born?", "answer": "Lisbon"},
]
# a reasoning trace on every QA row: ignored unless a data module sets cot_field (the reasoning-trace methods do)
for _row in FORGET_ROWS + RETAIN_ROWS:
    _row["cot"] = "The birth records of that person name one city"
SST2_ROWS = {
    "forget": [("a gripping, funny film", 1, "positive"), ("dull and far too long", 0, "negative")],
    "retain": [("a funny film", 1, "positive"), ("far too long and dull", 0, "negative"),
               ("gripping", 1, "positive"), ("dull", 0, "negative")],
}


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Point lit_unlearn's model cache at an empty session directory (nothing is written to ~/.cache)."""
    mp = pytest.MonkeyPatch()
    mp.setenv("LIT_UNLEARN_CACHE", str(tmp_path_factory.mktemp("lit_unlearn_cache")))
    yield
    mp.undo()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> str:
    """A seeded random 2-layer Llama (hidden 32) and its BPE tokenizer (pad = EOS), as a local model directory."""
    from lit_unlearn.testing import make_tiny_model

    return str(make_tiny_model(tmp_path_factory.mktemp("tiny_llama")))


@pytest.fixture(scope="session")
def tiny_model_dir_64(tmp_path_factory) -> str:
    """Same, with hidden size 64: bitsandbytes' CPU 4-bit kernels need in_features >= the 64-element block."""
    from lit_unlearn.testing import make_tiny_model

    return str(make_tiny_model(tmp_path_factory.mktemp("tiny_llama_64"), hidden_size=64, intermediate_size=128))


@pytest.fixture(scope="session")
def mcq_model_dir(tmp_path_factory) -> str:
    """The tiny Llama with a tokenizer whose multiple-choice answer letters " A" .. " D" are single tokens."""
    from lit_unlearn.testing import make_tiny_model

    return str(make_tiny_model(tmp_path_factory.mktemp("tiny_mcq"), letters=True))


@pytest.fixture(scope="session")
def tokenizer(tiny_model_dir):
    from lit_unlearn.models import load_tokenizer

    return load_tokenizer(tiny_model_dir)


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def write_sst2_csv(path: Path, rows) -> str:
    with path.open("w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label", "label_text"])
        w.writerows(rows)
    return str(path)


@pytest.fixture
def qa_files(tmp_path) -> dict[str, str]:
    """``{"forget": path, "retain": path}``: 4 forget and 8 retain ``{"question", "answer"}`` JSONL rows."""
    return {"forget": write_jsonl(tmp_path / "forget.jsonl", FORGET_ROWS),
            "retain": write_jsonl(tmp_path / "retain.jsonl", RETAIN_ROWS)}


@pytest.fixture
def sst2_files(tmp_path) -> dict[str, str]:
    """``{"forget": path, "retain": path}``: SST-2 style CSVs with ``text,label,label_text``."""
    return {role: write_sst2_csv(tmp_path / f"train_{role}.csv", rows) for role, rows in SST2_ROWS.items()}


def make_qa_datamodule(model_dir: str, files: dict[str, str], **kwargs):
    from lit_unlearn.data import QADataModule

    kwargs.setdefault("batch_size", 2)
    dm = QADataModule(forget=files["forget"], retain=files.get("retain"), tokenizer=model_dir, **kwargs)
    dm.setup("fit")
    return dm


def first_train_batch(dm) -> dict:
    """The first ``{"forget", "retain"}`` batch of a data module's training loader."""
    loader = dm.train_dataloader()
    item = next(iter(loader))
    # CombinedLoader yields (batch, batch_idx, dataloader_idx); a plain DataLoader yields the batch
    return item[0] if isinstance(item, tuple) else item


def perturb_lora(method, scale: float = 0.2, seed: int = 1) -> None:
    """Give every LoRA B a seeded nonzero value, so the adapted model differs from the reference (B = 0 at init);
    other adapters start away from the identity already."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in method.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * scale)


def optimizer_steps(method, batch: dict, steps: int, lr: float = 1e-2) -> list[float]:
    """``steps`` AdamW steps of ``method.training_step`` on one batch; the losses."""
    opt = torch.optim.AdamW([p for p in method.parameters() if p.requires_grad], lr=lr)
    losses = []
    for i in range(steps):
        loss = method.training_step(batch, i)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


#: constructor arguments a method needs on the 2-layer tiny model (its defaults name deeper layers)
TINY_KWARGS = {"RMU": {"layer": 1}}


def tiny_adapter(name: str):
    """A small adapter of each kind, by name (``lora``, ``prefix``, ``soft_prompt``, ``loreft``: gated), for the
    tiny model."""
    from lit_unlearn.adapters import LoRA, LoReFT, Prefix, SoftPrompt

    return {"lora": lambda: LoRA(r=4, alpha=8), "prefix": lambda: Prefix(length=3),
            "soft_prompt": lambda: SoftPrompt(length=3, encoder_hidden=8),
            "loreft": lambda: LoReFT(layers=[0, 1], rank=2, gated=True)}[name]()


@pytest.fixture
def make_method(tiny_model_dir):
    """``make_method(cls, adapter="lora", **kwargs)``: a method on the tiny model, ``configure_model()`` done;
    ``adapter`` is an adapter object or a name of :func:`tiny_adapter`."""

    def _make(cls, adapter="lora", model_dir: str | None = None, **kwargs):
        if isinstance(adapter, str):
            adapter = tiny_adapter(adapter)
        kwargs = {**TINY_KWARGS.get(cls.__name__, {}), **kwargs}
        torch.manual_seed(0)  # LoRA A is randomly initialised
        method = cls(model=model_dir or tiny_model_dir, adapter=adapter, **kwargs)
        method.configure_model()
        return method

    return _make


@pytest.fixture
def qa_batch(tiny_model_dir, qa_files) -> dict:
    """One ``{"forget": 2 rows, "retain": 2 rows}`` training batch from a QADataModule."""
    return first_train_batch(make_qa_datamodule(tiny_model_dir, qa_files, batch_size=2))


@pytest.fixture
def batch_for(tiny_model_dir, qa_files, qa_batch):
    """``batch_for(cls)``: the batch a method's contract tests use - ``qa_batch``, or for the reasoning-trace methods
    (``needs_cot``) the same rows read with their chain of thought, or for RapidUn with a clean response per forget
    row."""

    def _batch(cls) -> dict:
        if cls.__name__ == "RapidUn":  # forget rows with a clean response beside the (poisoned) answer
            n = len(qa_batch["forget"]["answer"])
            return {**qa_batch, "forget": {**qa_batch["forget"], "answer_clean": [" Nowhere"] * n}}
        if not getattr(cls, "needs_cot", False):
            return qa_batch
        return first_train_batch(make_qa_datamodule(tiny_model_dir, qa_files, batch_size=2, cot_field="cot"))

    return _batch
