"""``python -m lit_unlearn.sweep``: search a method's hyperparameters on a pipeline setting for its best forget /
utility trade-off with Optuna (docs/sweep.md). Submodules: :mod:`.space` (the YAML search space), :mod:`.objectives`
(objectives, constraints, the Pareto front), :mod:`.callback` (per-epoch reports and pruning inside a trial),
:mod:`.study` (the trials), :mod:`.report` (tables, plot, best config)."""

from lit_unlearn.sweep.setting import SweepSetting

__all__ = ["SweepSetting"]
