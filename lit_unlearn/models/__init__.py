"""Model loading: hub id, local directory, .gguf file or the embedded default; dtype, 4-bit, attention backend."""

from lit_unlearn.models.loading import (
    DEFAULT_MODEL,
    EMBEDDED_MODELS,
    ModelLoadError,
    load_causal_lm,
    load_tokenizer,
    resolve_model,
)

__all__ = ["DEFAULT_MODEL", "EMBEDDED_MODELS", "ModelLoadError", "load_causal_lm", "load_tokenizer", "resolve_model"]
