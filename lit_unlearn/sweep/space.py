"""A method's search space, declared in YAML beside its config (``configs/search/<method>.yaml``).

Each key of ``space`` is a dotted config key (as a pipeline flag: ``model.init_args.lr``, ``trainer.max_epochs``)
mapped to one distribution::

    space:
      model.init_args.lr: {low: 1.0e-5, high: 1.0e-3, log: true}    # float, log-uniform
      model.init_args.beta: {low: 0.05, high: 5.0, log: true}
      trainer.max_epochs: {low: 2, high: 10}                        # int (both bounds ints), uniform
      model.init_args.retain: {choices: [nll, kl]}                  # categorical

A distribution with ``low`` and ``high`` is an int when both bounds are ints (``step`` optional), else a float;
``log: true`` samples the logarithm uniformly. Optional sections of the same file override the setting's defaults:
``objectives`` / ``constraints`` (:mod:`lit_unlearn.sweep.objectives`), ``fixed`` (dotted keys set in every trial),
``proxy`` (dotted keys set in every trial's fit, over the setting's proxy evaluation, and taken back in the full
evaluation of the frontier and in ``best.yaml``: a cheaper proxy, e.g. ``trainer.check_val_every_n_epoch: 2`` or a
seeded subset of the evaluation rows, ``data.init_args.max_rows: {forget_mcq: 40}``) and ``sampler`` / ``pruner``
(Optuna objects as ``{class_path, init_args}``). Every mistake is one error naming the file and the key.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lit_unlearn.core.errors import ConfigError

SECTIONS = ("space", "fixed", "proxy", "objectives", "constraints", "sampler", "pruner")


@dataclass(frozen=True)
class Param:
    """One searched key: a float / int range (``log``: log-uniform) or categorical ``choices``."""

    key: str
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: int | float | None = None
    choices: tuple | None = None

    @property
    def kind(self) -> str:
        if self.choices is not None:
            return "categorical"
        return "int" if isinstance(self.low, int) and isinstance(self.high, int) else "float"

    def suggest(self, trial) -> Any:
        """The value of this key in an Optuna trial (a re-queued trial gets its fixed value back)."""
        if self.kind == "categorical":
            return trial.suggest_categorical(self.key, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(self.key, self.low, self.high, step=self.step or 1, log=self.log)
        return trial.suggest_float(self.key, float(self.low), float(self.high), step=self.step, log=self.log)

    def describe(self) -> str:
        if self.kind == "categorical":
            return "{" + ", ".join(map(str, self.choices)) + "}"
        return f"[{self.low:g}, {self.high:g}]" + (" log" if self.log else "")


@dataclass(frozen=True)
class SearchSpace:
    params: tuple[Param, ...]
    fixed: dict = field(default_factory=dict)
    objectives: list | None = None
    constraints: list | None = None
    sampler: dict | None = None
    pruner: dict | None = None
    source: str = "<space>"
    #: keys of the trials' proxy evaluation only (over the setting's ``proxy``; not in the full evaluation)
    proxy: dict = field(default_factory=dict)

    def sample(self, trial) -> dict[str, Any]:
        """Dotted key -> value of every searched key in ``trial``."""
        return {p.key: p.suggest(trial) for p in self.params}


def parse_param(key: str, spec: Any, where: str) -> Param:
    if not isinstance(spec, dict):
        raise ConfigError(f"{where}: space.{key} must be a mapping ({{low, high[, log, step]}} or {{choices}}), "
                          f"got {spec!r}")
    unknown = set(spec) - {"low", "high", "log", "step", "choices"}
    if unknown:
        raise ConfigError(f"{where}: space.{key} has unknown field {sorted(unknown)[0]!r} (fields: low, high, log, "
                          "step, choices)")
    if "choices" in spec:
        choices = spec["choices"]
        if set(spec) != {"choices"} or not isinstance(choices, list) or not choices:
            raise ConfigError(f"{where}: space.{key}.choices must be a non-empty list and stand alone")
        return Param(key, choices=tuple(choices))
    if "low" not in spec or "high" not in spec:
        raise ConfigError(f"{where}: space.{key} needs low and high (or choices)")
    low, high = spec["low"], spec["high"]
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in (low, high)):
        raise ConfigError(f"{where}: space.{key}: low and high must be finite numbers, got {low!r} and {high!r}")
    if not low < high:
        raise ConfigError(f"{where}: space.{key}: low ({low}) must be below high ({high})")
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise ConfigError(f"{where}: space.{key}.log must be true or false, got {log!r}")
    if log and low <= 0:
        raise ConfigError(f"{where}: space.{key}: a log-uniform range needs low > 0, got {low}")
    step = spec.get("step")
    if step is not None and log:
        raise ConfigError(f"{where}: space.{key}: step and log cannot be combined")
    return Param(key, low=low, high=high, log=log, step=step)


def load_space(path: str | Path) -> SearchSpace:
    """The search space of ``path`` (module docstring), validated."""
    path = Path(path)
    where = str(path)
    try:
        doc = yaml.safe_load(path.read_text()) or {}
    except OSError as err:
        raise ConfigError(f"--space {path}: cannot be read ({err.strerror})") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{where}{line}: not valid YAML") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"{where}: a search space is a mapping with a 'space' section")
    unknown = set(doc) - set(SECTIONS)
    if unknown:
        raise ConfigError(f"{where}: unknown section {sorted(unknown)[0]!r} (sections: {', '.join(SECTIONS)})")
    space = doc.get("space")
    if not isinstance(space, dict) or not space:
        raise ConfigError(f"{where}: 'space' must map dotted config keys to distributions, and name at least one")
    fixed = doc.get("fixed") or {}
    if not isinstance(fixed, dict):
        raise ConfigError(f"{where}: 'fixed' must map dotted config keys to values")
    proxy = doc.get("proxy") or {}
    if not isinstance(proxy, dict):
        raise ConfigError(f"{where}: 'proxy' must map dotted config keys to values")
    for a, b, other in ((fixed, space, "searched and fixed"), (proxy, space, "searched and in proxy"),
                        (proxy, fixed, "fixed and in proxy")):
        both = set(a) & set(b)
        if both:
            raise ConfigError(f"{where}: {sorted(both)[0]} is both {other}")
    for key in proxy:
        if not str(key).startswith(("data.", "trainer.")):
            raise ConfigError(f"{where}: proxy key {key}: only data.* and trainer.* keys shape the proxy "
                              "evaluation (a model key would change what is trained)")
    for name in ("sampler", "pruner"):
        obj = doc.get(name)
        if obj is not None and not (isinstance(obj, dict) and "class_path" in obj
                                    and set(obj) <= {"class_path", "init_args"}):
            raise ConfigError(f"{where}: '{name}' must be {{class_path: optuna...., init_args: {{...}}}}")
    for name in ("objectives", "constraints"):
        if doc.get(name) is not None and not isinstance(doc[name], list):
            raise ConfigError(f"{where}: '{name}' must be a list of strings such as 'forget/prob:min'")
    params = tuple(parse_param(str(k), v, where) for k, v in space.items())
    return SearchSpace(params, dict(fixed), doc.get("objectives"), doc.get("constraints"), doc.get("sampler"),
                       doc.get("pruner"), where, dict(proxy))


def build_object(spec: dict, where: str):
    """An Optuna sampler or pruner from ``{class_path, init_args}`` (a short name is looked up in
    ``optuna.samplers`` / ``optuna.pruners``)."""
    import importlib

    import optuna

    path = str(spec["class_path"])
    module, _, name = path.rpartition(".")
    candidates = [importlib.import_module(module)] if module else [optuna.samplers, optuna.pruners]
    cls = next((getattr(m, name) for m in candidates if hasattr(m, name)), None)
    if not isinstance(cls, type):
        raise ConfigError(f"{where}: class_path {path!r} is not an Optuna sampler or pruner")
    try:
        return cls(**(spec.get("init_args") or {}))
    except TypeError as err:
        raise ConfigError(f"{where}: {name}: {err}") from None
