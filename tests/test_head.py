"""The memory-lean head: answer log-probs from the head's input equal the logits path, in value and gradient, keep no
vocabulary-sized tensor for the backward, and fall back to logits where the model post-processes them."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lit_unlearn.adapters import LoRA
from lit_unlearn.core.tokens import IGNORE
from lit_unlearn.methods import NPO, GradAscentKL, GradDiff
from lit_unlearn.core.scoring import answer_logprobs

pytestmark = pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")


def reference_logprobs(hidden, head, labels):
    logp = torch.log_softmax(head(hidden).float(), -1)
    mask = labels != IGNORE
    lp = logp.gather(-1, labels.clamp(min=0)[..., None]).squeeze(-1) * mask
    hit = (logp.argmax(-1) == labels) & mask
    return lp, hit


@pytest.mark.parametrize("chunk_elements", [1, 3 * 11, 2**20], ids=["1-token-chunks", "3-token-chunks", "one-chunk"])
@pytest.mark.parametrize("bias", [False, True])
def test_answer_logprobs_equal_log_softmax_in_value_and_gradient(chunk_elements, bias):
    torch.manual_seed(0)
    head = torch.nn.Linear(8, 11, bias=bias, dtype=torch.float64).requires_grad_(False)
    hidden = torch.randn(3, 5, 8, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 11, (3, 5))
    labels[0, :2] = IGNORE
    labels[2, 4] = IGNORE
    weight = torch.randn(3, 5, dtype=torch.float64)  # any upstream gradient (per-row, per-token weights)

    lp, top = answer_logprobs(hidden, head, labels, chunk_elements)
    (grad,) = torch.autograd.grad((weight * lp).sum(), hidden)
    ref_lp, ref_hit = reference_logprobs(hidden, head, labels)
    (ref_grad,) = torch.autograd.grad((weight * ref_lp).sum(), hidden)

    torch.testing.assert_close(lp, ref_lp.float(), rtol=1e-6, atol=1e-6)
    scored = labels != IGNORE
    assert torch.equal((top == labels) & scored, ref_hit)  # the argmax ids, -100 where nothing is scored
    assert torch.equal(top[scored], (hidden.detach() @ head.weight.T + (head.bias if bias else 0)).argmax(-1)[scored])
    assert (top[~scored] == IGNORE).all()
    torch.testing.assert_close(grad, ref_grad, rtol=1e-5, atol=1e-7)  # both through fp32 logits
    assert grad[0, :2].abs().sum() == 0  # unscored positions get no gradient


@pytest.mark.parametrize("bias", [False, True])
def test_the_lean_head_gives_min_k_pp_moments_equal_to_the_full_logits_in_double(bias):
    """``moments``: each answer position's mean and spread of log p over the vocabulary, from the lean head's
    chunked products, equal the float64 log-softmax of the full logits (and the logits path's own), 0 elsewhere."""
    from lit_unlearn.core.scoring import TokenStats

    torch.manual_seed(0)
    head = torch.nn.Linear(8, 11, bias=bias).requires_grad_(False)
    hidden = torch.randn(3, 5, 8) * 3
    labels = torch.randint(0, 11, (3, 5))
    labels[0, :3] = IGNORE
    lean = TokenStats.from_hidden(hidden, head, labels, moments=True)
    full = TokenStats.from_logits(head(hidden), labels, moments=True)
    logp = torch.log_softmax(head(hidden).double(), -1)
    mu = (logp.exp() * logp).sum(-1)
    sigma = ((logp.exp() * (logp - mu[..., None]) ** 2).sum(-1)).sqrt()
    shifted = torch.nn.functional.pad(labels[:, 1:], (0, 1), value=IGNORE)
    mask = shifted != IGNORE
    assert torch.equal(lean.mask, mask) and not lean.mu[~mask].any() and not lean.sigma[~mask].any()
    for stats in (lean, full):
        torch.testing.assert_close(stats.mu[mask].double(), mu[mask], rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(stats.sigma[mask].double(), sigma[mask], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(lean.token_nll, full.token_nll, rtol=1e-6, atol=1e-6)


def test_answer_logprobs_under_no_grad_skip_the_gradient_direction():
    head = torch.nn.Linear(8, 11).requires_grad_(False)
    hidden = torch.randn(2, 4, 8, requires_grad=True)
    with torch.no_grad():
        lp, _ = answer_logprobs(hidden, head, torch.randint(0, 11, (2, 4)))
    assert not lp.requires_grad


def test_bf16_answer_logprobs_track_the_fp32_ones():
    torch.manual_seed(0)
    head = torch.nn.Linear(64, 500).requires_grad_(False)
    hidden = torch.randn(2, 16, 64)
    labels = torch.randint(0, 500, (2, 16))
    lp32, _ = answer_logprobs(hidden, head, labels)
    lp16, _ = answer_logprobs(hidden.bfloat16(), head.to(torch.bfloat16), labels)
    assert lp16.dtype == torch.float32
    torch.testing.assert_close(lp16, lp32, rtol=0.05, atol=0.15)


def adapter_grads(method, batch: dict, logits: bool) -> dict[str, torch.Tensor]:
    method.zero_grad()
    stats = method(batch, logits=logits)
    (stats.token_nll.sum(-1) * torch.tensor([1.0, -2.0, 0.5, 3.0])[:stats.mask.size(0)]).sum().backward()
    return {n: p.grad.clone() for n, p in method.named_parameters() if p.requires_grad}


def test_the_method_scores_through_the_lean_head_with_the_same_numbers_and_gradients(make_method, qa_batch):
    method = make_method(NPO, adapter=LoRA(r=4, alpha=8, dropout=0.0))
    method.eval()
    fb = qa_batch["forget"]
    with torch.no_grad():  # a trained-looking adapter: B != 0
        for n, p in method.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.2)
    lean, full = method(fb), method(fb, logits=True)
    assert method.scorer._head[0] is method.lm.get_output_embeddings()  # the tiny Llama qualifies
    assert lean.logits is None and full.logits is not None
    torch.testing.assert_close(lean.token_nll, full.token_nll, rtol=1e-5, atol=1e-5)
    assert torch.equal(lean.mask, full.mask) and torch.equal(lean.correct(), full.correct())
    assert torch.equal(lean.predicted()[lean.mask], full.predicted()[full.mask])
    g_lean, g_full = adapter_grads(method, fb, False), adapter_grads(method, fb, True)
    assert g_lean.keys() == g_full.keys() and g_lean
    for n in g_lean:
        torch.testing.assert_close(g_lean[n], g_full[n], rtol=1e-4, atol=1e-6, msg=n)


def largest_saved_last_dim(method, batch: dict, logits: bool) -> int:
    """The widest last dimension among tensors autograd saves during a training step's forward."""
    widths = []

    def pack(t):
        widths.append(t.shape[-1] if t.dim() else 0)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        method(batch, logits=logits).token_nll.sum()
    return max(widths)


def test_no_vocabulary_sized_tensor_is_kept_for_the_backward(make_method, qa_batch):
    method = make_method(GradDiff)
    vocab = method.lm.get_output_embeddings().weight.size(0)
    hidden = method.lm.config.hidden_size
    assert vocab > 4 * hidden  # so the two cases below are told apart
    assert largest_saved_last_dim(method, qa_batch["forget"], logits=True) == vocab
    assert largest_saved_last_dim(method, qa_batch["forget"], logits=False) < vocab


def test_post_processed_logits_fall_back_to_the_logits_path(make_method, qa_batch):
    method = make_method(NPO)
    # a model that rescales its head's output (as Gemma-2's soft-capping or Cohere's logit_scale do)
    causal_lm = method.lm.get_base_model()
    causal_lm.register_forward_hook(lambda mod, args, out: out.__setitem__("logits", out["logits"] * 0.5) or out)
    stats = method(qa_batch["forget"])
    assert method.scorer._head == (None,)
    assert stats.logits is not None
    fb = qa_batch["forget"]
    with torch.no_grad():
        logits = method.lm(input_ids=fb["input_ids"], attention_mask=fb["attention_mask"]).logits  # rescaled
    expected, _ = reference_logprobs(logits, torch.nn.Identity(), F.pad(fb["labels"][:, 1:], (0, 1), value=IGNORE))
    torch.testing.assert_close(stats.token_nll, -expected, rtol=1e-5, atol=1e-5)


def test_full_parameter_training_and_kl_retain_use_logits(make_method, qa_batch):
    full = make_method(GradDiff, adapter=None)
    assert full(qa_batch["forget"]).logits is not None  # the head is trainable: no lean path
    assert full.scorer._head == (None,)
    kl = make_method(GradAscentKL)
    assert kl.needs_logits
    f_stats, r_stats = kl.stats_for([qa_batch["forget"], qa_batch["retain"]])
    assert r_stats.logits is not None


class WithHead(torch.nn.Module):
    def __init__(self, head):
        super().__init__()
        self.head = head

    def get_output_embeddings(self):
        return self.head


def test_lean_head_of_takes_only_a_plain_frozen_unwrapped_linear():
    from lit_unlearn.models.head import lean_head_of

    frozen = torch.nn.Linear(4, 9).requires_grad_(False)
    assert lean_head_of(WithHead(frozen)) is frozen
    assert lean_head_of(WithHead(torch.nn.Linear(4, 9))) is None  # trainable weight

    class Scaled(torch.nn.Linear):
        def forward(self, x):
            return 2 * super().forward(x)

    assert lean_head_of(WithHead(Scaled(4, 9).requires_grad_(False))) is None
    wrapped = torch.nn.Linear(4, 9).requires_grad_(False)
    wrapped.forward = lambda x, _f=wrapped.forward: _f(x.to("cpu"))  # a dispatch hook's wrapper
    assert lean_head_of(WithHead(wrapped)) is None
    assert lean_head_of(torch.nn.Linear(4, 9)) is None  # no get_output_embeddings at all
