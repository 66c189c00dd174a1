"""Memory-lean answer log-probs: the LM head applied to answer positions only, in chunks, never all (B, T, V) logits.

An unlearning loss needs, per answer token t, only the scalar ``lp_t = log softmax(W h_t + b)[y_t]`` (and for
metrics whether ``argmax == y_t``). Its gradient with respect to the hidden state is the fixed vector

    d lp_t / d h_t = W^T (onehot(y_t) - softmax(W h_t + b))

times the scalar that flows back into ``lp_t``. :class:`AnswerLogProb` computes that vector in the forward pass,
chunk by chunk, and keeps only it (N x hidden) for the backward, instead of the (B, T, V) logits, their fp32
copy and the log-softmax that ``model(...).logits`` followed by cross-entropy hold (by arithmetic, for a 1B Llama
at a 128k vocabulary and 8 x 512 tokens in bf16: ~3 GB kept for the backward and ~5 GB at the loss's peak, against
8 MB kept and ~0.3 GB of per-chunk temporaries here). Prompt and padding positions never reach the head, which
also saves their share of the head's FLOPs.

The selection of answer positions (``hidden[mask]``) has a data-dependent size: one host sync per forward on a
GPU, and a graph break for ``torch.compile`` (compile the decoder body, not this function).

The head is used this way only when that is exactly what the model computes (:func:`lean_head_of`): a plain
``nn.Linear`` with a frozen weight (LoRA leaves it frozen; full-parameter training falls back to the logits
path), and a model whose returned logits are the head's output unchanged (checked once on a real row by
:func:`head_output_is_logits`; Gemma-2's soft-capping or Cohere's logit scale fail that check and fall back).
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lit_unlearn.data.tokenize import IGNORE

#: logits elements per chunk (fp32: 128 MiB); 261 tokens at a 128k vocabulary, the whole batch at small ones
CHUNK_ELEMENTS = 2**25


class AnswerLogProb(torch.autograd.Function):
    """``lp, hit = AnswerLogProb.apply(hidden (N, H), weight (V, H), bias (V,) | None, target (N,), chunk, grad)``.

    ``lp`` (N,) float32 log-probabilities of the targets; ``hit`` (N,) bool argmax == target (no gradient).
    Gradients flow to ``hidden`` only; the head's weight and bias must be frozen. ``grad`` False (no-grad
    reference or evaluation forwards) skips the gradient direction: ``needs_input_grad`` cannot tell, it is True
    under ``torch.no_grad()`` too.
    """

    @staticmethod
    def forward(ctx, hidden: Tensor, weight: Tensor, bias: Tensor | None, target: Tensor, chunk: int, grad: bool):
        n = hidden.size(0)
        lp = torch.empty(n, dtype=torch.float32, device=hidden.device)
        hit = torch.empty(n, dtype=torch.bool, device=hidden.device)
        grad_dir = torch.empty_like(hidden) if grad else None
        for s in range(0, n, chunk):
            h, y = hidden[s:s + chunk], target[s:s + chunk]
            logits = F.linear(h, weight, bias).float()
            lse = torch.logsumexp(logits, -1)
            lp[s:s + chunk] = logits.gather(1, y[:, None]).squeeze(1) - lse
            hit[s:s + chunk] = logits.argmax(-1) == y
            if grad_dir is not None:
                # onehot - softmax in fp32 (accurate when p_y ~ 1), cast like autograd casts grad_logits, then W^T
                coef = logits.sub_(lse[:, None]).exp_().neg_()
                coef[torch.arange(y.numel(), device=y.device), y] += 1.0
                grad_dir[s:s + chunk] = coef.to(weight.dtype) @ weight
        ctx.save_for_backward(grad_dir)
        ctx.mark_non_differentiable(hit)
        return lp, hit

    @staticmethod
    def backward(ctx, grad_lp: Tensor, grad_hit):
        (grad_dir,) = ctx.saved_tensors
        grad_hidden = grad_lp[:, None].to(grad_dir.dtype) * grad_dir if grad_dir is not None else None
        return grad_hidden, None, None, None, None, None


def answer_logprobs(hidden: Tensor, head: nn.Linear, labels: Tensor, chunk_elements: int = CHUNK_ELEMENTS):
    """Per-position log-probs of ``labels`` (B, T; -100 = not scored) from ``hidden`` (B, T, H).

    Returns ``(lp, hit)``, both (B, T): float32 log-prob (0 where not scored) and bool argmax-correct (False there).
    """
    mask = labels != IGNORE
    chunk = max(1, chunk_elements // head.weight.size(0))
    grad = torch.is_grad_enabled() and hidden.requires_grad
    lp_sel, hit_sel = AnswerLogProb.apply(hidden[mask], head.weight, head.bias, labels[mask], chunk, grad)
    lp = torch.zeros(labels.shape, dtype=torch.float32, device=hidden.device).masked_scatter(mask, lp_sel)
    hit = torch.zeros(labels.shape, dtype=torch.bool, device=hidden.device).masked_scatter(mask, hit_sel)
    return lp, hit


def lean_head_of(model: nn.Module) -> nn.Linear | None:
    """The output head if :class:`AnswerLogProb` can stand in for it (a plain, frozen ``nn.Linear``), else None."""
    get = getattr(model, "get_output_embeddings", None)
    head = get() if get is not None else None
    if type(head) is not nn.Linear or head.weight.requires_grad:
        return None
    if "forward" in vars(head) or hasattr(head, "_hf_hook"):
        return None  # its forward is already wrapped (e.g. accelerate's device-dispatch hooks): leave it alone
    if head.bias is not None and head.bias.requires_grad:
        return None
    return head


@contextmanager
def capture_head_input(head: nn.Module):
    """Within the block, ``head(x)`` records ``x`` and returns an empty (..., 0) tensor instead of the logits, so the
    model's forward skips the (B, T, V) product. Yields the list the inputs are appended to."""
    seen: list[Tensor] = []

    def record(x: Tensor) -> Tensor:
        seen.append(x)
        return x.new_zeros(*x.shape[:-1], 0)

    head.forward = record  # instance attribute shadows the class's forward; nn.Module.__call__ looks it up
    try:
        yield seen
    finally:
        del head.forward


@torch.no_grad()
def head_output_is_logits(model: nn.Module, head: nn.Module, **inputs) -> bool:
    """One no-grad forward: are the model's returned logits exactly its head's output (no soft-capping, scaling)?"""
    seen: list[Tensor] = []
    handle = head.register_forward_hook(lambda mod, args, out: seen.append(out))
    try:
        logits = model(**inputs).logits
    finally:
        handle.remove()
    if len(seen) != 1 or seen[0].shape != logits.shape:
        return False
    return torch.equal(seen[0].to(logits.dtype), logits)
