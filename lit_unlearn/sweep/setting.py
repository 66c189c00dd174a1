"""What a pipeline declares so that :mod:`lit_unlearn.sweep` can search a method on it (``SWEEP`` in the pipeline's
module): how to build its runner, its stages, which stage is the reference model, the default objectives, the cheap
proxy evaluation of a trial and the two metrics of the frontier plot."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class SweepSetting:
    #: the config folder of the benchmark (``method_configs`` and the search spaces of ``configs/search/``)
    benchmark: str
    #: ``(out, mini, model, seed, extra) -> Runner``: the pipeline's runner, with its recipe and setting configs
    runner: Callable[..., Any]
    #: ``methods -> stages``: the pipeline's stages; the last one is the method's, the template of every trial
    stages: Callable[[list[str]], list]
    #: the stage whose evaluation after fit is the reference (the learned model) of relative constraints
    reference: str
    #: default objectives and constraints (``lit_unlearn.sweep.objectives``)
    objectives: tuple[str, ...]
    constraints: tuple[str, ...] = ()
    #: dotted keys -> values every trial runs with: its cheap evaluation (teacher-forced only), evaluated every
    #: epoch so the pruner sees a curve
    proxy: Mapping[str, Any] = field(default_factory=dict)
    #: the frontier plot's axes: (forget metric, utility metric); default: the first objective and the first
    #: constraint's metric (or the second objective)
    axes: tuple[str, str] | None = None
    #: the pipeline's default run folder (``{mini}``: "mini" with --mini, else "run")
    out: str = "checkpoints/run"
    #: an attack on an unlearned model, part of the full evaluation where the setting has one (the random
    #: birthdays' RTT): ``(runner, adapter_dir, out_dir, mini, model, seed) -> {name: value}``; None: none
    attack: Callable[..., dict] | None = None
