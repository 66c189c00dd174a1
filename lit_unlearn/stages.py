"""Running the stages of a multi-stage pipeline (``lit_unlearn.tofu``, ``lit_unlearn.relearning``, the RTT sweep):
each stage is ``train.py fit`` with a list of configs, in its own run directory ``<out>/<stage>``, reused when it
already ended and resumed from its last checkpoint when it was stopped."""

from __future__ import annotations

import json
from pathlib import Path

from lit_unlearn.cli import cli_main

#: how a run that ended recorded its end in metrics.json (a run without one was interrupted or killed)
ENDED = ("finished", "collapsed", "diverged")


def sets(config: Path, key: str) -> bool:
    """Whether the YAML file ``config`` sets the dotted ``key`` itself (e.g. ``model.init_args.lr``: a method with its
    own recipe, such as GRUN's LoReFT at 4e-3 for 40 epochs, which the pipelines' mini recipe for LoRA runs does not
    replace)."""
    import yaml

    node = yaml.safe_load(Path(config).read_text()) or {}
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def sets_lr(config: Path) -> bool:
    """Whether ``config`` sets ``model.init_args.lr`` itself (:func:`sets`)."""
    return sets(config, "model.init_args.lr")


def stage_status(run_dir: Path) -> str | None:
    """The ``status`` of the run in ``run_dir`` (None: no metrics.json, i.e. never ran or was killed)."""
    path = Path(run_dir) / "metrics.json"
    return json.loads(path.read_text()).get("status", "finished") if path.is_file() else None


def stage_args(configs: list[Path], out: Path, stage: str, extra: list[str]) -> list[str]:
    """``fit`` arguments of one stage: its configs, its run directory ``out/stage``, then ``extra``; a stage
    stopped by a signal or killed continues from its last checkpoint."""
    args = ["fit"]
    for config in configs:
        if not Path(config).is_file():
            raise SystemExit(f"lit_unlearn: no config {config}")
        args += ["--config", str(config)]
    args += ["--trainer.logger.init_args.save_dir", str(out.parent), "--trainer.logger.init_args.name", out.name,
             "--trainer.logger.init_args.version", stage, *extra]
    run_dir = out / stage
    status = stage_status(run_dir)
    if status == "interrupted" or (status is None and (run_dir / "checkpoints" / "last.ckpt").is_file()):
        args += ["--ckpt_path", "last"]
    return args


def run_stage(configs: list[Path], out: Path, stage: str, extra: list[str]) -> dict:
    """Run (or reuse, or resume) one stage in this process; returns its metrics.json. A run the collapse guard
    stopped (exit 3) counts as done: its restored adapter is the stage's result, and metrics.json says so."""
    run_dir = out / stage
    status = stage_status(run_dir)
    if status in ENDED:
        print(f"[lit_unlearn] reusing the {status} run {run_dir}")
        return json.loads((run_dir / "metrics.json").read_text())
    cli = cli_main(stage_args(configs, out, stage, extra))
    if cli.exit_code not in (0, 3):
        raise SystemExit(cli.exit_code)
    return json.loads((run_dir / "metrics.json").read_text())
