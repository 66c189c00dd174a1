"""Classification unlearning (SPUL / PI-Prefix): the Prefix and SoftPrompt adapters, negation of a LoRA, the
pseudo-inverse transformation, the SST-2 / Yelp data rules and the whole pipeline of configs at smoke size."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import REPO_ROOT, first_train_batch, make_qa_datamodule, needs_mirror, perturb_lora, write_sst2_csv
from lit_unlearn.adapters import AdapterError, LoRA, Prefix, SoftPrompt, attach_saved_adapter, saved_adapter_type
from lit_unlearn.adapters.virtual import virtual_tokens
from lit_unlearn.core.errors import DataError
from lit_unlearn.data import SST2DataModule
from lit_unlearn.methods import SPUL, NegationLoRA, PIPrefix
from lit_unlearn.models import load_causal_lm

pytestmark = pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")
TEXT = "### Text: dull and far too long"
QUERY = "\n\n### Sentiment: negative"


def logits(model, ids, mask=None):
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask).logits


@pytest.fixture
def ids(tokenizer):
    return {k: tokenizer(v, return_tensors="pt")["input_ids"] for k, v in (("context", TEXT), ("query", QUERY))}


# ---- Prefix --------------------------------------------------------------------------------------------------------
def test_a_prefix_of_the_models_own_keys_and_values_equals_prepending_their_text(tiny_model_dir, ids):
    """The prefix is the cache the model would have after reading a text: with that text's keys and values as the
    prefix, the query's logits equal those of the model reading text + query (mask, positions and cache layout).
    (A zero prefix is not the identity: each of its positions has weight exp(0) in the softmax; the identity
    check is the disabled adapter, below.)"""
    base = load_causal_lm(tiny_model_dir)
    ctx, query = ids["context"], ids["query"]
    with torch.no_grad():
        cache = base(input_ids=ctx, use_cache=True).cache
        whole = base(input_ids=torch.cat([ctx, query], 1)).logits[:, ctx.size(1):]
    prefix = Prefix(length=ctx.size(1))
    model = prefix.apply(base)
    provider = prefix.provider(model)
    with torch.no_grad():
        for layer in range(len(cache.layers)):
            k, v = cache.layers[layer].keys[0], cache.layers[layer].values[0]  # (kv_heads, P, head_dim)
            provider.keys[layer].copy_(k.transpose(0, 1).reshape(ctx.size(1), -1))
            provider.values[layer].copy_(v.transpose(0, 1).reshape(ctx.size(1), -1))
    got = logits(model, query, torch.ones_like(query))
    assert got.shape == whole.shape
    torch.testing.assert_close(got, whole, rtol=1e-4, atol=1e-5)
    with prefix.disabled(model):  # disabled: exactly the base
        torch.testing.assert_close(logits(model, query), logits(load_causal_lm(tiny_model_dir), query))


def test_a_soft_prompt_of_a_texts_embeddings_equals_prepending_the_text_and_outputs_stay_aligned(tiny_model_dir, ids):
    base = load_causal_lm(tiny_model_dir)
    ctx, query = ids["context"], ids["query"]
    with torch.no_grad():
        whole = base(input_ids=torch.cat([ctx, query], 1)).logits[:, ctx.size(1):]
        embeds = base.get_input_embeddings()(ctx)[0]
    prompt = SoftPrompt(length=ctx.size(1), encoder_hidden=8)
    model = prompt.apply(base)
    provider = prompt.provider(model)
    provider.prompt = lambda: embeds  # bypass the encoder: the virtual tokens are the text's embeddings
    got = logits(model, query)
    assert got.shape[1] == query.size(1)  # virtual positions are cut from the output
    torch.testing.assert_close(got, whole, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", ["prefix", "soft_prompt"])
def test_greedy_generation_through_virtual_tokens_equals_prepending_the_text(kind, tiny_model_dir, tokenizer, ids):
    """Batched, left-padded generation (TOFU's evaluator) with the cache the adapter fills: the same tokens as
    generating after the text itself."""
    from lit_unlearn.models.generate import greedy_generate

    base = load_causal_lm(tiny_model_dir)
    ctx = ids["context"]
    queries = ["\n\n### Sentiment:", "\n\n### Question: What is"]
    want = greedy_generate(base, tokenizer, [tokenizer.decode(ctx[0]) + q for q in queries], 8, 2)
    with torch.no_grad():
        cache = base(input_ids=ctx, use_cache=True).cache
        embeds = base.get_input_embeddings()(ctx)[0]
    adapter = Prefix(length=ctx.size(1)) if kind == "prefix" else SoftPrompt(length=ctx.size(1), encoder_hidden=8)
    model = adapter.apply(base)
    provider = adapter.provider(model)
    if kind == "prefix":
        with torch.no_grad():
            for layer in range(len(cache.layers)):
                provider.keys[layer].copy_(cache.layers[layer].keys[0].transpose(0, 1).reshape(ctx.size(1), -1))
                provider.values[layer].copy_(cache.layers[layer].values[0].transpose(0, 1).reshape(ctx.size(1), -1))
    else:
        provider.prompt = lambda: embeds
    assert greedy_generate(model, tokenizer, queries, 8, 2) == want


def test_right_padding_with_a_prefix_leaves_the_real_rows_unchanged(tiny_model_dir, tokenizer):
    model = Prefix(length=3).apply(load_causal_lm(tiny_model_dir))
    enc = tokenizer(["dull", "a gripping, funny film"], padding=True, return_tensors="pt")
    alone = logits(model, enc["input_ids"][:1, :1])
    padded = logits(model, enc["input_ids"], enc["attention_mask"])
    torch.testing.assert_close(padded[:1, :1], alone, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", ["prefix", "soft_prompt"])
def test_virtual_adapter_checkpoint_round_trips_and_stacks_frozen(kind, tiny_model_dir, ids, tmp_path):
    make = {"prefix": lambda: Prefix(length=4), "soft_prompt": lambda: SoftPrompt(length=4, encoder_hidden=8)}[kind]
    adapter = make()
    torch.manual_seed(3)
    model = adapter.apply(load_causal_lm(tiny_model_dir))
    want = logits(model, ids["query"])
    adapter.save(model, tmp_path / "a")
    assert saved_adapter_type(tmp_path / "a") == type(adapter).__name__

    fresh_adapter = make()
    torch.manual_seed(4)
    fresh = fresh_adapter.apply(load_causal_lm(tiny_model_dir))
    assert not torch.allclose(logits(fresh, ids["query"]), want, atol=1e-4)
    fresh_adapter.load(fresh, tmp_path / "a")
    torch.testing.assert_close(logits(fresh, ids["query"]), want)

    # init_adapter: stacked frozen, then a LoRA on top; disabling the LoRA keeps the stacked adapter
    stacked = attach_saved_adapter(load_causal_lm(tiny_model_dir), tmp_path / "a")
    assert not any(p.requires_grad for p in stacked.parameters())
    torch.testing.assert_close(logits(stacked, ids["query"]), want)
    lora = LoRA(r=2)
    on_top = lora.apply(stacked)
    trainable = [n for n, p in on_top.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    with lora.disabled(on_top):
        torch.testing.assert_close(logits(on_top, ids["query"]), want)


def test_virtual_adapter_bad_files(tiny_model_dir, tiny_model_dir_64, tmp_path):
    prefix = Prefix(length=2)
    model = prefix.apply(load_causal_lm(tiny_model_dir))
    prefix.save(model, tmp_path / "p")
    wide = Prefix(length=2)
    wide_model = wide.apply(load_causal_lm(tiny_model_dir_64))
    with pytest.raises(AdapterError, match=rf"{tmp_path / 'p'} was saved for a model of another width: kv_width"):
        wide.load(wide_model, tmp_path / "p")
    with pytest.raises(AdapterError, match="another width"):
        attach_saved_adapter(load_causal_lm(tiny_model_dir_64), tmp_path / "p")
    with pytest.raises(AdapterError, match="saved with other hyper-parameters"):
        longer = Prefix(length=5)
        longer.load(longer.apply(load_causal_lm(tiny_model_dir)), tmp_path / "p")
    with pytest.raises(AdapterError, match="holds a Prefix adapter, not a SoftPrompt"):
        sp = SoftPrompt(length=2, encoder_hidden=4)
        sp.load(sp.apply(load_causal_lm(tiny_model_dir)), tmp_path / "p")
    with pytest.raises(AdapterError, match="cannot be folded into the weights"):
        prefix.merge(model)


@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None, reason="bitsandbytes is not installed")
@pytest.mark.parametrize("kind", ["prefix", "soft_prompt"])
def test_virtual_adapters_train_on_an_nf4_base(kind, make_method, tiny_model_dir_64, qa_files):
    """Both virtual-token adapters on a 4-bit base (bitsandbytes' CPU path needs hidden size 64): gradients reach
    the adapter only, and a step moves it."""
    qa_batch_64 = first_train_batch(make_qa_datamodule(tiny_model_dir_64, qa_files, batch_size=2))
    method = make_method(SPUL if kind == "soft_prompt" else PIPrefix, adapter=kind, model_dir=tiny_model_dir_64,
                         quantize="nf4", **({"variant": "relabel"} if kind == "prefix" else {}))
    assert method.lm.is_loaded_in_4bit
    names = set(method.trainable_names())
    assert names and all("virtual_tokens" in n for n in names)
    before = {n: p.detach().clone() for n, p in method.named_parameters() if n in names}
    opt = torch.optim.AdamW([p for _, p in method.trainable()], lr=1e-2)
    loss = method.training_step(qa_batch_64, 0)
    assert torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is None for n, p in method.named_parameters() if n not in names)
    opt.step()
    assert all(not torch.equal(before[n], p) for n, p in method.named_parameters() if n in names)


@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None, reason="bitsandbytes is not installed")
def test_a_qlora_classifier_is_merged_into_the_unquantized_base(make_method, tiny_model_dir_64, tmp_path):
    """Stage 1's target: the LoRA trained on a 4-bit base is merged into the base reloaded in float, and saved as
    a plain transformers directory: its weights are the float base's plus scale * B A, nothing quantized."""
    from lit_unlearn.methods import Finetune

    method = make_method(Finetune, model_dir=tiny_model_dir_64, quantize="nf4", dtype="float32")
    with torch.no_grad():
        for n, p in method.lm.named_parameters():
            if "lora_B" in n:
                p.fill_(0.01)
    q = method.lm.base_model.model.model.layers[0].self_attn.q_proj
    delta = (q.lora_B["default"].weight @ q.lora_A["default"].weight * q.scaling["default"]).detach().clone()
    method.export_merged(tmp_path / "merged")
    merged = load_causal_lm(str(tmp_path / "merged"))
    assert not getattr(merged, "is_loaded_in_4bit", False)
    base = load_causal_lm(tiny_model_dir_64)
    got = merged.model.layers[0].self_attn.q_proj.weight - base.model.layers[0].self_attn.q_proj.weight
    torch.testing.assert_close(got.detach(), delta, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(merged.model.embed_tokens.weight, base.model.embed_tokens.weight)  # not adapted


# ---- the pseudo-inverse ------------------------------------------------------------------------------------------------
def test_pinv_is_applied_once_refused_twice_and_recorded(tiny_model_dir, tmp_path):
    prefix = Prefix(length=3)
    model = prefix.apply(load_causal_lm(tiny_model_dir))
    provider = prefix.provider(model)
    trained = provider.keys.detach().clone()
    prefix.transform_pinv(model)
    for layer in range(trained.size(0)):  # pinv(K)^T: for full row rank, (K K^T)^-1 K, the dual basis of K's rows
        k = trained[layer].double()
        dual = torch.linalg.solve(k @ k.T, k)
        torch.testing.assert_close(provider.keys[layer].double(), dual, rtol=1e-4, atol=1e-6)
        # dual basis: K_dual K^T = I
        torch.testing.assert_close(provider.keys[layer].double() @ k.T, torch.eye(3, dtype=torch.float64),
                                   rtol=1e-4, atol=1e-5)
    with pytest.raises(AdapterError, match="already transformed"):
        prefix.transform_pinv(model)
    prefix.save(model, tmp_path / "t")
    assert json.loads((tmp_path / "t" / "adapter_config.json").read_text())["transform"] == ["pinv"]
    again = Prefix(length=3)
    reloaded = again.apply(load_causal_lm(tiny_model_dir))
    again.load(reloaded, tmp_path / "t")
    with pytest.raises(AdapterError, match="already transformed"):
        again.transform_pinv(reloaded)
    # the command-line transformation of a saved prefix refuses a transformed one too
    done = subprocess.run([sys.executable, "-m", "lit_unlearn.adapters.transform", "pinv", str(tmp_path / "t"),
                           str(tmp_path / "t2")], capture_output=True, text=True, cwd=REPO_ROOT)
    assert done.returncode == 2 and "already transformed" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and str(tmp_path / "t") in done.stderr


def test_pinv_command_transforms_a_saved_prefix(tiny_model_dir, tmp_path):
    prefix = Prefix(length=2)
    model = prefix.apply(load_causal_lm(tiny_model_dir))
    prefix.save(model, tmp_path / "a")
    done = subprocess.run([sys.executable, "-m", "lit_unlearn.adapters.transform", "pinv", str(tmp_path / "a"),
                           str(tmp_path / "b")], capture_output=True, text=True, cwd=REPO_ROOT)
    assert done.returncode == 0, done.stderr
    prefix.transform_pinv(model)
    again = Prefix(length=2)
    other = again.apply(load_causal_lm(tiny_model_dir))
    again.load(other, tmp_path / "b")
    torch.testing.assert_close(again.provider(other).values, prefix.provider(model).values)


def test_prefix_init_scale_and_kv_dropout(tiny_model_dir, tmp_path):
    """PI-Prefix's prefix: dropout 0.1 on its keys and values in training only (PreethiGuru/LLM-Unlearning
    utils_pi.py:107,121); ``init_std: null`` starts it at the model's own initializer_range instead of N(0, 1)."""
    model = load_causal_lm(tiny_model_dir)
    small = Prefix(length=4, init_std=None, dropout=0.5)
    model = small.apply(model)
    provider = small.provider(model)
    std = float(torch.cat([provider.keys.flatten(), provider.values.flatten()]).detach().std())
    assert std == pytest.approx(model.config.initializer_range, rel=0.2)
    assert float(Prefix(length=4).build(model).keys.detach().std()) == pytest.approx(1.0, rel=0.2)  # the original's randn
    provider.train()
    a, b = provider.layer_kv(0, 1, torch.float32)[0], provider.layer_kv(0, 1, torch.float32)[0]
    assert not torch.equal(a, b) and (a == 0).any()  # dropout draws differ in training
    provider.eval()
    torch.testing.assert_close(provider.layer_kv(0, 1, torch.float32)[0], provider.layer_kv(0, 1, torch.float32)[0])
    small.save(model, tmp_path / "p")
    stacked = attach_saved_adapter(load_causal_lm(tiny_model_dir), tmp_path / "p")
    frozen = [m for m in stacked.modules() if isinstance(m, torch.nn.Dropout) and m.p]
    assert frozen == []  # a stacked (frozen) prefix computes the same in training and evaluation
    with pytest.raises(AdapterError, match="init_std must be > 0"):
        Prefix(init_std=0.0)
    with pytest.raises(AdapterError, match="dropout must be in"):
        Prefix(dropout=1.0)


def test_pi_prefix_trained_reading_is_not_transformed(make_method):
    """``reading: trained`` scores the prefix as trained: what the original's inference scores, since it inverts the
    saved, already inverted prefix again (inference_pi_prefix.py:119)."""
    pinv = make_method(PIPrefix, adapter="prefix")
    trained = make_method(PIPrefix, adapter="prefix", reading="trained")
    for method in (pinv, trained):
        method.on_train_end()
    assert pinv.adapter.provider(pinv.lm).transform == ["pinv"]
    assert trained.adapter.provider(trained.lm).transform == []
    from lit_unlearn.methods import MethodError

    with pytest.raises(MethodError, match="--model.reading must be pinv or trained"):
        make_method(PIPrefix, adapter="prefix", reading="both")


# ---- negation ----------------------------------------------------------------------------------------------------------
def test_negating_a_lora_subtracts_its_delta(tiny_model_dir, make_method, tmp_path):
    method = make_method(NegationLoRA)
    perturb_lora(method, scale=0.3, seed=0)
    base = {n: p.detach().clone() for n, p in load_causal_lm(tiny_model_dir).named_parameters()}
    # the positive merge: W + delta
    LoRA(r=4, alpha=8).save(method.lm, tmp_path / "pos")
    plus = dict(attach_saved_adapter(load_causal_lm(tiny_model_dir), tmp_path / "pos").named_parameters())
    method.export_merged(tmp_path / "neg")  # the negated merge
    minus = dict(load_causal_lm(str(tmp_path / "neg")).named_parameters())
    changed = 0
    for n, w in base.items():
        delta = plus[n].detach() - w
        torch.testing.assert_close(minus[n].detach(), w - delta, rtol=1e-5, atol=1e-6)
        changed += bool(delta.abs().max() > 1e-4)
    assert changed == 2 * 7  # every adapted linear of both layers


def test_negation_lora_evaluates_the_negated_model_and_checkpoints_the_trained_one(make_method, qa_batch):
    method = make_method(NegationLoRA)
    with torch.no_grad():
        for n, p in method.lm.named_parameters():
            if "lora_B" in n:
                p.fill_(0.05)
    fb = qa_batch["forget"]
    with torch.no_grad():
        positive = method(fb, logits=True).logits.clone()
        with method.adapter.negated(method.lm):
            negated = method(fb, logits=True).logits.clone()
    method._negate(True)
    with torch.no_grad():
        torch.testing.assert_close(method(fb, logits=True).logits, negated)
    method._negate(False)
    with torch.no_grad():
        torch.testing.assert_close(method(fb, logits=True).logits, positive, rtol=0, atol=0)
    assert not torch.allclose(positive, negated, atol=1e-4)


# ---- SPUL and PI-Prefix losses -------------------------------------------------------------------------------------------
def test_spul_loss_is_relabelled_ce_plus_alpha_ce_plus_beta_kl(make_method, qa_batch):
    import torch.nn.functional as F

    method = make_method(SPUL, adapter="soft_prompt", alpha=0.3, beta=0.7)
    fb = method.prepare_forget(qa_batch["forget"])
    assert all(a.strip() in ("neutral", "unknown") for a in fb["answer"])
    rb = qa_batch["retain"]
    with torch.no_grad():
        f = method(fb).ce
        r = method(rb, logits=True)
        ref = method.reference_stats(rb, logits=True)
        logp, logq = F.log_softmax(r.logits.float(), -1), F.log_softmax(ref.logits.float(), -1)
        kl = ((logq.exp() * (logq - logp)).sum(-1) * r.mask).sum() / r.mask.sum()
        loss = method.training_step(qa_batch, 0)
    assert kl > 1e-6  # the prompt moves the model: the KL term is live
    assert loss.item() == pytest.approx(f.item() + 0.3 * r.ce.item() + 0.7 * kl.item(), rel=1e-4)


def test_cached_kl_reference_equals_recomputed(make_method, qa_batch):
    a = make_method(SPUL, adapter="soft_prompt")
    b = make_method(SPUL, adapter="soft_prompt", reference="cached")
    with torch.no_grad():
        assert a.training_step(qa_batch, 0).item() == pytest.approx(b.training_step(qa_batch, 0).item(), rel=1e-5)
        assert set(b.reference_cache.tensors) == set(qa_batch["retain"]["id"])
        assert b.training_step(qa_batch, 0).item() == pytest.approx(a.training_step(qa_batch, 0).item(), rel=1e-5)


def test_pi_prefix_variants_and_adapter_checks(make_method, qa_batch):
    from lit_unlearn.methods import MethodError

    forget_only = make_method(PIPrefix, adapter="prefix")
    assert forget_only.retain == "none"
    assert forget_only.prepare_forget(qa_batch["forget"]) is qa_batch["forget"]  # its true labels
    relabel = make_method(PIPrefix, adapter="prefix", variant="relabel")
    assert relabel.retain == "nll"
    assert all(a.strip() in ("neutral", "unknown") for a in relabel.prepare_forget(qa_batch["forget"])["answer"])
    with pytest.raises(MethodError, match="PIPrefix works with --model.adapter Prefix"):
        make_method(PIPrefix, adapter="lora")
    with pytest.raises(MethodError, match="NegationLoRA works with --model.adapter LoRA"):
        make_method(NegationLoRA, adapter="prefix")
    with pytest.raises(MethodError, match="forget_only uses no retain data"):
        make_method(PIPrefix, adapter="prefix", retain="nll")


# ---- data ------------------------------------------------------------------------------------------------------------
def test_label_only_loss_mask(tiny_model_dir, sst2_files, tokenizer):
    dm = SST2DataModule(forget=sst2_files["forget"], tokenizer=tiny_model_dir)
    dm.setup("fit")
    for row in dm.datasets["forget"].rows:
        scored = [t for t, lab in zip(row["input_ids"], row["labels"]) if lab != -100]
        assert tokenizer.decode(scored) == " " + row["label"]  # the label word, nothing of the prompt
        assert row["labels"][:len(row["labels"]) - len(scored)] == [-100] * (len(row["labels"]) - len(scored))


@pytest.mark.parametrize("rows,match", [
    ([["a", "1"]], "has no field 'label_text'"),
    ([["a", "1", "great"]], "label 'great', which is not one of --data.labels"),
    ([["a", "0", "positive"]], "label=0 but label 'positive'"),
])
def test_bad_sst2_csv_rows(rows, match, tiny_model_dir, tmp_path):
    header = ["text", "label"] if len(rows[0]) == 2 else ["text", "label", "label_text"]
    path = tmp_path / "bad.csv"
    path.write_text(",".join(header) + "\n" + "\n".join(",".join(r) for r in rows) + "\n")
    dm = SST2DataModule(forget=str(path), tokenizer=tiny_model_dir)
    with pytest.raises(DataError, match=match) as err:
        dm.setup("fit")
    assert str(path) in str(err.value)
    no_text = tmp_path / "no_text.csv"
    no_text.write_text("sentence,label,label_text\nfine,1,positive\n")
    with pytest.raises(DataError, match="has no field 'text'.*--data.text_field"):
        SST2DataModule(forget=str(no_text), tokenizer=tiny_model_dir).setup("fit")


def test_forget_size_is_a_seeded_fraction(tiny_model_dir, tmp_path):
    rows = [(f"text {i}", i % 2, ["negative", "positive"][i % 2]) for i in range(20)]
    path = write_sst2_csv(tmp_path / "f.csv", rows)
    kept = []
    for seed in (0, 0, 1):
        dm = SST2DataModule(forget=path, tokenizer=tiny_model_dir, forget_size=0.25, seed=seed)
        dm.setup("fit")
        kept.append([r["index"] for r in dm.datasets["forget"].rows])
    assert len(kept[0]) == 5 and kept[0] == kept[1] and kept[0] != kept[2]
    with pytest.raises(DataError, match="forget_size"):
        SST2DataModule(forget=path, tokenizer=tiny_model_dir, forget_size=0)


@needs_mirror
def test_yelp_hub_ids_read_the_mirror_and_the_retain_proxy(tiny_model_dir):
    from lit_unlearn.data.sources import read_rows

    forget = read_rows("karuna-bhaila/Unlearning_Yelp_Polarity@train_forget", "forget")
    assert len(forget) == 5081 and {"text", "label", "label_text"} <= set(forget[0])
    retain = read_rows("karuna-bhaila/Unlearning_Yelp_Polarity@train_retain", "retain")
    assert len(retain) == 25278 + 38205
    assert {r["label_text"] for r in retain} == {"negative", "positive"}
    assert retain[0]["label"] == 0 and retain[-1]["label"] == 1 and "sentiment.dev.1" in retain[-1]["_where"]


# ---- the pipeline, every config at smoke size -----------------------------------------------------------------------------
@pytest.mark.parametrize("dataset", ["sst2", "yelp"])
def test_the_classification_pipeline_runs_every_config(dataset, tiny_model_dir, tmp_path, monkeypatch):
    from lit_unlearn.classification import COLUMNS, METHODS, run_pipeline
    from lit_unlearn.pipelines.runner import format_markdown

    monkeypatch.chdir(REPO_ROOT)
    words = ["negative", "positive"]
    files = {}
    for split in ("train_forget", "train_retain", "test_forget", "test_retain"):
        rows = [(f"{'a gripping, funny' if i % 2 else 'dull, far too long'} film {i}", i % 2, words[i % 2])
                for i in range(8)]
        files[split] = write_sst2_csv(tmp_path / f"{split}.csv", rows)
    extra = ["--data.init_args.forget", files["train_forget"], "--data.init_args.retain", files["train_retain"],
             "--data.init_args.eval_splits", json.dumps({"test_forget": files["test_forget"],
                                                         "test_retain": files["test_retain"]}),
             "--data.init_args.batch_size", "2", "--data.init_args.eval_batch_size", "8",
             "--trainer.max_steps", "2", "--trainer.enable_progress_bar", "false"]
    summary = run_pipeline(dataset, METHODS, tmp_path / "run", mini=4, quantize=False, model=tiny_model_dir,
                           extra=extra, prefix_steps=3)
    stages = [s for m in METHODS for s in ([m, f"{m}_trained"] if m.startswith("pi_prefix") else [m])]
    assert list(summary["stages"]) == ["classifier", *stages]
    splits = ("train_forget", "train_retain", "test_forget", "test_retain")
    for stage, row in summary["stages"].items():
        assert row["status"] == "finished", stage
        for split in splits:
            assert 0 <= row[f"{split} acc"] <= 1 and 0 <= row[f"{split} F1"] <= 1, (stage, split)
    # the same values as the hand-written driver this declaration replaced gave on this tiny setting (issue 21)
    pinned = json.loads((Path(__file__).parent / "pinned" / "classification_tiny_summary.json").read_text())[dataset]
    assert set(pinned) == set(summary["stages"])
    for stage, values in pinned.items():
        for split, old in values.items():
            row = summary["stages"][stage]
            assert (row[f"{split} acc"], row[f"{split} F1"]) == pytest.approx(
                (old["label_acc"], old["label_f1"]), abs=1e-6), (stage, split)
    run = tmp_path / "run"
    assert (run / "classifier" / "merged" / "config.json").is_file()  # the target: a transformers directory
    # the collapse guard's floor comes from the target's evaluation (no evaluation before each unlearning fit);
    # PI-Prefix's configs turn the floor off
    import yaml

    learned = json.loads((run / "classifier" / "metrics.json").read_text())["metrics"]["after"]["retain"]["acc"]
    guard = yaml.safe_load((run / "grad_ascent" / "config.yaml").read_text())["guard"]
    assert guard["relative"] is False and guard["retain_floor"] == pytest.approx(0.5 * learned)
    assert yaml.safe_load((run / "pi_prefix" / "config.yaml").read_text())["guard"]["retain_floor"] is None
    assert json.loads((run / "pi_prefix" / "adapter" / "adapter_config.json").read_text())["transform"] == ["pinv"]
    assert json.loads((run / "pi_prefix" / "adapter_trained" / "adapter_config.json").read_text())["transform"] == []
    assert saved_adapter_type(run / "spul" / "adapter") == "SoftPrompt"
    # PI-Prefix trains steps, not epochs, and is read twice: transformed (the stage) and as trained
    assert json.loads((run / "pi_prefix" / "metrics.json").read_text())["metrics"]["global_step"] == 3
    trained = json.loads((run / "pi_prefix_trained" / "eval_metrics.json").read_text())
    assert "adapter_trained" in json.dumps(trained["config"]["model"]["init_args"]["init_adapter"])
    assert summary["stages"]["pi_prefix_trained"]["train_forget acc"] is not None
    table = format_markdown(summary, COLUMNS)
    assert table.count("\n") == len(stages) + 2 and "| pi_prefix_relabel_trained |" in table
    assert (run / "summary.json").is_file()
