"""What a sweep optimizes, read from a trial's evaluation: objectives and constraints on ``split/key`` metrics.

A metric is ``<split>/<key>`` of a run's evaluation (``forget_mcq/mcq_acc``, ``tofu/forget_quality``; an
aggregate's name stands in for the split). The *reference* is the model the unlearning starts from (the learned
model: the pipeline's learn stage), read from its own evaluation.

- objective: ``metric:min`` or ``metric:max``. One objective is a constrained single-objective study (Optuna's TPE
  with the constraints, pruned per epoch); several are a multi-objective study (NSGA-II; its result is the Pareto set).
- constraint: ``metric >= bound`` or ``metric <= bound``, the bound a number, ``ref`` (the reference's value of the
  metric), ``0.9 * ref`` or ``ref - 0.03`` / ``ref + 0.03``. A trial is feasible when every constraint holds; Optuna
  reads each as ``violation = bound - value`` (for ``>=``; feasible when <= 0).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from lit_unlearn.core.errors import ConfigError

_METRIC = r"[A-Za-z0-9_.\-]+/[A-Za-z0-9_.\-]+"
_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"


@dataclass(frozen=True)
class Objective:
    metric: str
    direction: str  # "minimize" | "maximize"

    @property
    def sign(self) -> float:
        """+1 when smaller is better (so ``sign * value`` is a loss)."""
        return 1.0 if self.direction == "minimize" else -1.0

    def __str__(self) -> str:
        return f"{self.metric}:{'min' if self.direction == 'minimize' else 'max'}"


@dataclass(frozen=True)
class Constraint:
    metric: str
    op: str  # ">=" | "<="
    scale: float = 0.0  # bound = scale * ref + offset
    offset: float = 0.0

    @property
    def relative(self) -> bool:
        return self.scale != 0.0

    def bound(self, reference: dict | None) -> float:
        if not self.relative:
            return self.offset
        ref = metric_value(reference or {}, self.metric)
        if ref is None:
            raise ConfigError(f"constraint {self}: the reference model's evaluation has no {self.metric}")
        return self.scale * ref + self.offset

    def violation(self, metrics: dict, reference: dict | None) -> float:
        """How far ``metrics`` is from satisfying the constraint (<= 0: satisfied; a missing or non-finite value:
        +inf)."""
        value = metric_value(metrics, self.metric)
        if value is None or not math.isfinite(value):
            return math.inf
        bound = self.bound(reference)
        return bound - value if self.op == ">=" else value - bound

    def __str__(self) -> str:
        if not self.relative:
            rhs = f"{self.offset:g}"
        else:
            rhs = ("ref" if self.scale == 1 else f"{self.scale:g} * ref") + (
                f" {'+' if self.offset > 0 else '-'} {abs(self.offset):g}" if self.offset else "")
        return f"{self.metric} {self.op} {rhs}"


def parse_objective(text: str, where: str = "--objective") -> Objective:
    m = re.fullmatch(rf"\s*({_METRIC})\s*:\s*(min|max|minimize|maximize)\s*", str(text))
    if not m:
        raise ConfigError(f"{where} {text!r}: write split/key:min or split/key:max (e.g. forget_mcq/mcq_acc:min)")
    return Objective(m.group(1), "minimize" if m.group(2).startswith("min") else "maximize")


def parse_constraint(text: str, where: str = "--constraint") -> Constraint:
    text = str(text)
    m = re.fullmatch(rf"\s*({_METRIC})\s*(>=|<=)\s*(.+?)\s*", text)
    if not m:
        raise ConfigError(f"{where} {text!r}: write split/key >= bound or split/key <= bound (bound: a number, ref, "
                          "0.9 * ref, ref - 0.03)")
    metric, op, rhs = m.groups()
    rhs = rhs.replace(" ", "")
    if re.fullmatch(_NUMBER, rhs):
        return Constraint(metric, op, 0.0, float(rhs))
    relative = re.fullmatch(rf"(?:({_NUMBER})\*)?ref([-+]{_NUMBER})?", rhs)
    if relative and float(relative.group(1) or 1.0) != 0.0:
        return Constraint(metric, op, float(relative.group(1) or 1.0), float(relative.group(2) or 0.0))
    raise ConfigError(f"{where} {text!r}: the bound {rhs!r} is not a number, ref, <number> * ref or ref +- <number>")


def metric_value(metrics: dict, metric: str) -> float | None:
    """``metrics[split][key]`` for ``metric`` = ``split/key`` (None when absent)."""
    split, _, key = metric.partition("/")
    value = (metrics or {}).get(split, {}).get(key)
    return None if value is None else float(value)


def objective_values(metrics: dict, objectives: list[Objective]) -> list[float] | None:
    """The objectives' values in ``metrics`` (None when one is missing or not finite)."""
    values = [metric_value(metrics, o.metric) for o in objectives]
    return None if any(v is None or not math.isfinite(v) for v in values) else values


def violations(metrics: dict, constraints: list[Constraint], reference: dict | None) -> list[float]:
    return [c.violation(metrics, reference) for c in constraints]


def feasible(violations_: list[float]) -> bool:
    return all(v <= 0 for v in violations_)


def pareto_front(points: list[tuple[int, list[float]]], objectives: list[Objective]) -> list[int]:
    """The ids of the points no other point dominates (at least as good in every objective, better in one); of
    points with the same values only the first is kept (five trials that changed nothing are one point)."""
    losses: dict[int, list[float]] = {}
    for i, values in points:
        loss = [o.sign * v for o, v in zip(objectives, values)]
        if loss not in losses.values():
            losses[i] = loss

    def dominates(a: list[float], b: list[float]) -> bool:
        return all(x <= y for x, y in zip(a, b)) and any(x < y for x, y in zip(a, b))

    return [i for i, li in losses.items() if not any(dominates(lj, li) for j, lj in losses.items() if j != i)]
