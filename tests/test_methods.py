"""The method contract, parametrized over every method in ``lit_unlearn.methods.ALL_METHODS`` x every adapter it
accepts (LoRA, Prefix, SoftPrompt, LoReFT; ``UnlearningMethod.adapter_types``), as PEFT tests its tuners: a new method or
adapter is one more entry and gets every contract test here for free. The formula tests below use LoRA."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from conftest import first_train_batch, make_qa_datamodule, optimizer_steps, perturb_lora
from lit_unlearn.adapters import LoRA
from lit_unlearn.core.tokens import IGNORE, collate, encode
from lit_unlearn.eval import AnswerEvaluator
from lit_unlearn.methods import (
    ALL_METHODS,
    IDK,
    NPO,
    Finetune,
    GradAscent,
    GradAscentKL,
    GradDiff,
    MethodError,
    RandomLabel,
    SimNPO,
)
from lit_unlearn.methods.relabel import REFUSALS

pytestmark = pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")

METHOD_IDS = [cls.__name__ for cls in ALL_METHODS]
ADAPTER_KINDS = {"lora": "LoRA", "prefix": "Prefix", "soft_prompt": "SoftPrompt", "loreft": "LoReFT"}
#: every (method, adapter) pair the method accepts
CONTRACT = [(cls, kind) for cls in ALL_METHODS for kind, name in ADAPTER_KINDS.items()
            if cls.adapter_types is None or name in cls.adapter_types]
CONTRACT_IDS = [f"{cls.__name__}-{kind}" for cls, kind in CONTRACT]


# ---- helpers ------------------------------------------------------------------------------------------------------
def adapter_names(method) -> set[str]:
    """The state-dict names of the method's adapter parameters, found through the adapter (not by name)."""
    return set(method.trainable_names())


def hf_ce(method, batch: dict) -> torch.Tensor:
    """HF's own ``.loss`` (mean token CE over label positions): an independent reference for CE."""
    out = method.lm(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"],
                    use_cache=False)
    return out.loss


def per_row_nll(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of answer-token NLL, answer-token count) per row, written out from log_softmax by hand."""
    logp = torch.log_softmax(logits[:, :-1].float(), -1)
    tgt = labels[:, 1:]
    mask = tgt != IGNORE
    tok = -logp.gather(-1, tgt.clamp(min=0).unsqueeze(-1)).squeeze(-1) * mask
    return tok.sum(-1), mask.sum(-1)


def fusion_kwargs(cls) -> dict:
    """Force a retain term so there are two batches to fuse; GradAscentKL keeps its KL term, SPUL its own."""
    if cls.__name__ == "SPUL":
        return {}
    if cls.__name__ == "PIPrefix":
        return {"variant": "relabel"}
    return {"retain": "kl" if cls is GradAscentKL else "nll"}


# ---- (a) finite loss, (b) gradients only on the adapter ------------------------------------------------------------
@pytest.mark.parametrize("cls,kind", CONTRACT, ids=CONTRACT_IDS)
def test_training_step_gives_finite_loss_and_adapter_only_gradients(cls, kind, make_method, batch_for):
    qa_batch = batch_for(cls)
    assert set(qa_batch) == {"forget", "retain"}
    method = make_method(cls, adapter=kind)
    loss = method.training_step(qa_batch, 0)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()

    adapter_grads = []
    names = adapter_names(method)
    if kind == "lora":
        assert names == {n for n, _ in method.named_parameters() if "lora_" in n}
    for name, p in method.named_parameters():
        if name in names:
            assert p.requires_grad, name
            assert p.grad is not None, f"{name} got no gradient"
            assert torch.isfinite(p.grad).all(), name
            adapter_grads.append(p.grad.abs().sum().item())
        else:
            assert not p.requires_grad, f"base parameter {name} is trainable"
            assert p.grad is None, f"base parameter {name} received a gradient"
    assert adapter_grads, "no adapter parameters found"
    assert sum(g > 0 for g in adapter_grads) > 0, "every adapter gradient is zero"


# ---- (c) a few steps move the adapter only; (d) step 0 equals the reference -----------------------------------------
@pytest.mark.parametrize("cls,kind", CONTRACT, ids=CONTRACT_IDS)
def test_optimizer_steps_change_adapter_and_keep_base(cls, kind, make_method, batch_for):
    qa_batch = batch_for(cls)
    method = make_method(cls, adapter=kind)
    fb = qa_batch["forget"]
    with torch.no_grad():
        logits0 = method(fb, logits=True).logits.clone()
        ref0 = method.reference_stats(fb, logits=True).logits.clone()
    assert logits0.shape[:2] == fb["input_ids"].shape  # virtual tokens are cut from the outputs
    if method.adapter.starts_as_identity:
        # (d) a fresh LoRA (B = 0) is the identity: the model equals its adapter-disabled reference at step 0
        torch.testing.assert_close(logits0, ref0, rtol=0, atol=1e-6)
    else:  # a prefix or prompt changes the model from its first step; disabling it gives the base back
        assert not torch.allclose(logits0, ref0, atol=1e-4)
        base = make_method(Finetune, adapter=None)
        with torch.no_grad():
            torch.testing.assert_close(base(fb, logits=True).logits, ref0, rtol=0, atol=1e-5)

    before = {n: p.detach().clone() for n, p in method.named_parameters()}
    optimizer_steps(method, qa_batch, steps=3)
    after = dict(method.named_parameters())

    trained = adapter_names(method)
    base_names = [n for n in before if n not in trained]
    moving = [n for n in before if "lora_B" in n] if kind == "lora" else sorted(trained)
    assert base_names and moving
    for n in base_names:
        assert torch.equal(before[n], after[n]), f"base weight {n} changed"
    changed = [n for n in moving if not torch.equal(before[n], after[n])]
    assert len(changed) == len(moving), f"adapter tensors unchanged: {sorted(set(moving) - set(changed))[:3]}"

    with torch.no_grad():
        logits3 = method(fb, logits=True).logits
        ref3 = method.reference_stats(fb, logits=True).logits
    assert not torch.allclose(logits3, ref3, atol=1e-4), "training did not move the adapted model"
    torch.testing.assert_close(ref3, ref0, rtol=0, atol=1e-6)  # the reference is still the model before training


# ---- (e) loss values against their formulas ---------------------------------------------------------------------------
@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_npo_loss_at_step0_is_2_over_beta_log2(beta, make_method, qa_batch):
    method = make_method(NPO, beta=beta, retain="none")  # the pure loss
    loss = method.training_step(qa_batch, 0)
    assert loss.item() == pytest.approx((2.0 / beta) * math.log(2.0), rel=1e-5)


def test_npo_and_simnpo_defaults_are_open_unlearnings(make_method, qa_batch):
    """NPO: beta 0.1 + 1.0 x retain NLL (configs/trainer/NPO.yaml:6-9); SimNPO: 0.125 x SimNPO(beta 4.5) + 1.0 x
    retain NLL (configs/trainer/SimNPO.yaml:6-10). The old defaults (no retain term; SimNPO weight 1, beta 2.5) fail."""
    npo = make_method(NPO)
    assert (npo.beta, npo.retain, npo.forget_weight, npo.retain_weight) == (0.1, "nll", 1.0, 1.0)
    with torch.no_grad():
        expected = 20.0 * math.log(2.0) + hf_ce(npo, qa_batch["retain"]).item()
        assert npo.training_step(qa_batch, 0).item() == pytest.approx(expected, rel=1e-5)
    sim = make_method(SimNPO)
    assert (sim.beta, sim.gamma, sim.retain, sim.forget_weight, sim.retain_weight) == (4.5, 0.0, "nll", 0.125, 1.0)
    fb = qa_batch["forget"]
    with torch.no_grad():
        seq, length = per_row_nll(sim.lm(input_ids=fb["input_ids"], attention_mask=fb["attention_mask"]).logits,
                                  fb["labels"])
        simnpo = (-(2.0 / 4.5) * F.logsigmoid(4.5 * seq / length)).mean()
        expected = 0.125 * simnpo.item() + hf_ce(sim, qa_batch["retain"]).item()
        assert sim.training_step(qa_batch, 0).item() == pytest.approx(expected, rel=1e-5)


def test_npo_with_retain_nll_adds_retain_ce(make_method, qa_batch):
    method = make_method(NPO, beta=0.1, retain="nll", retain_weight=2.0)
    loss = method.training_step(qa_batch, 0)
    with torch.no_grad():
        expected = 20.0 * math.log(2.0) + 2.0 * hf_ce(method, qa_batch["retain"]).item()
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_npo_loss_away_from_reference_matches_formula(make_method, qa_batch):
    method = make_method(NPO, beta=0.1, retain="none")
    perturb_lora(method)
    fb = qa_batch["forget"]
    loss = method.training_step(qa_batch, 0)
    with torch.no_grad():
        out = method.lm(input_ids=fb["input_ids"], attention_mask=fb["attention_mask"])
        nll, _ = per_row_nll(out.logits, fb["labels"])
        with method.lm.disable_adapter():
            ref_nll, _ = per_row_nll(method.lm(input_ids=fb["input_ids"], attention_mask=fb["attention_mask"]).logits,
                                     fb["labels"])
    expected = (-(2 / 0.1) * F.logsigmoid(0.1 * (nll - ref_nll))).mean()
    assert not torch.allclose(nll, ref_nll)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert loss.item() != pytest.approx(20 * math.log(2), rel=1e-3)


@pytest.mark.parametrize("beta,gamma", [(2.5, 0.0), (1.0, 0.3)])
def test_simnpo_matches_hand_computed_formula(beta, gamma, make_method, qa_batch):
    method = make_method(SimNPO, beta=beta, gamma=gamma, retain="none", forget_weight=1.0)
    fb = qa_batch["forget"]
    loss = method.training_step(qa_batch, 0)
    with torch.no_grad():
        stats = method(fb)
        # by hand from TokenStats' raw pieces: sum of token NLL over answer positions / answer length
        seq = (stats.token_nll * stats.mask).sum(-1)
        length = stats.mask.sum(-1)
        # and independently from the model's logits
        seq2, length2 = per_row_nll(method.lm(input_ids=fb["input_ids"], attention_mask=fb["attention_mask"]).logits,
                                    fb["labels"])
    torch.testing.assert_close(seq, seq2, rtol=1e-5, atol=1e-5)
    assert torch.equal(length, length2) and (length > 0).all()
    expected = (-(2.0 / beta) * F.logsigmoid(beta * (seq2 / length2 - gamma))).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_grad_ascent_loss_is_negative_ce(make_method, qa_batch):
    method = make_method(GradAscent)
    loss = method.training_step(qa_batch, 0)
    with torch.no_grad():
        ce = hf_ce(method, qa_batch["forget"]).item()
    assert ce > 0
    assert loss.item() == pytest.approx(-ce, rel=1e-5)


def test_finetune_and_graddiff_losses(make_method, qa_batch):
    ft = make_method(Finetune)
    gd = make_method(GradDiff, retain_weight=2.0)
    with torch.no_grad():
        ce_f, ce_r = hf_ce(ft, qa_batch["forget"]).item(), hf_ce(ft, qa_batch["retain"]).item()
    assert ft.training_step(qa_batch, 0).item() == pytest.approx(ce_f + ce_r, rel=1e-5)
    assert gd.training_step(qa_batch, 0).item() == pytest.approx(-ce_f + 2.0 * ce_r, rel=1e-5)


def test_grad_ascent_kl_retain_term(make_method, qa_batch):
    method = make_method(GradAscentKL)
    rb = qa_batch["retain"]
    with torch.no_grad():
        ce_f = hf_ce(method, qa_batch["forget"]).item()
    # theta == ref at step 0: KL(p_ref || p_theta) = 0
    assert method.training_step(qa_batch, 0).item() == pytest.approx(-ce_f, rel=1e-5)
    perturb_lora(method)
    with torch.no_grad():
        ce_f = hf_ce(method, qa_batch["forget"]).item()
        logp = torch.log_softmax(method.lm(input_ids=rb["input_ids"], attention_mask=rb["attention_mask"]).logits, -1)
        with method.lm.disable_adapter():
            logq = torch.log_softmax(
                method.lm(input_ids=rb["input_ids"], attention_mask=rb["attention_mask"]).logits, -1)
        mask = rb["labels"][:, 1:] != IGNORE
        kl_tok = (logq.exp() * (logq - logp)).sum(-1)[:, :-1]
        kl = (kl_tok * mask).sum() / mask.sum()
    assert kl.item() > 1e-6
    assert method.training_step(qa_batch, 0).item() == pytest.approx(-ce_f + kl.item(), rel=1e-4)


# ---- (f) fused forward == separate forwards -------------------------------------------------------------------------
@pytest.mark.parametrize("cls,kind", CONTRACT, ids=CONTRACT_IDS)
def test_fused_forward_gives_same_loss(cls, kind, make_method, batch_for):
    qa_batch = batch_for(cls)
    fb, rb = qa_batch["forget"], qa_batch["retain"]
    assert fb["input_ids"].size(1) != rb["input_ids"].size(1), "test needs batches of different widths"
    method = make_method(cls, adapter=kind, **fusion_kwargs(cls))
    perturb_lora(method)
    method.fuse_forward = True
    fused = method.training_step(qa_batch, 0)
    fused.backward()
    g_fused = {n: p.grad.clone() for n, p in method.named_parameters() if p.grad is not None}
    method.zero_grad()
    method.fuse_forward = False
    separate = method.training_step(qa_batch, 0)
    separate.backward()
    torch.testing.assert_close(fused, separate, rtol=1e-5, atol=1e-5)
    assert g_fused
    for n, g in g_fused.items():
        torch.testing.assert_close(g, dict(method.named_parameters())[n].grad, rtol=1e-4, atol=1e-6)


def test_the_fused_batch_carries_every_key_to_the_adapter(make_method, qa_batch):
    """Extra batch keys (a per-token mask, per-row weights, ids) reach ``Adapter.forward_kwargs`` in the fused
    forget + retain batch: per-token tensors right-padded with 0 to the fused width, rows in forget-then-retain
    order."""
    seen = []

    class Recording(LoRA):
        def forward_kwargs(self, batch):
            seen.append(batch)
            return {}

    method = make_method(GradDiff, adapter=Recording(r=4, alpha=8))
    fb, rb = (dict(qa_batch[k]) for k in ("forget", "retain"))
    for b, fill in ((fb, 1), (rb, 2)):
        b["token_mask"] = torch.full_like(b["input_ids"], fill)
        b["weight"] = torch.full((b["input_ids"].size(0),), float(fill))
    method.training_step({"forget": fb, "retain": rb}, 0)
    fused = seen[-1]
    width = max(fb["input_ids"].size(1), rb["input_ids"].size(1))
    n_f = fb["input_ids"].size(0)
    assert fused["token_mask"].shape == (n_f + rb["input_ids"].size(0), width)
    assert (fused["token_mask"][:n_f, :fb["input_ids"].size(1)] == 1).all()
    assert (fused["token_mask"][n_f:, :rb["input_ids"].size(1)] == 2).all()
    assert (fused["token_mask"][:n_f, fb["input_ids"].size(1):] == 0).all()
    assert fused["weight"].tolist() == [1.0] * n_f + [2.0] * rb["input_ids"].size(0)
    assert fused["id"] == list(fb["id"]) + list(rb["id"])


# ---- (g) cached reference == adapter-off reference ---------------------------------------------------------------
def test_cached_reference_equals_adapter_off(make_method, qa_batch):
    method = make_method(NPO, beta=0.1, reference="cached", retain="none")
    at_start = method.training_step(qa_batch, 0)
    assert at_start.item() == pytest.approx(20 * math.log(2), rel=1e-5)
    assert set(method.reference_cache.values) == set(qa_batch["forget"]["id"])  # keyed on the rows' stable ids

    optimizer_steps(method, qa_batch, steps=3)
    with torch.no_grad():
        cached = method.training_step(qa_batch, 0)
        method.reference = "adapter_off"
        off = method.training_step(qa_batch, 0)
    assert cached.item() != pytest.approx(20 * math.log(2), rel=1e-3), "theta never left the reference"
    assert cached.item() == pytest.approx(off.item(), rel=1e-5)

    # cached means computed once: with every row cached, the reference model is not run again
    method.reference = "cached"

    def no_reference(batch):
        raise AssertionError("reference forward ran although every row was cached")

    method.reference_stats = no_reference
    with torch.no_grad():
        again = method.training_step(qa_batch, 0)
    assert again.item() == pytest.approx(cached.item(), rel=1e-6)


# ---- (h) IDK / RandomLabel answer replacement ------------------------------------------------------------------------
def synthetic_forget_batch(method, n: int = 16, reverse: bool = False) -> dict:
    index = torch.arange(n)
    if reverse:
        index = index.flip(0)
    prompts = [f"Question: Where was person {int(i)} born?\nAnswer:" for i in index]
    return {**method.encode(prompts, [" Lisbon"] * n), "index": index, "id": [f"row{int(i)}" for i in index]}


def answers_by_index(batch: dict) -> dict[int, str]:
    return dict(zip(batch["index"].tolist(), batch["answer"]))


@pytest.mark.parametrize("cls", [IDK, RandomLabel], ids=["IDK", "RandomLabel"])
def test_replacement_answers_are_seeded_by_index(cls, make_method):
    a = make_method(cls, seed=3)
    b = make_method(cls, seed=3)
    c = make_method(cls, seed=4)
    batch = synthetic_forget_batch(a)
    first = a.prepare_forget(batch)
    assert answers_by_index(first) == answers_by_index(a.prepare_forget(batch))  # same call, same answers
    assert answers_by_index(first) == answers_by_index(b.prepare_forget(batch))  # same seed, another instance
    # row order does not matter: the choice is a function of (seed, index)
    assert answers_by_index(first) == answers_by_index(a.prepare_forget(synthetic_forget_batch(a, reverse=True)))
    assert answers_by_index(first) != answers_by_index(c.prepare_forget(batch))  # another seed, other choices
    assert all(ans != " Lisbon" for ans in first["answer"])
    assert len(set(first["answer"])) > 1, "16 rows all got the same replacement"

    # the new labels score exactly the replacement answer; the prompt is unchanged
    tok = a.tokenizer
    for i in range(first["input_ids"].size(0)):
        labels = first["labels"][i]
        scored = tok.decode(labels[labels != IGNORE])
        assert scored == first["answer"][i]
        assert first["prompt"][i] == batch["prompt"][i]


def test_random_label_answers_come_from_labels(make_method):
    default = make_method(RandomLabel)
    out = default.prepare_forget(synthetic_forget_batch(default))
    assert {a.strip() for a in out["answer"]} == {"neutral", "unknown"}
    assert all(a.startswith(" ") for a in out["answer"])  # keeps the original answer's leading space

    custom = make_method(RandomLabel, labels=["Oslo", "Cairo", "Lima"])
    out = custom.prepare_forget(synthetic_forget_batch(custom, n=24))
    assert {a.strip() for a in out["answer"]} <= {"Oslo", "Cairo", "Lima"}
    assert len({a.strip() for a in out["answer"]}) >= 2


def test_idk_uses_refusals(make_method, tmp_path):
    builtin = make_method(IDK)
    out = builtin.prepare_forget(synthetic_forget_batch(builtin))
    assert {a.strip() for a in out["answer"]} <= set(REFUSALS)

    path = tmp_path / "refusals.txt"
    path.write_text("I don't know.\n\n{\"text\": \"No idea.\"}\n", encoding="utf-8")
    custom = make_method(IDK, refusals=str(path))
    out = custom.prepare_forget(synthetic_forget_batch(custom, n=24))
    assert {a.strip() for a in out["answer"]} == {"I don't know.", "No idea."}


def test_idk_refusals_errors(tmp_path):
    with pytest.raises(MethodError, match="does not exist"):
        IDK(model="unused", adapter=LoRA(), refusals=str(tmp_path / "missing.txt"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"answer": "x"}\n', encoding="utf-8")
    with pytest.raises(MethodError, match=r"line 1 .*'text'"):
        IDK(model="unused", adapter=LoRA(), refusals=str(bad))


def test_prepare_forget_keeps_weights_and_training_step_uses_replacements(make_method, qa_batch):
    method = make_method(RandomLabel)
    fb = dict(qa_batch["forget"], weight=torch.tensor([1.0, 3.0]))
    new = method.prepare_forget(fb)
    assert torch.equal(new["weight"], fb["weight"])
    # L = mean_i(w_i * CE_i) over the relabelled rows
    with torch.no_grad():
        nll, n = per_row_nll(method.lm(input_ids=new["input_ids"], attention_mask=new["attention_mask"]).logits,
                             new["labels"])
        expected = (fb["weight"] * nll / n).mean()
        loss = method.training_step({"forget": fb, "retain": qa_batch["retain"]}, 0)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


# ---- (i) learning and unlearning actually move the forget NLL --------------------------------------------------------
def evaluate(method, batch) -> dict[str, float]:
    evaluator = AnswerEvaluator()
    evaluator.update(method, batch)
    return evaluator.compute()


def test_finetune_learns_then_grad_ascent_unlearns(make_method, tiny_model_dir, qa_files, tmp_path):
    dm = make_qa_datamodule(tiny_model_dir, qa_files)
    forget = collate(dm.datasets["forget"].rows, dm.tokenizer.pad_token_id, "forget")

    learner = make_method(Finetune, adapter=LoRA(r=8, alpha=16), retain="none")
    base = evaluate(learner, forget)
    optimizer_steps(learner, {"forget": forget}, steps=30, lr=1e-2)
    learned = evaluate(learner, forget)
    assert learned["nll"] < base["nll"] - 0.3
    assert learned["acc"] >= 0.5 > base["acc"]

    learner.export_adapter(tmp_path / "learned")
    unlearner = make_method(GradAscent, init_adapter=str(tmp_path / "learned"))
    # the learned adapter is merged into the base: the unlearning run starts from the learned model
    start = evaluate(unlearner, forget)
    assert start["nll"] == pytest.approx(learned["nll"], rel=1e-4)
    assert start["acc"] == pytest.approx(learned["acc"])
    optimizer_steps(unlearner, {"forget": forget}, steps=5, lr=1e-2)
    unlearned = evaluate(unlearner, forget)
    assert unlearned["nll"] > learned["nll"] + 0.3
    assert unlearned["acc"] < 0.5 * learned["acc"]

    # a list of adapters is merged in order: the learned, then the unlearning run's = the unlearned model
    unlearner.export_adapter(tmp_path / "unlearned")
    attacker = make_method(Finetune, init_adapter=[str(tmp_path / "learned"), str(tmp_path / "unlearned")])
    again = evaluate(attacker, forget)
    assert again["nll"] == pytest.approx(unlearned["nll"], rel=1e-4) and again["acc"] == unlearned["acc"]


# ---- configuration errors and other contract points ------------------------------------------------------------------
def test_methods_that_need_a_reference_refuse_no_adapter():
    with pytest.raises(MethodError, match="adapter"):
        NPO(model="unused", adapter=None)
    with pytest.raises(MethodError, match="retain kl"):
        GradAscentKL(model="unused", adapter=None)
    with pytest.raises(MethodError, match="quantize"):
        Finetune(model="unused", adapter=None, quantize="nf4")
    # configuring must not load anything: a bogus model name is fine until configure_model
    assert NPO(model="does/not/matter", adapter=LoRA()).lm is None


def test_empty_training_batch_is_an_error(make_method):
    method = make_method(GradAscent)
    with pytest.raises(MethodError, match="neither forget nor retain"):
        method.training_step({}, 0)


def test_full_model_training_without_adapter(make_method, qa_batch):
    method = make_method(Finetune, adapter=None)
    params = dict(method.named_parameters())
    assert params and all(p.requires_grad for p in params.values())
    assert not any("lora_" in n for n in params)
    before = {n: p.detach().clone() for n, p in params.items()}
    optimizer_steps(method, qa_batch, steps=1)
    assert any(not torch.equal(before[n], p) for n, p in method.named_parameters())
    with pytest.raises(MethodError, match="adapter"):
        method.reference_stats(qa_batch["forget"])


def test_configure_model_is_idempotent(make_method):
    method = make_method(NPO)
    lm = method.lm
    method.configure_model()
    assert method.lm is lm


def test_adapter_dropout_is_active_in_training_and_reference_is_deterministic(make_method, qa_batch):
    """HF ``from_pretrained`` returns the base in eval mode and Lightning keeps module modes as it finds them; the
    LoRA layers PEFT adds are in train mode, so LoRA dropout must act on the adapted forward while the reference
    (adapter disabled) stays deterministic."""
    method = make_method(NPO, adapter=LoRA(r=4, alpha=8, dropout=0.5))
    assert method.lm.training
    dropouts = [m for n, m in method.lm.named_modules() if n.endswith("lora_dropout.default")]
    assert dropouts and all(m.training for m in dropouts)
    perturb_lora(method)
    fb = qa_batch["forget"]
    with torch.no_grad():
        torch.manual_seed(0)
        a = method(fb, logits=True).logits
        b = method(fb, logits=True).logits
        r1 = method.reference_stats(fb, logits=True).logits
        r2 = method.reference_stats(fb, logits=True).logits
    assert not torch.allclose(a, b), "LoRA dropout had no effect in training"
    torch.testing.assert_close(r1, r2, rtol=0, atol=0)
    assert method.lm.training, "reference_stats left the model in eval mode"


def test_the_reference_model_runs_without_the_base_dropout(make_method, qa_batch, tmp_path):
    """A base with dropout (OPT has 0.1) trains with it on, but "the model before unlearning" is deterministic: the
    reference forward runs with dropout off, so cached and recomputed references agree."""
    from lit_unlearn.testing import make_tiny_model

    model_dir = str(make_tiny_model(tmp_path / "dropout", attention_dropout=0.5))
    method = make_method(NPO, model_dir=model_dir, reference="cached")
    fb = qa_batch["forget"]
    with torch.no_grad():
        torch.manual_seed(0)
        train_a, train_b = method(fb).seq_nll, method(fb).seq_nll
        ref_a, ref_b = method.reference_stats(fb).seq_nll, method.reference_stats(fb).seq_nll
        method.lm.eval()
        with method.lm.disable_adapter():
            plain = method(fb).seq_nll
        method.lm.train()
    assert not torch.allclose(train_a, train_b), "the base dropout had no effect in training"
    torch.testing.assert_close(ref_a, ref_b, rtol=0, atol=0)
    torch.testing.assert_close(ref_a, plain, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(method.reference_seq_nll(fb), plain, rtol=1e-6, atol=1e-6)  # the cached value too
    assert method.lm.training


def test_lr_schedules(make_method):
    method = make_method(Finetune, lr=1.0, warmup_ratio=0.2, lr_schedule="linear")
    method._trainer = SimpleNamespace(estimated_stepping_batches=10)
    cfg = method.configure_optimizers()
    opt, sched = cfg["optimizer"], cfg["lr_scheduler"]["scheduler"]
    assert cfg["lr_scheduler"]["interval"] == "step"
    assert all(p.requires_grad and "lora_" in n for n, p in method.named_parameters() if p.requires_grad)
    assert sum(p.numel() for g in opt.param_groups for p in g["params"]) == sum(
        p.numel() for n, p in method.named_parameters() if "lora_" in n)
    lrs = []
    for _ in range(11):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    # warm-up over 2 steps: (step+1)/(warm+1), then linear decay to 0 at step 10
    assert lrs[:3] == pytest.approx([1 / 3, 2 / 3, 1.0])
    assert lrs[6] == pytest.approx(0.5)
    assert lrs[10] == pytest.approx(0.0)

    cos = make_method(Finetune, lr=1.0, lr_schedule="cosine")
    cos._trainer = SimpleNamespace(estimated_stepping_batches=10)
    cfg = cos.configure_optimizers()
    opt, sched = cfg["optimizer"], cfg["lr_scheduler"]["scheduler"]
    lrs = []
    for _ in range(6):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(1.0) and lrs[5] == pytest.approx(0.5)


def test_the_reference_cache_and_run_id_travel_in_the_checkpoint(make_method, qa_batch):
    method = make_method(NPO, reference="cached")
    method.run_id = "run-1"
    method.training_step(qa_batch, 0)
    assert len(method.reference_cache) == qa_batch["forget"]["input_ids"].size(0)
    ckpt = {"state_dict": method.state_dict()}
    method.on_save_checkpoint(ckpt)
    resumed = make_method(NPO, reference="cached")
    resumed.on_load_checkpoint(ckpt)
    assert resumed.run_id == "run-1" and resumed.reference_cache.values == method.reference_cache.values

    def no_reference(batch, logits=False):
        raise AssertionError("a resumed run recomputed a cached reference value")

    resumed.reference_stats = no_reference
    resumed.load_state_dict(ckpt["state_dict"], strict=False)
    torch.testing.assert_close(resumed.training_step(qa_batch, 0), method.training_step(qa_batch, 0))


def test_checkpoint_keeps_only_adapter_tensors(make_method):
    method = make_method(GradDiff)
    ckpt = {"state_dict": method.state_dict()}
    assert any("lora_" not in k for k in ckpt["state_dict"])
    method.on_save_checkpoint(ckpt)
    assert ckpt["state_dict"] and all("lora_" in k for k in ckpt["state_dict"])
    assert ckpt["lit_unlearn"]["method"] == "GradDiff"


@pytest.mark.parametrize("kind", ["prefix", "soft_prompt"])
def test_a_virtual_adapter_checkpoint_round_trips(kind, make_method, qa_batch):
    """A Lightning checkpoint of a prefix / soft-prompt run holds exactly the adapter's tensors and restores the
    same model into a fresh one; a checkpoint of another adapter is refused, naming what it lacks."""
    method = make_method(GradDiff, adapter=kind)
    optimizer_steps(method, qa_batch, steps=2)
    ckpt = {"state_dict": method.state_dict()}
    method.on_save_checkpoint(ckpt)
    assert set(ckpt["state_dict"]) == set(method.trainable_names())
    assert all("virtual_tokens.providers.default." in k for k in ckpt["state_dict"])
    torch.manual_seed(7)
    fresh = make_method(GradDiff, adapter=kind)
    fb = qa_batch["forget"]
    with torch.no_grad():
        assert not torch.allclose(fresh(fb, logits=True).logits, method(fb, logits=True).logits, atol=1e-4)
    fresh.on_load_checkpoint(ckpt)
    fresh.load_state_dict(ckpt["state_dict"], strict=False)
    with torch.no_grad():
        torch.testing.assert_close(fresh(fb, logits=True).logits, method(fb, logits=True).logits)
    with pytest.raises(MethodError, match="the checkpoint lacks"):
        make_method(GradDiff).on_load_checkpoint(ckpt)


def test_encode_matches_data_module_tokenization(make_method, tokenizer):
    method = make_method(Finetune)
    batch = method.encode(["Question: Where?\nAnswer:"], [" Lisbon"])
    enc = encode(tokenizer, "Question: Where?\nAnswer:", " Lisbon")
    assert batch["input_ids"][0].tolist() == enc["input_ids"]
    assert batch["labels"][0].tolist() == enc["labels"]


def test_datamodule_batch_roundtrip_through_method(make_method, tiny_model_dir, qa_files):
    """``ratio`` mixing batches go through the same training step."""
    dm = make_qa_datamodule(tiny_model_dir, qa_files, mixing="ratio", batch_size=4)
    batch = first_train_batch(dm)
    assert batch["forget"]["input_ids"].size(0) == 1 and batch["retain"]["input_ids"].size(0) == 3
    loss = make_method(GradDiff).training_step(batch, 0)
    assert torch.isfinite(loss)
