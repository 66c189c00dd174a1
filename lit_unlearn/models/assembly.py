"""Building the model a method trains, and exporting what it trained.

:func:`assemble`: the tokenizer and the base (dtype, 4-bit, attention backend), a learn stage's adapter folded in
(``init_adapter``: a LoRA is merged, a prefix or soft prompt stacked frozen; so "adapter disabled" is the learned
model: the reference of NPO and KL), then the method's
adapter applied (or every parameter trainable without one). :func:`export_merged` writes the base with the adapter
folded in as a plain transformers directory.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from torch import nn

from lit_unlearn.adapters.base import Adapter
from lit_unlearn.adapters.saved import attach_saved_adapter
from lit_unlearn.models.loading import AttnBackend, Quantize, load_causal_lm, load_tokenizer


def assemble(model: str, adapter: Adapter | None, init_adapter: str | list[str] | None, dtype: str,
             quantize: Quantize, attn_backend: AttnBackend, trust_remote_code: bool,
             check_base: Callable[[nn.Module], None] | None = None):
    """``(lm, tokenizer)``: the model to train, in train mode, and its tokenizer (pad = EOS where it has no pad).
    ``check_base`` sees the base (``init_adapter`` merged) before the adapter is applied: a method's chance to refuse
    a model it cannot work on with its own message."""
    tokenizer = load_tokenizer(model, trust_remote_code)
    base = load_causal_lm(model, dtype, quantize, attn_backend, trust_remote_code)
    base.config.pad_token_id = tokenizer.pad_token_id
    for path in [init_adapter] if isinstance(init_adapter, str) else init_adapter or []:
        base = attach_saved_adapter(base, path)  # in order: e.g. a learn stage's LoRA (merged), then a prefix (stacked)
    if check_base is not None:
        check_base(base)
    if adapter is None:
        for p in base.parameters():  # a quantized base's packed weights are integers: they never take a gradient
            p.requires_grad_(p.is_floating_point())
        lm = base
    else:
        lm = adapter.apply(base)
    # from_pretrained returns eval mode; train as the original recipes do (base dropout on, e.g. OPT's 0.1)
    lm.train()
    return lm, tokenizer


def export_merged(lm, adapter: Adapter | None, tokenizer, path: str | Path, reload_base: Callable | None = None):
    """Save the base with ``adapter`` folded in, plus the tokenizer; returns the merged model (folded in place, no
    second copy of the weights), which computes the same outputs as ``lm``.

    A 4-bit or 8-bit base (QLoRA) is not merged into its quantized weights: the adapter is saved, the base
    reloaded unquantized by ``reload_base()`` (the run's dtype), and the adapter merged into that, as QLoRA
    targets are usually exported; the result is a plain transformers directory any tool loads."""
    quantized = getattr(lm, "is_loaded_in_4bit", False) or getattr(lm, "is_loaded_in_8bit", False)
    if adapter is not None and quantized and reload_base is not None:
        import tempfile

        from lit_unlearn.adapters.saved import attach_saved_adapter

        with tempfile.TemporaryDirectory() as tmp:
            adapter.save(lm, tmp)
            merged = attach_saved_adapter(reload_base(), tmp)
    else:
        merged = adapter.merge(lm) if adapter is not None else lm
    merged.save_pretrained(str(path))
    tokenizer.save_pretrained(str(path))
    return merged
