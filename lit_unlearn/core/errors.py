"""The errors lit_unlearn raises for bad input or configuration.

Every one is a :class:`LitUnlearnError` whose message is one sentence naming the file, row, field or flag to fix,
so the CLI can print it as one line instead of a traceback.
"""

from __future__ import annotations


class LitUnlearnError(Exception):
    """Base of lit_unlearn's own errors: the message alone tells the user what to fix."""


class ConfigError(LitUnlearnError, ValueError):
    """A configuration value cannot work; the message names the flag."""


class DataError(LitUnlearnError, ValueError):
    """Bad input data; the message names the file, row, field or flag to fix."""


class MethodError(LitUnlearnError, ValueError):
    """A method was configured in a way that cannot work; the message names the flag."""


class AdapterError(LitUnlearnError, ValueError):
    """An adapter could not be applied, saved or loaded; the message names the directory or field."""


class ModelLoadError(LitUnlearnError, RuntimeError):
    """A model or tokenizer could not be located or loaded; the message names the model and why."""


class EvalError(LitUnlearnError, ValueError):
    """An evaluator was configured or fed in a way that cannot work; the message names the split or flag."""
