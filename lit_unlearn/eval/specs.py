"""Evaluators from configs: each entry of a split's list is a name or a class with its own arguments.

In a data module's ``evaluators`` (split -> list), an entry is

- a registered name (``mia``) or class name (``MIAEvaluator``) or dotted class path: built with its defaults;
- ``{class_path: <one of those>, init_args: {...}}``: built with those arguments.

``evaluator_args`` (evaluator name -> arguments) gives every evaluator of that name in every split the same
arguments (TOFU's generation length, the MCQ letter style), below an entry's own ``init_args``. Arguments are
checked against the class's constructor when the data module is built, so a misspelt argument or a bad value is
one error naming its place (``--data.evaluators.forget[1].init_args.k``), before any model is loaded.

An evaluator declares the ``kinds`` of rows it scores (``text``: a prompt and a scored answer, every split;
``label``, ``tofu``, ``mcq``, ``backdoor``: rows carrying the fields those need); a data module says which kinds
each split holds (:meth:`~lit_unlearn.data.base.ForgetRetainDataModule.kinds_of`), and an evaluator on a split of
another kind is refused with one line naming both.
"""

from __future__ import annotations

import inspect
from typing import Any

from lit_unlearn.core.errors import DataError, LitUnlearnError
from lit_unlearn.eval.base import Evaluator


def evaluator_class(name: str, where: str) -> type[Evaluator]:
    """The evaluator class a config names: a registered name, a class name or a dotted class path."""
    from lit_unlearn.eval import EVALUATORS

    by_class = {cls.__name__: cls for cls in EVALUATORS.values()}
    if name in EVALUATORS:
        return EVALUATORS[name]
    if name in by_class:
        return by_class[name]
    if "." in name:
        import importlib

        module, _, attr = name.rpartition(".")
        try:
            cls = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError):
            cls = None
        if isinstance(cls, type) and issubclass(cls, Evaluator):
            return cls
    raise DataError(f"{where}: unknown evaluator {name!r}; known: {', '.join(EVALUATORS)}")


def parse_spec(spec: Any, where: str) -> tuple[type[Evaluator], dict]:
    """``(class, init_args)`` of one entry (module docstring)."""
    if isinstance(spec, str):
        return evaluator_class(spec, where), {}
    if isinstance(spec, dict) and "class_path" in spec and set(spec) <= {"class_path", "init_args"}:
        args = spec.get("init_args") or {}
        if not isinstance(args, dict):
            raise DataError(f"{where}.init_args must be a mapping of argument -> value, got {args!r}")
        return evaluator_class(str(spec["class_path"]), where), dict(args)
    raise DataError(f"{where}: an evaluator is a name or {{class_path: ..., init_args: {{...}}}}, got {spec!r}")


def build(spec: Any, where: str, shared: dict[str, dict] | None = None) -> Evaluator:
    """The evaluator of one entry: its class's defaults, then ``shared[name]``, then the entry's ``init_args``."""
    cls, args = parse_spec(spec, where)
    merged = {**(shared or {}).get(cls.name, {}), **args}
    accepted = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    for key in merged:
        if key not in accepted:
            place = f"{where}.init_args.{key}" if key in args else f"--data.evaluator_args.{cls.name}.{key}"
            raise DataError(f"{place}: {cls.__name__} has no argument {key!r} (it takes: "
                            f"{', '.join(accepted) or 'none'})")
    try:
        return cls(**merged)
    except LitUnlearnError as err:
        raise DataError(f"{where} ({cls.__name__}): {err}") from None
    except (TypeError, ValueError) as err:
        raise DataError(f"{where} ({cls.__name__}): {err}") from None


def check_shared(shared: dict[str, dict] | None) -> None:
    """``evaluator_args`` names registered evaluators and gives each a mapping."""
    from lit_unlearn.eval import EVALUATORS

    for name, args in (shared or {}).items():
        if name not in EVALUATORS:
            raise DataError(f"--data.evaluator_args: unknown evaluator {name!r}; known: {', '.join(EVALUATORS)}")
        if not isinstance(args, dict):
            raise DataError(f"--data.evaluator_args.{name} must be a mapping of argument -> value, got {args!r}")
