"""RMU: the loss against activations computed independently (``output_hidden_states``), the scale-free control vector
(steering x the measured activation norm, per corpus or per row), the steered tokens (every real token but the first),
the forget MSE measured before and after a fit, only the selected modules trained (everything else bit-identical
after steps), the frozen activations without a copy of the model, the forward stopping at the steered layer, and
one-line errors for layers and modules that do not exist."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from lit_unlearn.adapters import LoRA
from lit_unlearn.core.errors import MethodError
from lit_unlearn.core.tokens import IGNORE, dataset_batches
from lit_unlearn.methods import RMU
from conftest import make_qa_datamodule, perturb_lora


def hidden(method, batch: dict, layer: int) -> torch.Tensor:
    """Output of decoder layer ``layer`` from the model's own ``output_hidden_states`` (index 0 = embeddings; the
    tests steer layer 0 of 2, so the entry is not the final-norm output)."""
    out = method.lm(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True,
                    use_cache=False)
    return out.hidden_states[layer + 1]


def steered(batch: dict, positions: str = "text") -> torch.Tensor:
    """By hand: every real token but each row's first (right padding: column 0), or its scored ones."""
    mask = batch["attention_mask"].bool().clone()
    if positions == "answer":
        mask &= batch["labels"] != IGNORE
    mask[:, 0] = False
    return mask


def by_hand(h: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    sq = ((h - target) ** 2).sum(-1) / h.size(-1)  # (1/d) ||h_t - target_t||^2 per steered token
    return sq[mask].mean()


def direction(hidden_size: int, seed: int) -> torch.Tensor:
    u = torch.rand(hidden_size, generator=torch.Generator().manual_seed(seed))
    return u / u.norm()


def test_loss_on_known_activations_absolute_scale(make_method, qa_batch):
    method = make_method(RMU, layer=0, steering=3.0, steering_scale="absolute", alpha=7.0, seed=5)
    perturb_lora(method, scale=0.3)  # a trained-looking adapter, so the retain term is not 0
    fb, rb = qa_batch["forget"], qa_batch["retain"]
    c = 3.0 * direction(method.lm.config.hidden_size, 5)
    torch.testing.assert_close(method.control, c)
    assert method.control.norm().item() == pytest.approx(3.0)
    with torch.no_grad():
        f = by_hand(hidden(method, fb, 0), c, steered(fb))
        with method.adapter.disabled(method.lm):
            h0 = hidden(method, rb, 0)
        r = by_hand(hidden(method, rb, 0), h0, steered(rb))
    assert r.item() > 1e-8
    loss = method.training_step(qa_batch, 0)
    torch.testing.assert_close(loss, f + 7.0 * r, rtol=1e-5, atol=1e-6)
    # retain: none drops the activation match
    method.retain = "none"
    torch.testing.assert_close(method.training_step(qa_batch, 0), f, rtol=1e-5, atol=1e-6)


def test_the_steered_tokens_are_the_text_but_its_first_token(make_method, qa_batch):
    """The default steers prompt and answer (not the answer alone, which leaves the position predicting the first
    answer token alone), never the first token; ``positions: answer`` keeps the scored ones."""
    fb = qa_batch["forget"]
    text = make_method(RMU, layer=0, steering=2.0, steering_scale="absolute")
    answer = make_method(RMU, layer=0, steering=2.0, steering_scale="absolute", positions="answer")
    with torch.no_grad():
        h = hidden(text, fb, 0)
        c = text.control
        for method, positions in ((text, "text"), (answer, "answer")):
            expected = by_hand(h, c, steered(fb, positions))
            got = method.training_step({"forget": fb}, 0)
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
        with_first = steered(fb).clone()
        with_first[:, 0] = True
        assert by_hand(h, c, with_first).item() != pytest.approx(by_hand(h, c, steered(fb)).item(), rel=1e-4)
    assert steered(fb).sum() > steered(fb, "answer").sum()  # the prompt tokens are steered too


def test_corpus_scale_is_k_times_the_measured_median_norm(make_method, tiny_model_dir, qa_files):
    """The resolved control norm equals steering x the median per-token norm of the frozen model's layer output over
    the forget set's steered tokens, measured independently from ``output_hidden_states``."""
    dm = make_qa_datamodule(tiny_model_dir, qa_files)
    method = make_method(RMU, layer=0, steering=2.5)  # steering_scale: corpus, the default
    batches = list(dataset_batches(dm.datasets["forget"], dm.tokenizer.pad_token_id, "forget", 3))
    method.measure_scale(batches)
    with torch.no_grad():
        norms = torch.cat([hidden(method, b, 0).norm(dim=-1)[steered(b)] for b in batches])
    assert method.measured["rmu_activation_norm"] == pytest.approx(float(norms.median()), rel=1e-5)
    assert method.control.norm().item() == pytest.approx(2.5 * float(norms.median()), rel=1e-5)
    assert method.measured["rmu_control_norm"] == pytest.approx(2.5 * float(norms.median()), rel=1e-5)
    torch.testing.assert_close(method.control / method.control.norm(), direction(method.lm.config.hidden_size, 0))


def test_sample_scale_gives_each_row_its_own_norm(make_method, qa_batch):
    """Adaptive RMU: c_i = steering x the row's mean token norm under the frozen model, cached per row."""
    method = make_method(RMU, layer=0, steering=1.5, steering_scale="sample")
    perturb_lora(method, scale=0.3)
    fb = qa_batch["forget"]
    mask = steered(fb)
    with torch.no_grad():
        with method.adapter.disabled(method.lm):
            row_norm = (hidden(method, fb, 0).norm(dim=-1) * mask).sum(-1) / mask.sum(-1)
        targets = 1.5 * row_norm[:, None, None] * direction(method.lm.config.hidden_size, 0)
        expected = by_hand(hidden(method, fb, 0), targets, mask)
    assert not torch.allclose(row_norm[0], row_norm[1])  # the rows differ, so per-row targets are tested
    got = method.training_step({"forget": fb}, 0)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    assert len(method.reference_cache) == fb["input_ids"].size(0)  # computed once per row


def test_a_fit_measures_the_scale_and_the_forget_mse_before_and_after(make_method, tiny_model_dir, qa_files, capsys):
    dm = make_qa_datamodule(tiny_model_dir, qa_files, batch_size=2)
    method = make_method(RMU, layer=1, steering=3.0, alpha=10.0, lr=5e-2)
    trainer = L.Trainer(max_steps=12, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    trainer.fit(method, datamodule=dm)
    m = method.measured
    assert {"rmu_activation_norm", "rmu_control_norm", "rmu_forget_mse_start", "rmu_forget_mse_end"} <= set(m)
    assert m["rmu_control_norm"] == pytest.approx(3.0 * m["rmu_activation_norm"])
    assert m["rmu_forget_mse_end"] < 0.9 * m["rmu_forget_mse_start"]  # the forget activations moved toward c
    assert "forget MSE" in capsys.readouterr().out


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
    ({"layer": 1, "steering": 0.0}, r"--model.steering must be > 0"),
    ({"layer": 1, "steering_scale": "relative"}, r"--model.steering_scale must be one of absolute, corpus, sample"),
    ({"layer": 1, "alpha": -1.0}, r"--model.alpha must be >= 0"),
    ({"layer": 1, "positions": "prompt"}, r"--model.positions must be text or answer"),
])
def test_bad_rmu_settings_are_one_line(kwargs, message, make_method):
    with pytest.raises(MethodError, match=message):
        make_method(RMU, **kwargs)
