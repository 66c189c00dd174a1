"""LoReFT interventions (identity cases, where they act, bad specs), GRUN's gate and loss, and token-level NPO."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from conftest import optimizer_steps, perturb_lora
from lit_unlearn.adapters import AdapterError, LoReFT, attach_saved_adapter
from lit_unlearn.adapters.reft import Intervention
from lit_unlearn.methods import GRUN, NPO, TNPO, MethodError
from lit_unlearn.models import load_causal_lm

pytestmark = pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")


def logits(model, batch):
    with torch.no_grad():
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


# ---- the intervention ----------------------------------------------------------------------------------------------
def test_intervention_identities_and_its_edit_lies_in_the_row_space_of_r():
    torch.manual_seed(0)
    iv = Intervention(hidden=16, rank=3, gated=True, gate_hidden=[])
    r = iv.rotate.weight.detach()
    torch.testing.assert_close(r @ r.T, torch.eye(3), rtol=1e-5, atol=1e-5)  # orthonormal rows
    h = torch.randn(5, 16)
    out, logit = iv(h)
    assert logit.shape == (5,) and not torch.allclose(out, h, atol=1e-4)
    # the edit lies in span(R^T): the part of h orthogonal to R's rows is kept
    orth = torch.eye(16) - r.T @ r
    torch.testing.assert_close((out - h) @ orth, torch.zeros(5, 16), rtol=0, atol=1e-5)
    opt = torch.optim.AdamW(iv.parameters(), lr=1e-2)  # R stays orthonormal (and non-zero) through training
    for _ in range(3):
        opt.zero_grad()
        iv(h)[0].pow(2).sum().backward()
        opt.step()
    r = iv.rotate.weight.detach()
    torch.testing.assert_close(r @ r.T, torch.eye(3), rtol=1e-5, atol=1e-5)
    h = torch.randn(5, 16)
    with torch.no_grad():  # a closed gate: the identity
        iv.gate[-1].weight.zero_()
        iv.gate[-1].bias.fill_(-1e4)
    torch.testing.assert_close(iv(h)[0], h, rtol=0, atol=0)
    plain = Intervention(hidden=16, rank=3, gated=False, gate_hidden=[])
    with torch.no_grad():  # W = R, b = 0: W h + b - R h = 0, the identity
        plain.source.weight.copy_(plain.rotate.weight)
        plain.source.bias.zero_()
    torch.testing.assert_close(plain(h)[0], h, rtol=0, atol=1e-6)


def test_loreft_acts_at_the_last_prompt_token_only(make_method, qa_batch, tiny_model_dir):
    from lit_unlearn.methods import Finetune

    method = make_method(Finetune, adapter=LoReFT(layers=[0], rank=2, position="last_prompt"))
    base = make_method(Finetune, adapter=None)
    fb = qa_batch["forget"]
    with torch.no_grad():
        got, want = method(fb, logits=True).logits, base(fb, logits=True).logits
    prompt_len = (fb["labels"] != -100).float().argmax(-1)
    for i, p in enumerate(prompt_len.tolist()):
        # before the last prompt token nothing changes (causal); from it on the intervened state is read
        torch.testing.assert_close(got[i, :p - 1], want[i, :p - 1], rtol=1e-5, atol=1e-5)
        assert not torch.allclose(got[i, p - 1], want[i, p - 1], atol=1e-4)
    with method.adapter.disabled(method.lm), torch.no_grad():
        torch.testing.assert_close(method(fb, logits=True).logits, want, rtol=1e-5, atol=1e-5)


def test_loreft_bad_specs(tiny_model_dir, make_method, qa_batch):
    from lit_unlearn.methods import Finetune

    with pytest.raises(AdapterError, match=r"layer 5 is past the model's depth \(2 layers.*init_args.layers"):
        LoReFT(layers=[0, 5]).apply(load_causal_lm(tiny_model_dir))
    with pytest.raises(AdapterError, match="position must be"):
        LoReFT(position="first")
    method = make_method(Finetune, adapter=LoReFT(layers=[1], rank=2))
    fb = dict(qa_batch["forget"])
    labels = fb["labels"].clone()
    labels[0, :] = fb["input_ids"][0]  # the whole row scored: its prompt is empty
    labels[0, fb["attention_mask"][0] == 0] = -100
    fb["labels"] = labels
    with pytest.raises(AdapterError, match="selects no token of row 0.*--model.adapter.init_args.position"):
        method(fb)


def test_loreft_round_trips_and_stacks(tiny_model_dir, qa_batch, tmp_path):
    adapter = LoReFT(layers=[0, 1], rank=2, gated=True)
    torch.manual_seed(1)
    model = adapter.apply(load_causal_lm(tiny_model_dir))
    fb = qa_batch["forget"]
    want = logits(model, fb)
    adapter.save(model, tmp_path / "r")
    other = LoReFT(layers=[0, 1], rank=2, gated=True)
    torch.manual_seed(2)
    fresh = other.apply(load_causal_lm(tiny_model_dir))
    assert not torch.allclose(logits(fresh, fb), want, atol=1e-4)
    other.load(fresh, tmp_path / "r")
    torch.testing.assert_close(logits(fresh, fb), want)
    stacked = attach_saved_adapter(load_causal_lm(tiny_model_dir), tmp_path / "r")
    assert not any(p.requires_grad for p in stacked.parameters())
    torch.testing.assert_close(logits(stacked, fb), want)


# ---- GRUN ----------------------------------------------------------------------------------------------------------------
def test_grun_loss_is_grad_diff_plus_gate_bce(make_method, qa_batch):
    method = make_method(GRUN, adapter="loreft", gate_weight=10.0)
    fb, rb = qa_batch["forget"], qa_batch["retain"]
    with torch.no_grad():
        loss = method.training_step(qa_batch, 0)
        f, r = method(fb), method(rb)
        gf, gr = method.gate_values(fb), method.gate_values(rb)
    assert gf.shape == (fb["input_ids"].size(0),) and ((gf > 0) & (gf < 1)).all() and ((gr > 0) & (gr < 1)).all()
    # recompute the BCE from the recorded logits of separate forwards: one position (the last prompt token) per
    # row and layer
    with torch.no_grad():
        method(fb)
        lf = method.adapter.gate_logits(method.lm)[1]
        method(rb)
        lr = method.adapter.gate_logits(method.lm)[1]
    assert lf.numel() == 2 * fb["input_ids"].size(0)  # 2 layers
    bce = F.binary_cross_entropy_with_logits(torch.cat([lf, lr]),
                                             torch.cat([torch.ones_like(lf), torch.zeros_like(lr)]))
    assert loss.item() == pytest.approx(-f.ce.item() + 2.0 * r.ce.item() + 10.0 * bce.item(), rel=1e-4)


@pytest.fixture(scope="module")
def wide_activations_model(tmp_path_factory) -> str:
    """The tiny Llama with weights drawn at std 0.5 instead of 0.02: hidden states of order 1, like a real model's
    (the gate is a linear function of h; on the std-0.02 model its logits barely differ between rows)."""
    from lit_unlearn.testing import make_tiny_model

    return str(make_tiny_model(tmp_path_factory.mktemp("tiny_wide"), initializer_range=0.5))


@pytest.mark.parametrize("loss", ["grad_diff", "npo"])
def test_grun_training_opens_the_gate_on_forget_and_closes_it_on_retain(loss, make_method, wide_activations_model,
                                                                         qa_files):
    from conftest import first_train_batch, make_qa_datamodule

    qa_batch = first_train_batch(make_qa_datamodule(wide_activations_model, qa_files, batch_size=2))
    method = make_method(GRUN, adapter="loreft", loss=loss, model_dir=wide_activations_model)
    optimizer_steps(method, qa_batch, 30, lr=5e-2)
    with torch.no_grad():
        gf, gr = method.gate_values(qa_batch["forget"]), method.gate_values(qa_batch["retain"])
    assert gf.min() > 0.8 and gr.max() < 0.2, (gf, gr)


def test_grun_refuses_what_it_cannot_train(make_method):
    with pytest.raises(MethodError, match="works with --model.adapter LoReFT"):
        make_method(GRUN, adapter="lora")
    with pytest.raises(MethodError, match="gated true"):
        make_method(GRUN, adapter=LoReFT(layers=[0], gated=False))
    with pytest.raises(MethodError, match="must not be none"):
        make_method(GRUN, adapter="loreft", retain="none")
    with pytest.raises(MethodError, match="grad_diff, idk, npo or rmu"):
        make_method(GRUN, adapter="loreft", loss="rmu_kl")
    with pytest.raises(MethodError, match="--model.steering must be > 0"):
        make_method(GRUN, adapter="loreft", loss="rmu", steering=0.0)
    with pytest.raises(MethodError, match="steering_scale sample is RMU's alone"):
        make_method(GRUN, adapter="loreft", loss="rmu", steering_scale="sample")
    with pytest.raises(MethodError, match="--model.gate_warmup_steps must be >= 0"):
        make_method(GRUN, adapter="loreft", gate_warmup_steps=-1)
    with pytest.raises(MethodError, match="--model.beta must be > 0"):
        make_method(GRUN, adapter="loreft", beta=0.0)
    with pytest.raises(AdapterError, match="eval_position must be"):
        LoReFT(eval_position="middle")
    with pytest.raises(AdapterError, match="--model.adapter.init_args.fraction"):
        LoReFT(position="fraction", fraction=1.5)


# ---- GRUN's WMDP variant: gated RMU at a fraction of the text ----------------------------------------------------------
def test_loreft_fraction_edits_one_token_per_row_at_the_cut(make_method, qa_batch):
    from lit_unlearn.methods import Finetune

    method = make_method(Finetune, adapter=LoReFT(layers=[0], rank=2, position="fraction", fraction=0.5))
    base = make_method(Finetune, adapter=None)
    fb = qa_batch["forget"]
    n = fb["attention_mask"].sum(-1)
    assert len(set(n.tolist())) > 1  # rows of unequal length: the cut is per row
    with torch.no_grad():
        edited_logits, plain = method(fb, logits=True).logits, base(fb, logits=True).logits
    edited = method.adapter.edited_positions(method.lm)
    cut = (n * 0.5).floor().long() - 1
    want = torch.zeros_like(edited)
    want[torch.arange(len(n)), cut] = True
    assert torch.equal(edited, want)
    for row, c in enumerate(cut.tolist()):  # causal: the logits before the cut are the base model's, after it not
        torch.testing.assert_close(edited_logits[row, :c], plain[row, :c])
        assert not torch.allclose(edited_logits[row, c:n[row]], plain[row, c:n[row]], atol=1e-5)


def layer_hidden(model, batch, index):
    """The output of decoder layer ``index`` of the plain model, by a forward hook."""
    seen = []
    handle = model.model.layers[index].register_forward_hook(lambda m, a, out: seen.append(
        out[0] if isinstance(out, tuple) else out))
    with torch.no_grad():
        model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    handle.remove()
    return seen[0]


def test_grun_rmu_loss_by_hand(make_method, qa_batch, tiny_model_dir):
    adapter = LoReFT(layers=[0, 1], rank=2, gated=True, position="fraction", fraction=0.5)
    method = make_method(GRUN, adapter=adapter, loss="rmu", steering=3.0, steering_scale="absolute", rmu_layer=1,
                         gate_weight=100.0, seed=7)
    with torch.no_grad():  # W = R, b = 0: the edit is the identity; every gate logit is 0.3
        for iv in method.adapter.provider(method.lm).at.values():
            iv.source.weight.copy_(iv.rotate.weight)
            iv.source.bias.zero_()
            iv.gate[-1].weight.zero_()
            iv.gate[-1].bias.fill_(0.3)
        loss = method.training_step(qa_batch, 0)
    plain = load_causal_lm(tiny_model_dir)
    fb, rb = qa_batch["forget"], qa_batch["retain"]
    h = layer_hidden(plain, fb, 1)  # rmu_layer 1: the last layer's output
    n = fb["attention_mask"].sum(-1)
    cols = torch.arange(h.size(1))[None]
    after = (cols > ((n * 0.5).floor().long() - 1)[:, None]) & (fb["labels"] != -100)
    u = torch.rand(h.size(-1), generator=torch.Generator().manual_seed(7))
    c = 3.0 * u / u.norm()
    forget = ((h - c).pow(2).mean(-1) * after).sum() / after.sum()
    # retain: the identity edit leaves the activations at the un-intervened model's, MSE 0
    n_f, n_r = 2 * fb["input_ids"].size(0), 2 * rb["input_ids"].size(0)  # one position per row and layer
    p = torch.sigmoid(torch.tensor(0.3))
    bce = (n_f * -torch.log(p) + n_r * -torch.log(1 - p)) / (n_f + n_r)
    assert loss.item() == pytest.approx(forget.item() + 100.0 * bce.item(), rel=1e-4)


def test_grun_rmu_steers_forget_and_gates_retain(make_method, wide_activations_model, qa_files):
    from conftest import first_train_batch, make_qa_datamodule

    qa_batch = first_train_batch(make_qa_datamodule(wide_activations_model, qa_files, batch_size=2))
    adapter = LoReFT(layers=[0, 1], rank=2, gated=True, position="fraction")
    method = make_method(GRUN, adapter=adapter, loss="rmu", steering=10.0, steering_scale="absolute", rmu_layer=1,
                         gate_weight=1.0, model_dir=wide_activations_model)
    trained = {n for n, _ in method.trainable()}
    assert trained and all("interventions" in n for n in trained)  # the base stays frozen
    with torch.no_grad():
        before = method.rmu_losses(qa_batch["forget"], qa_batch["retain"])[0].item()
    optimizer_steps(method, qa_batch, 30, lr=5e-2)
    with torch.no_grad():
        after, retain, *_ = method.rmu_losses(qa_batch["forget"], qa_batch["retain"])
        gf, gr = method.gate_values(qa_batch["forget"]), method.gate_values(qa_batch["retain"])
    # a rank-2 edit at one position moves the later activations only part of the way to c
    assert after.item() < 0.9 * before, (before, after.item())
    assert gf.min() > 0.8 and gr.max() < 0.2, (gf, gr)


def test_grun_rmu_defaults_steer_the_second_to_last_layer_in_units_of_its_norm(make_method, qa_batch, tiny_model_dir):
    """GRUN reads hidden_states[31] of 32 (renjie3/GRUN reft_trainer.py:478): the output of the second-to-last layer,
    here layer 0 of 2; the control norm is steering x the median token norm there (first tokens excluded), and both
    MSEs are divided by that norm squared / d."""
    adapter = LoReFT(layers=[0, 1], rank=2, gated=True, position="fraction", fraction=0.5)
    method = make_method(GRUN, adapter=adapter, loss="rmu", steering=2.0, gate_weight=0.0, seed=3)
    assert method.rmu_layer == -2 and method.steering_scale == "corpus"
    with torch.no_grad():
        for iv in method.adapter.provider(method.lm).at.values():  # W = R, b = 0: the identity edit
            iv.source.weight.copy_(iv.rotate.weight)
            iv.source.bias.zero_()
        loss = method.training_step(qa_batch, 0)
    plain = load_causal_lm(tiny_model_dir)
    fb = qa_batch["forget"]
    h = layer_hidden(plain, fb, 0)
    real = fb["attention_mask"].bool().clone()
    real[:, 0] = False
    s = h.norm(dim=-1)[real].median()
    assert method.measured["grun_activation_norm"] == pytest.approx(s.item(), rel=1e-5)
    n = fb["attention_mask"].sum(-1)
    cols = torch.arange(h.size(1))[None]
    after = (cols > ((n * 0.5).floor().long() - 1)[:, None]) & (fb["labels"] != -100)
    u = torch.rand(h.size(-1), generator=torch.Generator().manual_seed(3))
    c = 2.0 * s * u / u.norm()
    forget = ((h - c).pow(2).mean(-1) * after).sum() / after.sum() / (s ** 2 / h.size(-1))
    assert loss.item() == pytest.approx(forget.item(), rel=1e-4)


def test_grun_gate_warmup_ramps_the_unlearning_terms_not_the_gate(make_method, qa_batch, monkeypatch):
    """GRUN's warm_up_gate_step (reft_trainer.py:270-274): the unlearning and retain terms ramp from 0, the gate loss
    is at full weight from the first step."""
    method = make_method(GRUN, adapter="loreft", gate_warmup_steps=10)
    assert [method.warmup_factor(s) for s in (0, 5, 10, 30)] == [0.0, 0.5, 1.0, 1.0]
    assert make_method(GRUN, adapter="loreft").warmup_factor(0) == 1.0
    monkeypatch.setattr(GRUN, "global_step", property(lambda self: 0))
    with torch.no_grad():
        warm = method.training_step(qa_batch, 0)
        method(qa_batch["forget"])
        lf = method.adapter.gate_logits(method.lm)[1]
        method(qa_batch["retain"])
        lr = method.adapter.gate_logits(method.lm)[1]
    bce = F.binary_cross_entropy_with_logits(torch.cat([lf, lr]), torch.cat([torch.ones_like(lf),
                                                                               torch.zeros_like(lr)]))
    assert warm.item() == pytest.approx(10.0 * bce.item(), rel=1e-4)


def test_loreft_eval_position_applies_in_evaluation_mode(make_method, qa_batch):
    """GRUN's WMDP gate trains at 80% of a text and scores multiple choice at the last prompt token."""
    from lit_unlearn.methods import Finetune

    adapter = LoReFT(layers=[0], rank=2, position="fraction", fraction=0.5, eval_position="last_prompt")
    method = make_method(Finetune, adapter=adapter)
    fb = qa_batch["forget"]
    n = fb["attention_mask"].sum(-1)
    method.lm.train()
    method(fb)
    trained_at = method.adapter.edited_positions(method.lm).float().argmax(-1)
    assert trained_at.tolist() == ((n * 0.5).floor().long() - 1).tolist()
    method.lm.eval()
    method(fb)
    evaluated_at = method.adapter.edited_positions(method.lm).float().argmax(-1)
    prompt_len = (fb["labels"] != -100).float().argmax(-1)
    assert evaluated_at.tolist() == (prompt_len - 1).tolist()


# ---- TNPO ------------------------------------------------------------------------------------------------------------------
def per_token_npo(method, batch, weights=None):
    """-(2/beta) weighted mean over answer tokens of log sigma(beta * (CE_theta,t - CE_ref,t)), by hand."""
    with torch.no_grad():
        theta = method(batch, logits=True)
        with method.adapter.disabled(method.lm):
            ref = method(batch, logits=True)
    delta = (theta.token_nll - ref.token_nll).clamp(-20, 20)
    w = theta.mask.float() if weights is None else weights
    return (-(2 / method.beta) * F.logsigmoid(method.beta * delta) * w).sum() / w.sum()


def test_tnpo_defaults_are_the_original_runs_and_its_push_fades(make_method, qa_batch):
    """beta 4.5 and no retain term (lluvecwonv/memorization_unlearn TOFU/evaluate_all_checkpoints.sh:9,
    TOFU/dataloader.py:227-276). The gradient on a token's NLL is 2 sigma(-beta delta) / N: at 4.5 a token whose NLL
    already rose by 2 nats gets a thousandth of the push of an unmoved one (at NPO's 0.1 it got 0.9 of it, which made
    TNPO gradient ascent)."""
    from dataclasses import replace
    from types import SimpleNamespace

    method = make_method(TNPO)
    assert method.beta == 4.5 and method.retain == "none"
    fb = qa_batch["forget"]
    with torch.no_grad():
        stats = method(fb)
    nll = stats.token_nll.detach().clone().requires_grad_(True)
    ref = stats.token_nll.detach().clone()
    ref[0] -= 2.0  # row 0's tokens: NLL 2 nats above the reference already; row 1 at the reference
    method.reference_stats = lambda batch, logits=False: SimpleNamespace(token_nll=ref)
    method.forget_loss(fb, replace(stats, token_nll=nll)).backward()
    g = nll.grad.abs()
    ratio = (g[0][stats.mask[0]].mean() / g[1][stats.mask[1]].mean()).item()
    assert ratio == pytest.approx(torch.sigmoid(torch.tensor(-9.0)).item() / 0.5, rel=1e-3)
    assert ratio < 1e-3


def test_tnpo_with_an_all_ones_mask_is_npos_per_token_form(make_method, qa_batch):
    method = make_method(TNPO, beta=0.5)
    assert method.training_step(qa_batch, 0).item() == pytest.approx(2 / 0.5 * math.log(2), rel=1e-5)  # at the ref
    perturb_lora(method, scale=0.3, seed=0)
    fb = dict(qa_batch["forget"])
    want = per_token_npo(method, fb)
    with torch.no_grad():
        assert method.training_step({"forget": fb}, 0).item() == pytest.approx(want.item(), rel=1e-5)
        fb["token_mask"] = torch.ones_like(fb["input_ids"])
        assert method.training_step({"forget": fb}, 0).item() == pytest.approx(want.item(), rel=1e-5)
    # NPO on rows of one answer token each would be the same numbers; on longer answers the per-token form differs
    npo = make_method(NPO, beta=0.5)
    perturb_lora(npo, scale=0.3, seed=0)
    with torch.no_grad():
        assert npo.training_step({"forget": fb}, 0).item() != pytest.approx(want.item(), rel=1e-3)


def test_tnpo_hard_and_soft_masks(make_method, qa_batch):
    fb = dict(qa_batch["forget"])
    answer = fb["labels"] != -100
    first = answer & (answer.cumsum(-1) == 1)  # each row's first answer token
    fb["token_mask"] = first.long()
    hard = make_method(TNPO, beta=0.5)
    perturb_lora(hard, scale=0.3, seed=0)
    with torch.no_grad():
        theta = hard(fb)
    scored = F.pad(first[:, 1:].float(), (0, 1)) * theta.mask  # position t scores token t + 1
    with torch.no_grad():
        assert hard.training_step({"forget": fb}, 0).item() == pytest.approx(
            per_token_npo(hard, fb, scored).item(), rel=1e-5)
    soft = make_method(TNPO, beta=0.5, weighting="soft")
    perturb_lora(soft, scale=0.3, seed=0)
    w = (scored * 5.0 + (1 - scored) * 0.1) * theta.mask
    with torch.no_grad():
        assert soft.training_step({"forget": fb}, 0).item() == pytest.approx(
            per_token_npo(soft, fb, w).item(), rel=1e-5)
