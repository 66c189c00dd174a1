"""Registries derived from the class hierarchy: a class is registered by being defined, never by a second list."""

from __future__ import annotations

import inspect


def subclasses_in(base: type, package: str) -> dict[str, type]:
    """Every public subclass of ``base`` (at any depth) defined in ``package`` or its modules, by class name, in
    definition order. Private helpers (``_ReplaceAnswers``), abstract bases (``ModuleAdapter``) and classes defined
    elsewhere (a test's) are left out."""
    found: dict[str, type] = {}
    todo = list(base.__subclasses__())
    while todo:
        cls = todo.pop(0)
        todo.extend(cls.__subclasses__())
        in_package = cls.__module__ == package or cls.__module__.startswith(package + ".")
        if in_package and not cls.__name__.startswith("_") and not inspect.isabstract(cls):
            found.setdefault(cls.__name__, cls)
    return found
