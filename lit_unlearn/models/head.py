"""When the memory-lean head may stand in for a model's LM head, and the hooks that let it.

:func:`lit_unlearn.core.scoring.answer_logprobs` scores answer tokens from the head's input, at answer positions only
and in chunks, instead of the model's (B, T, V) logits. That is exactly what the model computes only when its head
is a plain ``nn.Linear`` with a frozen weight (LoRA leaves it frozen; full-parameter training falls back to the
logits path), and its returned logits are that head's output unchanged (checked once on a real row by
:func:`head_output_is_logits`; Gemma-2's soft-capping or Cohere's logit scale fail that check and fall back).
:func:`resolve_lean_head` makes that decision once per model; :func:`capture_head_input` then runs the model with
the head's matmul skipped and hands over its input.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from lit_unlearn.models.modes import eval_mode

log = logging.getLogger(__name__)


def lean_head_of(model: nn.Module) -> nn.Linear | None:
    """The output head if :func:`~lit_unlearn.core.scoring.answer_logprobs` can stand in for it (a plain, frozen
    ``nn.Linear``), else None."""
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


def resolve_lean_head(model: nn.Module, inputs: dict, probe_one_row: bool = True) -> nn.Linear | None:
    """The head to score through (:func:`lean_head_of`, confirmed by one no-grad probe forward on ``inputs``), or None.

    The probe runs with dropout off (:func:`~lit_unlearn.models.modes.eval_mode`). ``probe_one_row`` slices the inputs to their first row; an adapter's extra inputs
    (prefixes) may not slice by row, so a caller with such inputs passes False.
    """
    head = lean_head_of(model)
    if head is None:
        log.info("lean_head: %s has no plain frozen linear head; using full logits", type(model).__name__)
        return None
    probe = {k: (v[:1] if isinstance(v, Tensor) else v) for k, v in inputs.items()} if probe_one_row else inputs
    with eval_mode(model):
        ok = head_output_is_logits(model, head, **probe)
    if not ok:
        log.info("lean_head: %s's logits are not its head's output; using full logits", type(model).__name__)
        return None
    return head
