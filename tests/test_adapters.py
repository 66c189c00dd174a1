"""The adapter contract (``lit_unlearn.adapters.base.Adapter``) for LoRA, and LoRA on a 4-bit (nf4) base on CPU."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch

from lit_unlearn.adapters import AdapterError, LoRA, merge_saved_adapter
from lit_unlearn.models import load_causal_lm

N_LAYERS, LINEARS_PER_LAYER = 2, 7  # tiny Llama: q, k, v, o, gate, up, down


@pytest.fixture
def input_ids(tokenizer) -> torch.Tensor:
    return tokenizer(["Question: Where was Ilsa Varga born?\nAnswer: Lisbon",
                      "Question: Where was Bram Okonkwo born?\nAnswer: Oslo"], padding=True,
                     return_tensors="pt")["input_ids"]


def logits(model, ids) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits


def perturb(model, seed: int = 0, scale: float = 0.3) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * scale)


@pytest.fixture
def base(tiny_model_dir):
    return load_causal_lm(tiny_model_dir)


def test_apply_freezes_base_and_trains_lora_only(base):
    n_base = sum(1 for _ in base.parameters())
    model = LoRA(r=4).apply(base)
    params = dict(model.named_parameters())
    assert len(params) == n_base + N_LAYERS * LINEARS_PER_LAYER * 2
    for name, p in params.items():
        assert p.requires_grad == ("lora_" in name), name
    trainable = dict(LoRA(r=4).trainable_parameters(model))
    assert trainable and all("lora_" in n for n in trainable)
    assert len(trainable) == N_LAYERS * LINEARS_PER_LAYER * 2  # A and B for every linear layer but lm_head
    assert not any("lm_head" in n or "embed" in n for n in trainable)


def test_target_modules_and_scaling(base):
    model = LoRA(r=2, alpha=6.0, target_modules=["q_proj", "v_proj"]).apply(base)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert len(trainable) == N_LAYERS * 2 * 2
    assert all(("q_proj" in n or "v_proj" in n) for n in trainable)
    q = model.base_model.model.model.layers[0].self_attn.q_proj
    assert q.scaling["default"] == pytest.approx(6.0 / 2)
    assert q.lora_A["default"].weight.shape == (2, 32)
    assert q.lora_B["default"].weight.shape[1] == 2
    assert torch.count_nonzero(q.lora_B["default"].weight) == 0  # B = 0: the identity at start


def test_fresh_lora_is_identity_and_disabled_is_base(tiny_model_dir, base, input_ids):
    reference = logits(load_causal_lm(tiny_model_dir), input_ids)
    lora = LoRA(r=4)
    model = lora.apply(base)
    torch.testing.assert_close(logits(model, input_ids), reference, rtol=0, atol=1e-6)
    perturb(model)
    adapted = logits(model, input_ids)
    assert not torch.allclose(adapted, reference, atol=1e-3)
    with lora.disabled(model):
        torch.testing.assert_close(logits(model, input_ids), reference, rtol=0, atol=1e-6)
    torch.testing.assert_close(logits(model, input_ids), adapted)  # re-enabled on exit


def test_save_load_round_trip(tiny_model_dir, base, input_ids, tmp_path):
    lora = LoRA(r=4, alpha=8)
    model = lora.apply(base)
    perturb(model, seed=3)
    adapted = logits(model, input_ids)
    lora.save(model, tmp_path / "adapter")
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    assert json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())["r"] == 4

    fresh = LoRA(r=4, alpha=8).apply(load_causal_lm(tiny_model_dir))
    assert not torch.allclose(logits(fresh, input_ids), adapted, atol=1e-3)
    LoRA(r=4, alpha=8).load(fresh, tmp_path / "adapter")
    torch.testing.assert_close(logits(fresh, input_ids), adapted, rtol=1e-5, atol=1e-5)
    saved = {n: p for n, p in model.named_parameters() if p.requires_grad}
    loaded = {n: p for n, p in fresh.named_parameters() if p.requires_grad}
    assert saved.keys() == loaded.keys()
    for n in saved:
        assert torch.equal(saved[n], loaded[n]), n


def test_load_rejects_missing_config_and_missing_tensors(tiny_model_dir, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    model = LoRA(r=4).apply(load_causal_lm(tiny_model_dir))
    with pytest.raises(AdapterError, match=rf"{empty} is not a saved LoRA adapter .*adapter_config.json"):
        LoRA(r=4).load(model, empty)
    with pytest.raises(AdapterError, match="adapter_config.json"):
        merge_saved_adapter(load_causal_lm(tiny_model_dir), empty)
    # an adapter saved for q_proj only cannot fill an all-linear LoRA
    narrow = LoRA(r=4, target_modules=["q_proj"])
    narrow.save(narrow.apply(load_causal_lm(tiny_model_dir)), tmp_path / "narrow")
    with pytest.raises(AdapterError, match="lacks .* LoRA tensors"):
        LoRA(r=4).load(model, tmp_path / "narrow")


def test_merge_gives_plain_model_with_same_outputs(tiny_model_dir, base, input_ids, tmp_path):
    from peft import PeftModel
    from transformers import LlamaForCausalLM

    lora = LoRA(r=4)
    model = lora.apply(base)
    perturb(model, seed=5)
    adapted = logits(model, input_ids)
    lora.save(model, tmp_path / "adapter")
    merged = lora.merge(model)
    assert isinstance(merged, LlamaForCausalLM) and not isinstance(merged, PeftModel)
    assert not any("lora_" in n for n, _ in merged.named_parameters())
    torch.testing.assert_close(logits(merged, input_ids), adapted, rtol=1e-4, atol=1e-5)

    # the same through a saved adapter directory (what init_adapter does)
    merged2 = merge_saved_adapter(load_causal_lm(tiny_model_dir), tmp_path / "adapter")
    assert not any("lora_" in n for n, _ in merged2.named_parameters())
    torch.testing.assert_close(logits(merged2, input_ids), adapted, rtol=1e-4, atol=1e-5)


def test_bad_configuration_errors(base):
    with pytest.raises(AdapterError, match="no_such_proj"):
        LoRA(target_modules=["no_such_proj"]).apply(base)
    with pytest.raises(AdapterError, match="r must be >= 1"):
        LoRA(r=0)
    with pytest.raises(AdapterError, match="dropout"):
        LoRA(dropout=1.0)


def test_repr_names_hyperparameters():
    assert repr(LoRA(r=4, alpha=8.0)) == (
        "LoRA(r=4, alpha=8.0, dropout=0.0, target_modules='all-linear', bias='none')")


# ---- 4-bit base ------------------------------------------------------------------------------------------------------
@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None, reason="bitsandbytes is not installed")
@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")
def test_nf4_base_with_lora_trains_on_cpu(tiny_model_dir_64, make_method):
    """QLoRA on CPU (bitsandbytes >= 0.45). The tiny model here has hidden size 64: bitsandbytes' CPU 4-bit path
    packs weights in blocks of 64 input features and fails on narrower layers (hidden 32)."""
    import bitsandbytes as bnb

    from lit_unlearn.methods import Finetune

    plain = load_causal_lm(tiny_model_dir_64, quantize="nf4")
    assert plain.is_loaded_in_4bit
    assert isinstance(plain.model.layers[0].self_attn.q_proj, bnb.nn.Linear4bit)

    method = make_method(Finetune, adapter=LoRA(r=4, alpha=8), model_dir=tiny_model_dir_64, quantize="nf4",
                         retain="none")
    assert method.lm.is_loaded_in_4bit
    batch = method.encode(["Question: Where was Ilsa Varga born?\nAnswer:", "Question: Where was Bram born?\nAnswer:"],
                          [" Lisbon", " Oslo"])
    base_before = {n: p.detach().clone() for n, p in method.named_parameters() if "lora_" not in n}
    lora_before = {n: p.detach().clone() for n, p in method.named_parameters() if "lora_B" in n}
    with torch.no_grad():
        ref = method.reference_stats(batch, logits=True).logits.clone()
    assert torch.isfinite(ref).all()

    opt = torch.optim.AdamW([p for p in method.parameters() if p.requires_grad], lr=1e-2)
    loss = method.training_step({"forget": batch}, 0)
    assert torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is None for n, p in method.named_parameters() if "lora_" not in n)
    opt.step()

    after = dict(method.named_parameters())
    assert all(torch.equal(base_before[n], after[n]) for n in base_before)
    assert any(not torch.equal(lora_before[n], after[n]) for n in lora_before)
    with torch.no_grad():
        assert not torch.allclose(method(batch, logits=True).logits, ref, atol=1e-4)
        torch.testing.assert_close(method.reference_stats(batch, logits=True).logits, ref, rtol=0, atol=1e-5)


@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None, reason="bitsandbytes is not installed")
def test_nf4_lora_gradients_match_the_dequantized_model_after_an_evaluation(tiny_model_dir_64):
    """Regression test: bitsandbytes repacks 4-bit weights for a CPU kernel without autograd on the first eval-mode,
    no-grad forward (what the evaluation before every fit does); afterwards LoRA gradients were ~100% off.
    ``load_causal_lm(quantize=...)`` must keep the trainable layout, so gradients through the 4-bit base equal
    those of a float model holding the dequantized weights."""
    import bitsandbytes as bnb

    quant = load_causal_lm(tiny_model_dir_64, quantize="nf4")
    dense = load_causal_lm(tiny_model_dir_64)
    dense_modules = dict(dense.named_modules())
    n_quantized = 0
    for name, module in quant.named_modules():
        if isinstance(module, bnb.nn.Linear4bit):
            w = bnb.functional.dequantize_4bit(module.weight.data, module.weight.quant_state)
            dense_modules[name].weight.data.copy_(w.float())
            n_quantized += 1
    assert n_quantized == N_LAYERS * LINEARS_PER_LAYER
    models = [LoRA(r=4).apply(quant), LoRA(r=4).apply(dense)]
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for (name, p), (_, p2) in zip(*(m.named_parameters() for m in models)):
            if "lora_" in name:
                p2.copy_(p.copy_(torch.randn(p.shape, generator=g) * 0.1))
    x = torch.randint(1, 300, (2, 12), generator=g)
    packed_before = [m.weight.data.clone() for m in quant.modules() if isinstance(m, bnb.nn.Linear4bit)]
    with torch.no_grad():  # an evaluation pass before training
        models[0].eval()
        models[0](input_ids=x)
        models[0].train()
    packed_after = [m.weight.data for m in quant.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert all(torch.equal(a, b) for a, b in zip(packed_before, packed_after)), "4-bit weights were repacked"

    losses = []
    for m in models:
        loss = m(input_ids=x, labels=x).loss
        loss.backward()
        losses.append(loss.item())
    assert losses[0] == pytest.approx(losses[1], rel=1e-4)
    grads = [{n: p.grad for n, p in m.named_parameters() if p.requires_grad} for m in models]
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        err = (grads[0][name] - grads[1][name]).norm() / grads[1][name].norm()
        assert err < 1e-3, f"{name}: relative gradient error {err:.3f}"
