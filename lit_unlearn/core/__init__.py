"""The lowest layer: error types, prompt/answer tokenization and the token scores every loss and metric consumes.

It imports nothing else from lit_unlearn, and every other package (models, adapters, eval, data, methods) may
import it; ``tests/test_layers.py`` checks that no import points upward.
"""

from lit_unlearn.core.errors import (
    AdapterError,
    ConfigError,
    DataError,
    EvalError,
    LitUnlearnError,
    MethodError,
    ModelLoadError,
)
from lit_unlearn.core.scoring import TokenStats, answer_logprobs, row_mean
from lit_unlearn.core.tokens import IGNORE, collate, encode, encode_batch

__all__ = ["IGNORE", "AdapterError", "ConfigError", "DataError", "EvalError", "LitUnlearnError", "MethodError",
           "ModelLoadError", "TokenStats", "answer_logprobs", "collate", "encode", "encode_batch", "row_mean"]
