"""The peer's methods (issue 24): DPO (IdkDPO), UNDIAL, SatImp, WGA, CE-U and PDU, each checked against its formula
written out by hand from the tiny model's raw logits (an HF forward, a loop over answer tokens), away from the
reference (a perturbed LoRA), plus their defaults, knobs refused with one line, and PDU's dual update."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from conftest import perturb_lora
from lit_unlearn.core.errors import MethodError
from lit_unlearn.core.tokens import IGNORE
from lit_unlearn.methods import CEU, DPO, PDU, UNDIAL, WGA, SatImp


def raw(method, batch: dict, reference: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits of the positions that predict a token, their target tokens) of ``batch``: an HF forward, shifted by
    hand; ``reference``: the adapter disabled."""
    with torch.no_grad():
        def run():
            return method.lm(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
        if reference:
            with method.lm.disable_adapter():
                logits = run()
        else:
            logits = run()
    return logits[:, :-1], batch["labels"][:, 1:]


def answer_tokens(logits: torch.Tensor, targets: torch.Tensor):
    """Each answer token as (row, logits at its predicting position, token id), in row order."""
    for i in range(targets.size(0)):
        for t in range(targets.size(1)):
            if targets[i, t] != IGNORE:
                yield i, logits[i, t], int(targets[i, t])


def retain_ce(method, batch) -> float:
    logits, targets = raw(method, batch)
    nll = [-torch.log_softmax(z, -1)[y].item() for _, z, y in answer_tokens(logits, targets)]
    return sum(nll) / len(nll)


def test_wga_and_satimp_weigh_each_token_by_its_detached_probability(make_method, qa_batch):
    for cls, kwargs, weight in ((WGA, {"beta": 2.0}, lambda p: p ** 2.0),
                                (SatImp, {"beta1": 3.0, "beta2": 2.0}, lambda p: p ** 3.0 * (1 - p) ** 2.0)):
        method = make_method(cls, retain="nll", forget_weight=0.5, retain_weight=1.5, **kwargs)
        perturb_lora(method)
        loss = method.training_step(qa_batch, 0)
        logits, targets = raw(method, qa_batch["forget"])
        terms = []
        for _, z, y in answer_tokens(logits, targets):
            ce = -torch.log_softmax(z, -1)[y].item()
            terms.append(weight(math.exp(-ce)) * ce)
        expected = 0.5 * -(sum(terms) / len(terms)) + 1.5 * retain_ce(method, qa_batch["retain"])
        assert loss.item() == pytest.approx(expected, rel=1e-5), cls.__name__
        # the weight is detached: the gradient is the weighted ascent's, not the product rule's
        (loss - 1.5 * method.retain_loss(qa_batch["retain"], method(qa_batch["retain"]))).backward()
        grads = [p.grad for _, p in method.trainable() if p.grad is not None]
        assert grads and all(torch.isfinite(g).all() for g in grads)


def test_the_defaults_are_open_unlearnings():
    """configs/trainer/{WGA,SatImp,UNDIAL,DPO,CEU}.yaml and community/methods/PDU/run.sh (TOFU)."""
    from lit_unlearn.adapters import LoRA

    args = {"model": "unused", "adapter": LoRA()}
    wga, sat, und, dpo, ceu = WGA(**args), SatImp(**args), UNDIAL(**args), DPO(**args), CEU(**args)
    assert (wga.beta, wga.forget_weight, wga.retain_weight, wga.retain) == (1.0, 1.0, 1.0, "nll")
    assert (sat.beta1, sat.beta2, sat.forget_weight, sat.retain_weight, sat.retain) == (5.0, 1.0, 0.1, 1.0, "nll")
    assert (und.beta, und.retain) == (10.0, "none")
    assert (dpo.beta, dpo.retain, dpo.retain_weight) == (0.1, "nll", 1.0)
    assert (ceu.ignore_first, ceu.retain) == (1, "none")
    pdu = PDU(**args)
    assert (pdu.dual_init, pdu.dual_step, pdu.dual_warmup_epochs, pdu.eps_scale) == (100.0, 5.0, 5, 1.5)


@pytest.mark.parametrize("cls, kwargs, message", [
    (WGA, {"beta": 0.0}, "--model.beta must be > 0"),
    (SatImp, {"beta2": -1.0}, "--model.beta2 must be > 0"),
    (UNDIAL, {"beta": -3.0}, "--model.beta must be > 0"),
    (DPO, {"beta": 0.0}, "--model.beta must be > 0"),
    (CEU, {"ignore_first": -1}, "--model.ignore_first must be >= 0"),
    (PDU, {"retain": "none"}, "PDU constrains the retain loss"),
    (PDU, {"retain": "kl"}, "needs an absolute --model.retain_eps"),
    (PDU, {"dual_step": 0.0}, "--model.dual_step must be > 0"),
])
def test_bad_knobs_are_one_line(cls, kwargs, message):
    from lit_unlearn.adapters import LoRA

    with pytest.raises(MethodError, match=message) as err:
        cls(model="unused", adapter=LoRA(), **kwargs)
    assert "\n" not in str(err.value)


def test_ceu_descends_towards_the_models_own_distribution_without_the_answer(make_method, qa_batch):
    method = make_method(CEU, ignore_first=1)
    perturb_lora(method)
    loss = method.training_step(qa_batch, 0)
    logits, targets = raw(method, qa_batch["forget"])
    terms, seen = [], {}
    for i, z, y in answer_tokens(logits, targets):
        seen[i] = seen.get(i, 0) + 1
        if seen[i] <= 1:  # the first answer token of each row is left out
            continue
        q = torch.softmax(torch.cat([z[:y], torch.tensor([-math.inf]), z[y + 1:]]), -1)
        terms.append(-(q * torch.log_softmax(z, -1)).sum().item())
    assert loss.item() == pytest.approx(sum(terms) / len(terms), rel=1e-5)
    assert make_method(CEU, ignore_first=0).training_step(qa_batch, 0).item() != pytest.approx(loss.item())


@pytest.mark.parametrize("reference", ["adapter_off", "cached"])
def test_undial_distils_towards_the_reference_with_the_answer_logit_lowered(reference, make_method, qa_batch):
    method = make_method(UNDIAL, beta=3.0, reference=reference)
    perturb_lora(method)
    loss = method.training_step(qa_batch, 0)
    logits, targets = raw(method, qa_batch["forget"])
    ref_logits, _ = raw(method, qa_batch["forget"], reference=True)
    terms = []
    for (_, z, y), (_, zr, _) in zip(answer_tokens(logits, targets), answer_tokens(ref_logits, targets)):
        adjusted = zr.clone()
        adjusted[y] -= 3.0
        terms.append(-(torch.softmax(adjusted, -1) * torch.log_softmax(z, -1)).sum().item())
    assert loss.item() == pytest.approx(sum(terms) / len(terms), rel=1e-5)


def test_dpo_prefers_a_refusal_to_the_forget_answer_relative_to_the_reference(make_method, qa_batch):
    method = make_method(DPO, beta=0.5, retain="nll", retain_weight=2.0)
    perturb_lora(method)
    loss = method.training_step(qa_batch, 0)
    fb = qa_batch["forget"]
    chosen_batch = method.prepare_forget(fb)
    n = fb["input_ids"].size(0)
    refusals = chosen_batch["answer"][n:]
    assert all(r.strip() in [x.strip() for x in method.replacements()] for r in refusals)
    margins = []
    for i in range(n):
        def logp(answer: str, reference: bool) -> float:
            b = method.encode([fb["prompt"][i]], [answer])
            lg, tg = raw(method, b, reference)
            return sum(torch.log_softmax(z, -1)[y].item() for _, z, y in answer_tokens(lg, tg))
        r_w = logp(refusals[i], False) - logp(refusals[i], True)
        r_l = logp(fb["answer"][i], False) - logp(fb["answer"][i], True)
        margins.append(r_w - r_l)
    forget = sum(-(2 / 0.5) * F.logsigmoid(torch.tensor(0.5 * m)).item() for m in margins) / n
    expected = forget + 2.0 * retain_ce(method, qa_batch["retain"])
    assert loss.item() == pytest.approx(expected, rel=1e-4)
    # at the start (adapter = identity) both log-ratios are 0: L_f = (2 / beta) log 2
    fresh = make_method(DPO, beta=0.5, retain="none")
    assert fresh.training_step(qa_batch, 0).item() == pytest.approx(4 * math.log(2), rel=1e-5)


def test_pdu_flattens_the_margin_and_moves_its_multiplier_by_dual_ascent(make_method, qa_batch):
    method = make_method(PDU, dual_init=2.0, dual_step=0.5, dual_warmup_epochs=0, retain_eps=0.1,
                         forget_weight=1.5)
    perturb_lora(method)
    loss = method.training_step(qa_batch, 0)
    logits, targets = raw(method, qa_batch["forget"])
    margins = [(z.max() - z.mean()).item() ** 2 for _, z, _ in answer_tokens(logits, targets)]
    r = retain_ce(method, qa_batch["retain"])
    assert loss.item() == pytest.approx(1.5 * sum(margins) / len(margins) + 2.0 * (r - 0.1), rel=1e-5)
    method.on_train_batch_end(None, qa_batch, 0)
    assert method.dual == pytest.approx(max(0.0, 2.0 + 0.5 * (r - 0.1)), rel=1e-6)
    # a loss below the bound lowers the multiplier, never below 0
    method.measured["pdu_dual"] = 0.01
    method._last_retain = 0.0
    method.on_train_batch_end(None, qa_batch, 0)
    assert method.dual == 0.0


def test_pdu_measures_its_bound_from_the_starting_retain_loss(make_method, qa_batch):
    """epsilon is a loss magnitude: eps_scale x the starting model's retain NLL, not an absolute number."""
    method = make_method(PDU, eps_scale=1.5, dual_warmup_epochs=3)
    method.training_step(qa_batch, 0)  # outside a trainer: the first batch's retain loss is the start's
    start = method.measured["pdu_retain_nll_start"]
    assert start == pytest.approx(retain_ce(method, qa_batch["retain"]), rel=1e-5)
    assert method.epsilon == pytest.approx(1.5 * start)
    method.on_train_batch_end(None, qa_batch, 0)
    assert method.dual == 100.0  # still in the warm-up epochs: lambda does not move


def test_the_gradient_norm_and_reference_attacks_by_hand(make_method, qa_batch, tiny_model_dir):
    """gradnorm: -(mean over the model's parameter tensors of ||dL/dtheta||_2), L the row's mean answer NLL;
    reference: L_ref - L (issue 24's MIAs, as open-unlearning defines them), computed here from raw HF forwards."""
    from lit_unlearn.eval.mia import MIAEvaluator
    from lit_unlearn.methods import GradDiff

    method = make_method(GradDiff)
    perturb_lora(method)
    method.lm.eval()
    batch = qa_batch["forget"]
    ev = MIAEvaluator(attacks=["gradnorm", "reference"], reference_model=tiny_model_dir)
    assert ev.keys == ("loss", "zlib", "mink", "minkpp", "gradnorm", "reference")
    ev.update(method, batch)
    ev.compute()
    params = list(method.lm.parameters())
    assert not all(q.requires_grad for q in params)  # the base's flags are put back after the attack
    for i, row in enumerate(ev.last_rows):
        one = {k: v[i:i + 1] for k, v in batch.items() if isinstance(v, torch.Tensor)}
        flags = [q.requires_grad for q in params]
        for q in params:
            q.requires_grad_(True)
        logits, targets = method.lm(input_ids=one["input_ids"], attention_mask=one["attention_mask"]).logits[:, :-1], \
            one["labels"][:, 1:]
        nll = [-torch.log_softmax(z.float(), -1)[y] for _, z, y in answer_tokens(logits, targets)]
        loss = sum(nll) / len(nll)
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        for q, f in zip(params, flags):
            q.requires_grad_(f)
        norms = [g.double().norm() for g in grads if g is not None]
        assert row["gradnorm"] == pytest.approx(-float(sum(norms) / len(norms)), rel=1e-4)
        ours = float(loss.detach())
        lg, tg = raw(method, one, reference=True)  # the reference model here: the tiny base = the adapter disabled
        ref = [-torch.log_softmax(z, -1)[y].item() for _, z, y in answer_tokens(lg, tg)]
        assert row["reference"] == pytest.approx(sum(ref) / len(ref) - ours, rel=1e-4, abs=1e-6)
    with pytest.raises(Exception, match="reference attack needs reference_model"):
        MIAEvaluator(attacks=["reference"])
    with pytest.raises(Exception, match="unknown attack 'minus'"):
        MIAEvaluator(attacks=["minus"])
