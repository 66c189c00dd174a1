"""Search a method's hyperparameters on a pipeline setting for its best forget / utility trade-off (docs/sweep.md).

    python -m lit_unlearn.sweep relearning --mini 16 --method gd --n-trials 12
    python -m lit_unlearn.sweep tofu --mini 40 --method npo_gd --n-trials 12 --timeout-min 60
    python -m lit_unlearn.sweep tofu --mini 40 --method simnpo --objective forget/prob:min \\
        --objective tofu/model_utility_tf:max               # multi-objective: the Pareto set
    lit-unlearn sweep relearning --mini 16 --method rmu --storage postgresql://user@db/sweeps   # many workers

The pipeline's earlier stages (the learned model) run once in its run folder (``--out``, as ``lit-unlearn run``) and
are reused; the trials run in ``<out>/sweeps/<name>/trials/``, the study is stored in ``<out>/sweeps/<name>/study.db``
(``--storage``: any Optuna storage URL), and the same command continues it. The search space is
``configs/search/<method>.yaml`` (``--space`` another file); the objectives and constraints default to the
setting's. Any other ``--key value`` flag goes to every stage.
"""

from __future__ import annotations

import argparse
from importlib import import_module

from lit_unlearn.core.errors import ConfigError
from lit_unlearn.pipelines.runner import argv_values

#: the pipelines a sweep can search on: name -> module (its ``SWEEP``)
SETTINGS = {"tofu": "lit_unlearn.tofu", "relearning": "lit_unlearn.relearning",
            "classification": "lit_unlearn.classification"}


def setting_of(name: str):
    if name not in SETTINGS:
        raise ConfigError(f"sweep: no setting {name!r}; one of: {', '.join(SETTINGS)}")
    return import_module(SETTINGS[name]).SWEEP


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m lit_unlearn.sweep", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("setting", help=f"the pipeline: {', '.join(SETTINGS)}")
    p.add_argument("--method", required=True, help="the method config searched (as the pipeline's --methods)")
    p.add_argument("--n-trials", type=int, default=12, help="ended trials (complete or pruned) the study should hold")
    p.add_argument("--mini", type=int, default=None, help="the pipeline's CPU-sized setting of size N")
    p.add_argument("--out", default=None, help="the pipeline's run folder (default: as lit-unlearn run)")
    p.add_argument("--space", default=None, help="the search space YAML (default configs/search/<method>.yaml)")
    p.add_argument("--objective", action="append", default=None,
                   help="split/key:min|max; repeat for a multi-objective study (default: the setting's)")
    p.add_argument("--constraint", action="append", default=None,
                   help="split/key >= bound (a number, ref, 0.9 * ref, ref - 0.03); repeatable")
    p.add_argument("--no-constraints", action="store_true", help="drop the default constraints")
    p.add_argument("--storage", default=None, help="Optuna storage URL (default sqlite:///<sweep>/study.db; "
                   "journal:///<file> for workers on one host, postgresql://... for a cluster)")
    p.add_argument("--name", default=None, help="the study's name and folder (default: the method)")
    p.add_argument("--model", default=None, help="base model (default: the configs')")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout-min", type=float, default=None, help="start no new trial after this many minutes")
    p.add_argument("--heartbeat", type=int, default=None,
                   help="seconds between an RDB storage's heartbeats: trials of a lost worker on another host are "
                        "failed and retried after 3 heartbeats")
    p.add_argument("--no-final", action="store_true", help="skip the full evaluation of the frontier's points")
    p.add_argument("--processes", action="store_true",
                   help="run each stage as a process of its own (needed for a multi-GPU DDP trial: "
                        "--trainer.devices 4 --trainer.strategy ddp)")
    p.add_argument("--attack", choices=("none", "best", "frontier"), default="none",
                   help="run the setting's attack (random birthdays: RTT) on the best constrained point or on every "
                        "frontier point, after the full evaluation")
    return p


def main(argv: list[str] | None = None) -> dict:
    from lit_unlearn.sweep.study import run_sweep

    args, extra = parser().parse_known_args(argv)
    constraints = [] if args.no_constraints else args.constraint
    return run_sweep(setting_of(args.setting), args.method, args.n_trials, args.mini, args.out, args.space,
                     args.objective, constraints, args.storage, args.name, args.model, args.seed,
                     argv_values(extra), args.timeout_min, not args.no_final, args.heartbeat, attack=args.attack,
                     processes=args.processes)


if __name__ == "__main__":
    from lit_unlearn.__main__ import run_module

    run_module(main)
