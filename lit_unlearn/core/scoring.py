"""Token scores: what every loss and every teacher-forced metric consumes.

:class:`TokenStats` holds the per-token answer NLL of one teacher-forced forward, with the reductions the methods
need kept apart (METHODS "sum vs mean"): ``seq_nll`` is the **sum** over a row's answer tokens (NPO),
``mean_nll`` that sum divided by the row's answer length (SimNPO, TOFU), ``ce`` the mean over all answer tokens of
the batch (HF ``.loss``).

:func:`answer_logprobs` is the memory-lean way to get those scores: the LM head applied to answer positions only,
in chunks, never all (B, T, V) logits. An unlearning loss needs, per answer token t, only the scalar
``lp_t = log softmax(W h_t + b)[y_t]`` (and for metrics whether ``argmax == y_t``). Its gradient with respect to
the hidden state is the fixed vector

    d lp_t / d h_t = W^T (onehot(y_t) - softmax(W h_t + b))

times the scalar that flows back into ``lp_t``. :class:`AnswerLogProb` computes that vector in the forward pass,
chunk by chunk, and keeps only it (N x hidden) for the backward, instead of the (B, T, V) logits, their fp32
copy and the log-softmax that ``model(...).logits`` followed by cross-entropy hold (by arithmetic, for a 1B Llama
at a 128k vocabulary and 8 x 512 tokens in bf16: ~3 GB kept for the backward and ~5 GB at the loss's peak, against
8 MB kept and ~0.3 GB of per-chunk temporaries here). Prompt and padding positions never reach the head, which
also saves their share of the head's FLOPs. The selection of answer positions (``hidden[mask]``) has a
data-dependent size: one host sync per forward on a GPU, and a graph break for ``torch.compile`` (compile the
decoder body, not this function). When the head may stand in this way is decided in
:mod:`lit_unlearn.models.head`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lit_unlearn.core.tokens import IGNORE

#: logits elements per chunk (fp32: 128 MiB); 261 tokens at a 128k vocabulary, the whole batch at small ones
CHUNK_ELEMENTS = 2**25


class AnswerLogProb(torch.autograd.Function):
    """``lp, top = AnswerLogProb.apply(hidden (N, H), weight (V, H), bias (V,) | None, target (N,), chunk, grad)``.

    ``lp`` (N,) float32 log-probabilities of the targets; ``top`` (N,) long argmax token ids (no gradient).
    Gradients flow to ``hidden`` only; the head's weight and bias must be frozen. ``grad`` False (no-grad
    reference or evaluation forwards) skips the gradient direction: ``needs_input_grad`` cannot tell, it is True
    under ``torch.no_grad()`` too.
    """

    @staticmethod
    def forward(ctx, hidden: Tensor, weight: Tensor, bias: Tensor | None, target: Tensor, chunk: int, grad: bool):
        n = hidden.size(0)
        lp = torch.empty(n, dtype=torch.float32, device=hidden.device)
        top = torch.empty(n, dtype=torch.long, device=hidden.device)
        grad_dir = torch.empty_like(hidden) if grad else None
        for s in range(0, n, chunk):
            h, y = hidden[s:s + chunk], target[s:s + chunk]
            logits = F.linear(h, weight, bias).float()
            lse = torch.logsumexp(logits, -1)
            lp[s:s + chunk] = logits.gather(1, y[:, None]).squeeze(1) - lse
            top[s:s + chunk] = logits.argmax(-1)
            if grad_dir is not None:
                # onehot - softmax in fp32 (accurate when p_y ~ 1), cast like autograd casts grad_logits, then W^T
                coef = logits.sub_(lse[:, None]).exp_().neg_()
                coef[torch.arange(y.numel(), device=y.device), y] += 1.0
                grad_dir[s:s + chunk] = coef.to(weight.dtype) @ weight
        ctx.save_for_backward(grad_dir)
        ctx.mark_non_differentiable(top)
        return lp, top

    @staticmethod
    def backward(ctx, grad_lp: Tensor, grad_top):
        (grad_dir,) = ctx.saved_tensors
        grad_hidden = grad_lp[:, None].to(grad_dir.dtype) * grad_dir if grad_dir is not None else None
        return grad_hidden, None, None, None, None, None


def distribution_moments(logits: Tensor, block: int = 64) -> tuple[Tensor, Tensor]:
    """(mu, sigma), each (N,) float32: the mean and standard deviation of log p(v) over the vocabulary under p
    itself, for (N, V) ``logits`` (Min-K%++'s normalisation). Computed in float64, ``block`` rows at a time (Min-K%++
    divides by sigma, which float32 sums over a large vocabulary blur in the fifth digit)."""
    mu = torch.empty(logits.size(0), dtype=torch.float32, device=logits.device)
    sigma = torch.empty_like(mu)
    for s in range(0, logits.size(0), block):
        logp = torch.log_softmax(logits[s:s + block].double(), -1)
        p = logp.exp()
        m = (p * logp).sum(-1)
        var = (p * (logp - m[:, None]).square()).sum(-1)  # two-pass: no cancellation where p is peaked
        mu[s:s + block], sigma[s:s + block] = m, var.clamp(min=1e-12).sqrt()
    return mu, sigma


def answer_moments(hidden: Tensor, weight: Tensor, bias: Tensor | None, target: Tensor, chunk: int):
    """No-grad scores of N answer positions: ``(lp, top, mu, sigma)``, each (N,), one head product per chunk."""
    n = hidden.size(0)
    out = [torch.empty(n, dtype=dt, device=hidden.device) for dt in (torch.float32, torch.long, torch.float32,
                                                                    torch.float32)]
    for s in range(0, n, chunk):
        logits = F.linear(hidden[s:s + chunk], weight, bias).float()
        lse = torch.logsumexp(logits, -1)
        out[0][s:s + chunk] = logits.gather(1, target[s:s + chunk, None]).squeeze(1) - lse
        out[1][s:s + chunk] = logits.argmax(-1)
        out[2][s:s + chunk], out[3][s:s + chunk] = distribution_moments(logits)
    return tuple(out)


def answer_logprobs(hidden: Tensor, head: nn.Linear, labels: Tensor, chunk_elements: int = CHUNK_ELEMENTS):
    """Per-position log-probs of ``labels`` (B, T; -100 = not scored) from ``hidden`` (B, T, H).

    Returns ``(lp, top)``, both (B, T): float32 log-prob (0 where not scored) and the argmax token id (-100 there).
    """
    mask = labels != IGNORE
    chunk = max(1, chunk_elements // head.weight.size(0))
    grad = torch.is_grad_enabled() and hidden.requires_grad
    lp_sel, top_sel = AnswerLogProb.apply(hidden[mask], head.weight, head.bias, labels[mask], chunk, grad)
    lp = torch.zeros(labels.shape, dtype=torch.float32, device=hidden.device).masked_scatter(mask, lp_sel)
    top = torch.full(labels.shape, IGNORE, dtype=torch.long, device=hidden.device).masked_scatter(mask, top_sel)
    return lp, top


@dataclass
class TokenStats:
    """Per-token results of one teacher-forced forward, aligned so position t predicts ``labels[:, t]``.

    ``labels`` (B, T) are the input labels shifted left by one (the last position gets -100); shifting the labels
    rather than slicing the logits avoids a copy of the whole (B, T, V) tensor. ``token_nll`` is 0 outside
    ``mask``. ``logits`` (B, T, V) are the model's own when the forward produced them (:meth:`from_logits`);
    the memory-lean path (:meth:`from_hidden`) has none and records the ``argmax`` token ids at answer positions.
    """

    logits: Tensor | None
    labels: Tensor
    token_nll: Tensor
    mask: Tensor
    argmax: Tensor | None = None
    #: with ``moments``: (B, T) mean and standard deviation of log p(v) over the vocabulary at each answer
    #: position (:func:`distribution_moments`; 0 elsewhere), what Min-K%++ normalises by
    mu: Tensor | None = None
    sigma: Tensor | None = None

    @classmethod
    def from_logits(cls, logits: Tensor, labels: Tensor, moments: bool = False) -> "TokenStats":
        labels = F.pad(labels[:, 1:], (0, 1), value=IGNORE)
        mask = labels != IGNORE
        nll = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), labels.reshape(-1),
                              ignore_index=IGNORE, reduction="none").view_as(labels)
        stats = cls(logits, labels, nll * mask, mask)
        if moments:
            with torch.no_grad():
                mu, sigma = distribution_moments(logits[mask])
            stats.mu, stats.sigma = (torch.zeros(labels.shape, device=logits.device).masked_scatter(mask, v)
                                     for v in (mu, sigma))
        return stats

    @classmethod
    def from_hidden(cls, hidden: Tensor, head, labels: Tensor, moments: bool = False) -> "TokenStats":
        """From the head's input (B, T, H): only answer positions go through ``head``, in chunks
        (:func:`answer_logprobs`); the same numbers as :meth:`from_logits` without logits. ``moments`` (no
        gradient) adds ``mu`` and ``sigma`` from the same head products."""
        labels = F.pad(labels[:, 1:], (0, 1), value=IGNORE)
        if not moments:
            lp, top = answer_logprobs(hidden, head, labels)
            return cls(None, labels, -lp, labels != IGNORE, top)
        mask = labels != IGNORE
        chunk = max(1, CHUNK_ELEMENTS // head.weight.size(0))
        with torch.no_grad():
            values = answer_moments(hidden[mask], head.weight, head.bias, labels[mask], chunk)
        lp, top, mu, sigma = (torch.full(labels.shape, fill, dtype=v.dtype, device=hidden.device)
                              .masked_scatter(mask, v) for v, fill in zip(values, (0.0, IGNORE, 0.0, 0.0)))
        return cls(None, labels, -lp, mask, top, mu, sigma)

    def rows(self, sl: slice, width: int) -> "TokenStats":
        """Rows ``sl``, first ``width`` positions (splitting a fused forward back into its batches)."""
        def cut(t):
            return None if t is None else t[sl, :width]
        return TokenStats(cut(self.logits), cut(self.labels), cut(self.token_nll), cut(self.mask), cut(self.argmax),
                          cut(self.mu), cut(self.sigma))

    @property
    def n_tokens(self) -> Tensor:
        """(B,) answer tokens per row."""
        return self.mask.sum(-1)

    @property
    def seq_nll(self) -> Tensor:
        """(B,) NLL_seq: the **sum** of answer-token NLL per row (NPO's per-sequence quantity)."""
        return self.token_nll.sum(-1)

    @property
    def mean_nll(self) -> Tensor:
        """(B,) answer NLL divided by answer length (SimNPO, TOFU)."""
        return self.seq_nll / self.n_tokens.clamp(min=1)

    @property
    def ce(self) -> Tensor:
        """Scalar mean token cross-entropy over all answer tokens of the batch (HF ``.loss``)."""
        return self.token_nll.sum() / self.mask.sum().clamp(min=1)

    def weighted_ce(self, weight: Tensor | None) -> Tensor:
        """mean_i(w_i * CE_i) with per-row CE_i = ``mean_nll``; equals ``ce`` only when rows have equal lengths."""
        if weight is None:
            return self.ce
        return row_mean(self.mean_nll, weight)

    def predicted(self) -> Tensor:
        """(B, T) argmax token ids; only answer positions (``mask``) are meaningful."""
        return self.argmax if self.argmax is not None else self.logits.argmax(-1)

    def correct(self) -> Tensor:
        """(B, T) bool: answer positions where argmax equals the gold token."""
        return (self.predicted() == self.labels) & self.mask


def row_mean(values: Tensor, weight: Tensor | None = None) -> Tensor:
    """mean_i(w_i * values_i): the per-sample weighting every method applies to its per-row losses (weights from
    the batch's ``weight`` field; None = all 1)."""
    if weight is None:
        return values.mean()
    return (weight.to(values) * values).mean()
