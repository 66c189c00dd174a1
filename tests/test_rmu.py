"""RMU: the loss against activations computed independently (``output_hidden_states``), only the selected modules
trained (everything else bit-identical after steps), the frozen activations without a copy of the model, the
forward stopping at the steered layer, and one-line errors for layers and modules that do not exist."""

from __future__ import annotations

import pytest
import torch

from lit_unlearn.adapters import LoRA
from lit_unlearn.core.errors import MethodError
from lit_unlearn.core.tokens import IGNORE
from lit_unlearn.methods import RMU


def hidden(method, batch: dict, layer: int) -> torch.Tensor:
    """Output of decoder layer ``layer`` from the model's own ``output_hidden_states`` (index 0 = embeddings; the
    test steers layer 0 of 2, so the entry is not the final-norm output)."""
    out = method.lm(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True,
                    use_cache=False)
    return out.hidden_states[layer + 1]


def by_hand(h: torch.Tensor, target: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    mask = labels != IGNORE
    sq = ((h - target) ** 2).sum(-1) / h.size(-1)  # (1/d) ||h_t - target_t||^2 per answer token
    return sq[mask].mean()


def control_vector(hidden_size: int, steering: float, seed: int) -> torch.Tensor:
    u = torch.rand(hidden_size, generator=torch.Generator().manual_seed(seed))
    return steering * u / u.norm()


def test_loss_on_known_activations(make_method, qa_batch):
    method = make_method(RMU, layer=0, steering=3.0, alpha=7.0, seed=5)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # a trained-looking adapter, so the retain term is not 0
        for n, p in method.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    fb, rb = qa_batch["forget"], qa_batch["retain"]
    c = control_vector(method.lm.config.hidden_size, 3.0, 5)
    torch.testing.assert_close(method.control, c)
    assert method.control.norm().item() == pytest.approx(3.0)
    with torch.no_grad():
        f = by_hand(hidden(method, fb, 0), c, fb["labels"])
        with method.adapter.disabled(method.lm):
            h0 = hidden(method, rb, 0)
        r = by_hand(hidden(method, rb, 0), h0, rb["labels"])
    assert r.item() > 1e-8
    loss = method.training_step(qa_batch, 0)
    torch.testing.assert_close(loss, f + 7.0 * r, rtol=1e-5, atol=1e-6)
    # retain: none drops the activation match
    method.retain = "none"
    torch.testing.assert_close(method.training_step(qa_batch, 0), f, rtol=1e-5, atol=1e-6)


def test_without_an_adapter_only_the_selected_modules_train(make_method, qa_batch):
    method = make_method(RMU, adapter=None, layer=1, train_layers=[1], alpha=10.0)
    trainable = [n for n, p in method.named_parameters() if p.requires_grad]
    assert trainable == ["lm.model.layers.1.mlp.down_proj.weight"]
    rb = qa_batch["retain"]
    with torch.no_grad():
        h_start = method.layer_output(rb).clone()
    before = {n: p.detach().clone() for n, p in method.named_parameters()}
    opt = torch.optim.AdamW([p for p in method.parameters() if p.requires_grad], lr=0.05)
    for i in range(3):
        loss = method.training_step(qa_batch, i)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = dict(method.named_parameters())
    for n, p in before.items():
        assert torch.equal(p, after[n]) == (n not in trainable), n  # the selected weight moved, nothing else did
    with torch.no_grad():
        assert not torch.allclose(method.layer_output(rb), h_start, atol=1e-5)
        with method.frozen():  # the original weight swapped in: the activations before training
            torch.testing.assert_close(method.layer_output(rb), h_start, rtol=0, atol=0)
    assert torch.equal(after[trainable[0]], dict(method.named_parameters())[trainable[0]])  # swapped back
    assert method.trainable_names() == trainable  # what a checkpoint holds


def test_lora_is_narrowed_to_the_selected_modules(make_method):
    method = make_method(RMU, layer=1)  # train_layers default: 0 and 1 (layer - 2 < 0 is dropped)
    trainable = {n for n, p in method.named_parameters() if p.requires_grad}
    assert trainable and all(".mlp.down_proj.lora_" in n for n in trainable)
    assert {n.split(".layers.")[1].split(".")[0] for n in trainable} == {"0", "1"}
    with pytest.raises(MethodError, match="also trains .*q_proj"):
        make_method(RMU, adapter=LoRA(r=4, target_modules=["q_proj", "down_proj"]), layer=1)


def test_the_forward_stops_at_the_steered_layer(make_method, qa_batch):
    method = make_method(RMU, layer=0)
    calls = []
    handle = method.lm.base_model.model.model.layers[1].register_forward_hook(lambda *a: calls.append(1))
    try:
        method.training_step(qa_batch, 0)
    finally:
        handle.remove()
    assert calls == []


@pytest.mark.parametrize("kwargs, message", [
    ({"layer": 5}, r"--model.layer 5 is past the model's depth \(2 layers, 0-1\)"),
    ({"layer": 1, "param_module": "mlp.nope"}, r"--model.param_module 'mlp.nope' matches no module of layer 0"),
    ({"layer": 0, "train_layers": [0, 1]}, r"--model.train_layers \[0, 1\] must be layers 0..0"),
    ({"layer": 1, "retain": "kl"}, r"--model.retain must be nll \(on\) or none"),
    ({"layer": 1, "steering": 0.0}, r"--model.steering > 0"),
])
def test_bad_rmu_settings_are_one_line(kwargs, message, make_method):
    with pytest.raises(MethodError, match=message):
        make_method(RMU, **kwargs)
