"""The Lightning callback a sweep's trial runs with: it reports the proxy objective after every evaluation to the
trial in the study's storage and stops the run when the pruner says so.

A trial is an ordinary ``train.py fit`` (in the sweep's process, or a process of its own such as a DDP job); the sweep
adds this callback to its ``trainer.callbacks`` with the storage URL, the study and the trial's number, so the
callback finds the trial wherever the run executes. Only rank 0 talks to the storage; the decision to stop is shared
by every rank. Outside ``fit`` (an evaluation of the saved config) it does nothing.
"""

from __future__ import annotations

import math

import lightning as L

from lit_unlearn.sweep.objectives import Constraint, metric_value, parse_constraint

#: the trial's user attribute that records a pruned run's last reported epoch
PRUNED_AT = "pruned_at_epoch"


class TrialReport(L.Callback):
    def __init__(self, storage: str, study: str, trial: int, metric: str | None = None, minimize: bool = True,
                 constraints: list[str] | None = None, reference: dict | None = None, pruner: str | None = None,
                 pruner_args: dict | None = None):
        """
        Args:
            storage: the study's Optuna storage URL (``sqlite:///...``, ``journal:///...``, ``postgresql://...``).
            study: the study's name.
            trial: the trial's number in the study.
            metric: the ``split/key`` reported after every evaluation (a single-objective study; None: report
                nothing, e.g. a multi-objective study, which Optuna does not prune).
            minimize: whether smaller values of ``metric`` are better.
            constraints: a reported value whose epoch breaks one of these (``lit_unlearn.sweep.objectives``) is
                reported as the worst value, so the pruner ranks infeasible epochs last.
            reference: the reference model's evaluation (``{split: {key: value}}``) for relative constraints.
            pruner: the class path of the study's pruner (None: Optuna's default, the median pruner); the storage
                keeps the study, not its pruner, so the sweep says which.
            pruner_args: its arguments.
        """
        self.storage, self.study_name, self.number = storage, study, int(trial)
        self.metric, self.minimize = metric, minimize
        self.constraints: list[Constraint] = [parse_constraint(c) for c in constraints or []]
        self.reference, self.pruner = reference or {}, (
            {"class_path": pruner, "init_args": pruner_args or {}} if pruner else None)
        self._trial = None
        self.pruned_at: int | None = None

    def trial(self):
        """The trial, found in the storage once."""
        if self._trial is None:
            import optuna

            from lit_unlearn.sweep.study import open_storage

            from lit_unlearn.sweep.space import build_object

            pruner = build_object(self.pruner, "--trainer.callbacks: TrialReport.pruner") if self.pruner else None
            study = optuna.load_study(study_name=self.study_name, storage=open_storage(self.storage), pruner=pruner)
            frozen = next(t for t in study.get_trials(deepcopy=False) if t.number == self.number)
            self._trial = optuna.trial.Trial(study, frozen._trial_id)
        return self._trial

    def value(self, trainer) -> float | None:
        """This evaluation's objective value: the metric, or the worst value when a constraint is broken."""
        metrics: dict = {}
        for name, v in trainer.callback_metrics.items():
            if name.startswith("val/"):
                split, _, key = name[4:].partition("/")
                metrics.setdefault(split, {})[key] = float(v)
        value = metric_value(metrics, self.metric)
        if value is None or not math.isfinite(value):
            return None
        if any(c.violation(metrics, self.reference) > 0 for c in self.constraints):
            return math.inf if self.minimize else -math.inf
        return value

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit" or self.metric is None:
            return
        stop = False
        if trainer.is_global_zero:
            value = self.value(trainer)
            if value is not None:
                trial, epoch = self.trial(), trainer.current_epoch + 1
                trial.report(value, epoch)
                if trial.should_prune() and epoch < (trainer.max_epochs or epoch + 1):
                    trial.set_user_attr(PRUNED_AT, epoch)
                    self.pruned_at, stop = epoch, True
        if trainer.world_size > 1:
            stop = trainer.strategy.reduce_boolean_decision(stop, all=False)
        if stop:
            if trainer.is_global_zero:
                print(f"[lit_unlearn] sweep: trial {self.number} pruned after epoch {trainer.current_epoch + 1}")
            trainer.should_stop = True
