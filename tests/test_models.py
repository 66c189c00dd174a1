"""Model loading: name resolution (alias / .gguf / directory / hub id) without network, tokenizer padding, dtype,
attention backend and quantization switches."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from lit_unlearn.models import DEFAULT_MODEL, EMBEDDED_MODELS, ModelLoadError, load_causal_lm, load_tokenizer
from lit_unlearn.models import loading
from lit_unlearn.models.loading import ResolvedModel, cache_dir, pick_attn_backend, resolve_model, torch_dtype

SMOLLM2_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"


def fake_find_spec(monkeypatch, missing: set[str] = frozenset(), present: set[str] = frozenset()):
    real = importlib.util.find_spec

    def find_spec(name, *args, **kwargs):
        if name in missing:
            return None
        if name in present:
            return object()
        return real(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)


# ---- resolve_model ---------------------------------------------------------------------------------------------------
def test_resolve_directory(tiny_model_dir):
    res = resolve_model(tiny_model_dir)
    assert res == ResolvedModel(tiny_model_dir) and res.gguf_file is None and res.kwargs() == {}


@pytest.mark.parametrize("name", ["/no/such/model_dir", "./no_such_model_dir", "~/no_such_lit_unlearn_model",
                                  "models/team/no_such_model"])
def test_missing_directory_names_the_path(name):
    with pytest.raises(ModelLoadError, match="does not exist") as err:
        resolve_model(name)
    assert name.lstrip("./~").split("/")[-1] in str(err.value)


def test_gguf_file(tmp_path):
    missing = tmp_path / "model.Q4.gguf"
    with pytest.raises(ModelLoadError, match=rf"model file {missing} does not exist"):
        resolve_model(str(missing))
    missing.write_bytes(b"")
    res = resolve_model(str(missing))
    assert res == ResolvedModel(str(tmp_path), "model.Q4.gguf")
    assert res.kwargs() == {"gguf_file": "model.Q4.gguf"}


def test_a_file_that_is_not_gguf(tmp_path):
    path = tmp_path / "weights.bin"
    path.write_bytes(b"x")
    with pytest.raises(ModelLoadError, match="is a file but not a .gguf file"):
        resolve_model(str(path))


@pytest.mark.parametrize("name", [SMOLLM2_HUB_ID, "gpt2", "facebook/opt-1.3b"])
def test_hub_id_passes_through(name):
    assert resolve_model(name) == ResolvedModel(name)


@pytest.mark.parametrize("name", ["", None, 3])
def test_invalid_names(name):
    with pytest.raises(ModelLoadError, match="non-empty string"):
        resolve_model(name)


def test_embedded_alias_without_wheel_or_cache_resolves_to_hub_id(tmp_path, monkeypatch):
    monkeypatch.setenv("LIT_UNLEARN_CACHE", str(tmp_path / "empty_cache"))
    monkeypatch.setattr(loading, "_package_dir", lambda package: None)
    monkeypatch.setattr(loading, "_convert_gguf", lambda *a: pytest.fail("nothing to convert"))
    assert DEFAULT_MODEL == "smollm2-135m-instruct"
    assert EMBEDDED_MODELS[DEFAULT_MODEL].hub_id == SMOLLM2_HUB_ID
    assert resolve_model("smollm2-135m-instruct") == ResolvedModel(SMOLLM2_HUB_ID)
    assert resolve_model("SmolLM2-135M-Instruct") == ResolvedModel(SMOLLM2_HUB_ID)  # aliases are case-insensitive


def test_embedded_alias_wheel_without_gguf_resolves_to_hub_id(tmp_path, monkeypatch):
    monkeypatch.setenv("LIT_UNLEARN_CACHE", str(tmp_path / "cache"))
    (tmp_path / "pkg").mkdir()
    monkeypatch.setattr(loading, "_package_dir", lambda package: tmp_path / "pkg")
    assert resolve_model(DEFAULT_MODEL) == ResolvedModel(SMOLLM2_HUB_ID)


def test_embedded_alias_converts_once_then_uses_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LIT_UNLEARN_CACHE", str(tmp_path / "cache"))
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    spec = EMBEDDED_MODELS[DEFAULT_MODEL]
    (pkg / spec.gguf_file).write_bytes(b"gguf")
    monkeypatch.setattr(loading, "_package_dir", lambda package: pkg if package == spec.package else None)
    converted = []

    def fake_convert(gguf_path, target):
        converted.append((gguf_path, target))
        target.mkdir(parents=True)
        (target / "config.json").write_text("{}")
        (target / "model.safetensors").write_bytes(b"")

    monkeypatch.setattr(loading, "_convert_gguf", fake_convert)
    target = tmp_path / "cache" / "models" / DEFAULT_MODEL
    assert cache_dir() == tmp_path / "cache"
    assert resolve_model(DEFAULT_MODEL) == ResolvedModel(str(target))
    assert resolve_model(DEFAULT_MODEL) == ResolvedModel(str(target))
    assert converted == [(pkg / spec.gguf_file, target)]  # converted once, the second call hit the cache


def test_cache_dir_default(monkeypatch, tmp_path):
    monkeypatch.delenv("LIT_UNLEARN_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert cache_dir() == tmp_path / ".cache" / "lit_unlearn"


# ---- tokenizer --------------------------------------------------------------------------------------------------------
def test_pad_token_falls_back_to_eos(tmp_path):
    from lit_unlearn.testing import make_tokenizer

    tok = make_tokenizer()
    tok.pad_token = None
    tok.padding_side = "left"
    tok.save_pretrained(tmp_path)
    loaded = load_tokenizer(str(tmp_path))
    assert loaded.pad_token == loaded.eos_token == "<eos>"
    assert loaded.pad_token_id == loaded.eos_token_id
    assert loaded.padding_side == "right"


def test_tokenizer_without_pad_or_eos_is_an_error(tmp_path):
    from lit_unlearn.testing import make_tokenizer

    tok = make_tokenizer()
    tok.pad_token = None
    tok.eos_token = None
    tok.save_pretrained(tmp_path)
    with pytest.raises(ModelLoadError, match="neither a pad nor an EOS token"):
        load_tokenizer(str(tmp_path))


def test_tokenizer_and_model_missing_from_a_directory(tmp_path):
    with pytest.raises(ModelLoadError, match=str(tmp_path)):
        load_tokenizer(str(tmp_path))
    with pytest.raises(ModelLoadError, match=rf"could not load model .*directory {tmp_path}"):
        load_causal_lm(str(tmp_path))


# ---- dtype / attention / quantization ---------------------------------------------------------------------------------
def test_dtypes(tiny_model_dir):
    assert torch_dtype("bf16") is torch.bfloat16 and torch_dtype("float32") is torch.float32
    with pytest.raises(ModelLoadError, match=r"dtype must be one of .*'float64'"):
        torch_dtype("float64")
    with pytest.raises(ModelLoadError, match="dtype"):
        load_causal_lm(tiny_model_dir, dtype="int8")
    model = load_causal_lm(tiny_model_dir, dtype="bfloat16")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in load_causal_lm(tiny_model_dir).parameters()} == {torch.float32}


def test_attn_backend_auto_is_sdpa_on_cpu(monkeypatch, tiny_model_dir):
    if torch.cuda.is_available():
        pytest.skip("checks the CPU choice")
    assert pick_attn_backend("auto") == "sdpa"
    fake_find_spec(monkeypatch, present={"flash_attn"})
    assert pick_attn_backend("auto") == "sdpa"  # flash-attn installed but no CUDA device
    monkeypatch.undo()
    assert load_causal_lm(tiny_model_dir).config._attn_implementation == "sdpa"
    assert load_causal_lm(tiny_model_dir, attn_backend="eager").config._attn_implementation == "eager"


def test_flash_attention_without_package(monkeypatch):
    fake_find_spec(monkeypatch, missing={"flash_attn"})
    with pytest.raises(ModelLoadError, match="flash-attn"):
        pick_attn_backend("flash_attention_2")
    with pytest.raises(ModelLoadError, match="attn_backend must be"):
        pick_attn_backend("xformers")


def test_quantize_errors(tiny_model_dir, monkeypatch):
    with pytest.raises(ModelLoadError, match="quantize must be nf4, int8 or null"):
        load_causal_lm(tiny_model_dir, quantize="nf8")
    fake_find_spec(monkeypatch, missing={"bitsandbytes"})
    with pytest.raises(ModelLoadError, match="needs bitsandbytes"):
        load_causal_lm(tiny_model_dir, quantize="nf4")


def test_quantization_config_values():
    from lit_unlearn.models.loading import quantization_config

    if importlib.util.find_spec("bitsandbytes") is None:
        pytest.skip("bitsandbytes is not installed")
    assert quantization_config(None, torch.float32) is None
    cfg = quantization_config("nf4", torch.bfloat16)
    assert cfg.load_in_4bit and cfg.bnb_4bit_quant_type == "nf4" and cfg.bnb_4bit_use_double_quant
    assert cfg.bnb_4bit_compute_dtype == torch.bfloat16
    assert quantization_config("int8", torch.float32).load_in_8bit
