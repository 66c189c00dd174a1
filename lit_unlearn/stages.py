"""A ``train.py fit`` stage in its own run directory ``<out>/<stage>``, reused when it already ended and resumed from
its last checkpoint when it was stopped: the rule (:func:`fit_action`) of the pipeline runner
(``lit_unlearn.pipelines.runner``), whose stages include the RTT sweep's sub-runs (``lit_unlearn.rtt``)."""

from __future__ import annotations

import json
from pathlib import Path


#: how a run that ended recorded its end in metrics.json (a run without one was interrupted or killed)
ENDED = ("finished", "collapsed", "diverged")


def stage_status(run_dir: Path) -> str | None:
    """The ``status`` of the run in ``run_dir`` (None: no metrics.json, i.e. never ran or was killed)."""
    path = Path(run_dir) / "metrics.json"
    return json.loads(path.read_text()).get("status", "finished") if path.is_file() else None


def fit_action(run_dir: Path) -> str:
    """What a ``fit`` stage in ``run_dir`` needs: ``reuse`` (it ended), ``resume`` (stopped by a signal, or killed
    after a checkpoint) or ``run``."""
    status = stage_status(run_dir)
    if status in ENDED:
        return "reuse"
    if status == "interrupted" or (status is None and (Path(run_dir) / "checkpoints" / "last.ckpt").is_file()):
        return "resume"
    return "run"
