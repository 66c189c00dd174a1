"""The trials of a sweep: an Optuna study in a storage, each trial an ordinary run of the pipeline's method stage.

``run_sweep`` builds the pipeline's runner (its recipe, setting configs and run folder: the learned model of the
pipeline's earlier stages is reused, or trained once), opens or continues the study, and asks for trials until the
study holds ``n_trials`` ended ones (complete or pruned; other workers' trials count too):

- a trial's values are the sampled keys, given to the method's stage as command-line values (above the recipe and
  the configs), with the setting's proxy evaluation (teacher-forced only, every epoch) and
  :class:`~lit_unlearn.sweep.callback.TrialReport` in its callbacks;
- it runs as ``<sweep>/trials/t<NNNN>`` (config.yaml, metrics.json, adapter/, checkpoints);
- it ends COMPLETE with the objectives read from its evaluation after fit and its constraint violations recorded
  for the sampler; PRUNED when the pruner stopped it, when the collapse guard tripped or its weights went
  non-finite (its ``status`` attribute says which); FAIL when it raised, and then the sweep stops with that error;
- a trial whose worker died (killed, machine lost) is found RUNNING with a dead process id on this host: it is marked
  FAIL and queued again with the same values and run folder, which resumes from its last checkpoint. Across hosts,
  ``--heartbeat`` lets an RDB storage do the same.

After the last trial the frontier's points get the full evaluation (generation, MIA: the setting's evaluation with
no proxy) of their saved config and last checkpoint, and :mod:`lit_unlearn.sweep.report` writes the tables, plot,
``sweep_summary.json`` and ``best.yaml``.
"""

from __future__ import annotations

import json
import math
import os
import socket
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from lit_unlearn.config_files import config_root
from lit_unlearn.core.errors import ConfigError, LitUnlearnError
from lit_unlearn.pipelines.runner import Stage, config_value
from lit_unlearn.runs import RunDirectory
from lit_unlearn.stages import fit_action
from lit_unlearn.sweep.callback import PRUNED_AT
from lit_unlearn.sweep.objectives import (
    Constraint,
    Objective,
    feasible,
    metric_value,
    objective_values,
    parse_constraint,
    parse_objective,
    pareto_front,
    violations,
)
from lit_unlearn.sweep.space import SearchSpace, build_object, load_space

#: user attributes of a trial
RUN_DIR, WORKER, STATUS, METRICS, VIOLATIONS, TIMES, RETRY_OF = (
    "run_dir", "worker", "status", "metrics", "constraints", "seconds", "retry_of")


def open_storage(url: str, heartbeat: int | None = None):
    """An Optuna storage for ``url``: ``journal:///<file>`` (a journal file, for workers on one host or a shared file
    system), ``sqlite:///<file>``, or any SQLAlchemy URL (``postgresql://user@host/db`` for a cluster)."""
    import optuna

    if url.startswith("journal://"):
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        path = url[len("journal://"):]
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(path))
    if "://" not in url:
        raise ConfigError(f"--storage {url!r}: give a URL (sqlite:///<file>, journal:///<file>, postgresql://...)")
    kwargs: dict[str, Any] = {}
    if url.startswith("sqlite:///"):
        Path(url[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
        kwargs["engine_kwargs"] = {"connect_args": {"timeout": 60}}  # several local workers wait, not fail
    if heartbeat:
        from optuna.storages import RetryFailedTrialCallback

        kwargs.update(heartbeat_interval=heartbeat, grace_period=3 * heartbeat,
                      failed_trial_callback=RetryFailedTrialCallback(max_retry=2, inherit_intermediate_values=False))
    try:
        return optuna.storages.RDBStorage(url, **kwargs)
    except Exception as err:  # a wrong driver or server: one line naming the flag
        raise ConfigError(f"--storage {url}: cannot be opened ({type(err).__name__}: {str(err).splitlines()[0]})") \
            from None


def find_space(benchmark: str, method: str) -> Path:
    """The search space of ``method``: ``configs/search/<benchmark>/<method>.yaml``, else
    ``configs/search/<method>.yaml``."""
    root = config_root() / "search"
    for path in (root / benchmark / f"{method}.yaml", root / f"{method}.yaml"):
        if path.is_file():
            return path
    have = sorted({p.stem for p in root.rglob("*.yaml")}) if root.is_dir() else []
    raise ConfigError(f"--method {method}: no search space configs/search/{benchmark}/{method}.yaml or "
                      f"configs/search/{method}.yaml (shipped: {', '.join(have) or 'none'}); give one with --space")


@dataclass
class Plan:
    """Everything fixed for the whole sweep."""

    name: str
    method: str
    directory: Path
    storage: str
    space: SearchSpace
    objectives: list[Objective]
    constraints: list[Constraint]
    axes: tuple[str, str]
    n_trials: int
    proxy: dict
    reference: dict  # the reference stage's evaluation after fit
    seed: int = 0
    timeout_s: float | None = None

    @property
    def multi(self) -> bool:
        return len(self.objectives) > 1

    def describe(self) -> dict:
        """What the study was made for (stored with it: a rerun with other objectives or space is refused)."""
        return {"method": self.method, "objectives": [str(o) for o in self.objectives],
                "constraints": [str(c) for c in self.constraints],
                "space": {p.key: p.describe() for p in self.space.params},
                **({"proxy": self.space.proxy} if self.space.proxy else {})}


def resolve_goals(setting, space: SearchSpace, objectives: list[str] | None,
                  constraints: list[str] | None) -> tuple[list[Objective], list[Constraint]]:
    """Objectives and constraints: the flags, else the space file's, else the setting's."""
    obj_text = objectives or space.objectives or list(setting.objectives)
    con_text = constraints if constraints is not None else (
        space.constraints if space.constraints is not None else list(setting.constraints))
    where = "--objective" if objectives else f"{space.source}: objectives" if space.objectives else "--objective"
    objs = [parse_objective(t, where) for t in obj_text]
    cons = [parse_constraint(t, "--constraint" if constraints is not None else f"{space.source}: constraints")
            for t in con_text]
    if len({o.metric for o in objs}) != len(objs):
        raise ConfigError("--objective: each metric once")
    return objs, cons


def make_study(plan: Plan, heartbeat: int | None = None):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    where = plan.space.source
    if plan.space.sampler:
        sampler = build_object(plan.space.sampler, f"{where}: sampler")
    else:  # TPE (multi-objective TPE too): NSGA-II's generations of 50 do not fit a search of tens of trials; the
        # constraints reach it through each trial's set_constraint
        sampler = optuna.samplers.TPESampler(seed=plan.seed, n_startup_trials=min(10, max(3, plan.n_trials // 3)),
                                             multivariate=True)
    pruner = build_object(pruner_spec(plan), f"{where}: pruner")
    storage = open_storage(plan.storage, heartbeat)
    directions = [o.direction for o in plan.objectives]
    try:
        study = optuna.create_study(storage=storage, sampler=sampler, pruner=pruner, study_name=plan.name,
                                    directions=directions, load_if_exists=True)
    except ValueError as err:
        raise ConfigError(f"--storage {plan.storage}: study {plan.name!r}: {err}") from None
    made_for = study.user_attrs.get("plan")
    if made_for is None:
        study.set_user_attr("plan", plan.describe())
        study.set_user_attr("pruner", pruner_spec(plan))  # what its trials were pruned by (a record, not checked)
    elif made_for != plan.describe():
        diff = next(k for k in plan.describe() if plan.describe()[k] != made_for.get(k))
        raise ConfigError(f"--storage {plan.storage}: study {plan.name!r} was made with other {diff} "
                          f"({made_for.get(diff)}); give another --name to start a new study")
    return study


#: the default pruner, on the per-epoch proxy value (a multi-objective study is not pruned): a trial stops at an epoch
#: after its first when its value is worse than the median of the earlier trials' at that epoch, once 3 trials have
#: ended (Optuna prunes from the step that reaches n_warmup_steps). Successive halving from epoch 1 (reduction 3) was
#: the first default: on the random birthdays it stopped 4 of 12 GradDiff trials after one epoch (3 of them at forget
#: accuracy 1.000, before anything had moved) and 2 more at epoch 3, leaving 3 complete (docs/sweep.md)
DEFAULT_PRUNER = {"class_path": "optuna.pruners.MedianPruner", "init_args": {"n_startup_trials": 3,
                                                                               "n_warmup_steps": 2}}


def pruner_spec(plan: Plan) -> dict:
    """The pruner as ``{class_path, init_args}``: the trial's callback builds the same one wherever it runs (the
    storage keeps the study, not its pruner)."""
    return plan.space.pruner or DEFAULT_PRUNER


def _alive(worker: dict | None) -> bool:
    from lit_unlearn.runs import _is_stale

    return bool(worker) and not _is_stale(worker)


def recover(study) -> list[int]:
    """Trials of this host whose worker process is gone: marked FAIL and queued again (same values, same run
    folder, so the run resumes from its last checkpoint). Returns their numbers."""
    from optuna.trial import TrialState

    done = {t.user_attrs.get(RETRY_OF) for t in study.get_trials(deepcopy=False)}
    lost = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = t.user_attrs.get(WORKER)
        if worker and worker.get("host") == socket.gethostname() and not _alive(worker):
            study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
            lost.append(t.number)
    for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
        if t.user_attrs.get(STATUS) in ("lost", "interrupted") or t.number in lost:
            if t.number not in done and t.params:
                study.enqueue_trial(t.params, user_attrs={RETRY_OF: t.number, RUN_DIR: t.user_attrs.get(RUN_DIR)})
                print(f"[lit_unlearn] sweep: trial {t.number} did not end (its worker is gone); queued again with "
                      f"the same values, resuming in {t.user_attrs.get(RUN_DIR)}", file=sys.stderr)
    return lost


def ended(study) -> list:
    from optuna.trial import TrialState

    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))


def trial_overrides(plan: Plan, number: int, params: dict) -> dict:
    """The command-line values of one trial: the proxy evaluation, the space's fixed keys, the sampled keys and the
    reporting callback."""
    report = {"class_path": "lit_unlearn.sweep.callback.TrialReport",
              "init_args": {"storage": plan.storage, "study": plan.name, "trial": number,
                            "metric": None if plan.multi else plan.objectives[0].metric,
                            "minimize": plan.objectives[0].direction == "minimize",
                            "constraints": [str(c) for c in plan.constraints], "reference": plan.reference,
                            "pruner": pruner_spec(plan)["class_path"],
                            "pruner_args": pruner_spec(plan).get("init_args") or {}}}
    return {**plan.proxy, **plan.space.fixed, **params, "trainer.callbacks": [report]}


def read_outcome(plan: Plan, record: dict, pruned_at: int | None) -> dict:
    """State, objective values, constraint violations and timings of a trial from its ``metrics.json``."""
    metrics = record["metrics"]
    after = metrics.get("after") or {}
    status = record.get("status", "finished")
    keep = {o.metric for o in plan.objectives} | {c.metric for c in plan.constraints} | set(plan.axes)
    values = {m: metric_value(after, m) for m in sorted(keep)}
    wall = record.get("wall_time_s", {})
    eval_s = sum(v for entry in metrics.get("history", []) for k, v in entry.items() if k.endswith("/time_s"))
    eval_s += wall.get("eval_after", 0.0)
    out = {STATUS: status, METRICS: values, VIOLATIONS: violations(after, plan.constraints, plan.reference),
           TIMES: {"fit": wall.get("fit"), "eval": round(eval_s, 2)}}
    if status != "finished":
        events = metrics.get("collapse_events") or []
        if events:
            out["trip"] = {"step": events[-1]["step"], "reason": events[-1]["reason"]}
            # what the collapsed model scored when the guard tripped (the evaluation after fit is of the restored one)
            tripped: dict = {}
            for name, value in (events[-1].get("evaluation") or {}).items():
                split, _, key = name.removeprefix("val/").partition("/")
                tripped.setdefault(split, {})[key] = value
            if tripped:
                out[METRICS] = {m: metric_value(tripped, m) for m in sorted(keep)}
        out["state"] = "PRUNED"
    elif pruned_at is not None:
        out.update(state="PRUNED", **{STATUS: f"pruned at epoch {pruned_at}"})
    else:
        objs = objective_values(after, plan.objectives)
        out.update(state="COMPLETE" if objs is not None else "FAIL", values=objs)
        if objs is None:
            out[STATUS] = "an objective is missing from its evaluation"
    return out


def run_trial(plan: Plan, runner, template: Stage, study) -> Any:
    """Ask for one trial, run it, tell the study how it ended; returns the frozen trial."""
    from optuna.trial import TrialState

    trial = study.ask()
    params = plan.space.sample(trial)
    run_name = trial.user_attrs.get(RUN_DIR) or f"t{trial.number:04d}"
    trial.set_user_attr(RUN_DIR, run_name)
    trial.set_user_attr(WORKER, {"host": socket.gethostname(), "pid": os.getpid()})
    rel = plan.directory.relative_to(runner.out)
    stage = replace(template, name=str(rel / "trials" / run_name))
    run_dir = runner.out / stage.name
    overrides = trial_overrides(plan, trial.number, params)
    if fit_action(run_dir) == "run" and RunDirectory(run_dir).existing_outputs():
        overrides["overwrite"] = True  # a killed start left outputs but no checkpoint: start it over
    runner.flags[stage.name] = overrides
    t0 = time.time()
    try:
        runner.run_one(stage)
    except SystemExit as stop:  # a signal (130 / 143) or another exit code of the run: resumable, so re-queued
        trial.set_user_attr(STATUS, "interrupted")
        study.tell(trial, state=TrialState.FAIL)
        recover(study)
        raise
    except BaseException as err:
        trial.set_user_attr(STATUS, f"error: {err}"[:300])
        study.tell(trial, state=TrialState.FAIL)
        raise
    pruned_at = study._storage.get_trial(trial._trial_id).user_attrs.get(PRUNED_AT)
    outcome = read_outcome(plan, runner.records[stage.name], pruned_at)
    for key in (STATUS, METRICS, VIOLATIONS, TIMES, "trip"):
        if key in outcome:
            trial.set_user_attr(key, outcome[key])
    trial.set_user_attr("wall_s", round(time.time() - t0, 1))
    state = getattr(TrialState, outcome["state"])
    if state != TrialState.FAIL:
        for constraint, violation in zip(plan.constraints, outcome[VIOLATIONS]):
            trial.set_constraint(str(constraint), violation)
    if state == TrialState.COMPLETE:
        study.tell(trial, outcome["values"] if plan.multi else outcome["values"][0])
    else:
        study.tell(trial, state=state)
    return study._storage.get_trial(trial._trial_id)


def progress(plan: Plan, study, trial, t_start: float, done_here: int) -> str:
    """``trial k of n`` with its outcome, the best feasible value so far and an ETA from this worker's pace."""
    from lit_unlearn.sweep.report import best_trial, fmt

    n_ended = len(ended(study))
    values = ", ".join(f"{m} {fmt(v)}" for m, v in (trial.user_attrs.get(METRICS) or {}).items())
    state = trial.state.name.lower()
    if trial.state.name == "COMPLETE" and plan.constraints:
        state += ", feasible" if feasible(trial.user_attrs.get(VIOLATIONS, [])) else ", infeasible"
    best = best_trial(plan, ended(study))
    best_text = (f"trial {best.number} ({', '.join(fmt(v) for v in best.values)})" if best is not None
                 else "none feasible yet")
    pace = (time.time() - t_start) / max(1, done_here)
    left = max(0, plan.n_trials - n_ended)
    return (f"[lit_unlearn] sweep {plan.name}: trial {trial.number} ended ({n_ended} of {plan.n_trials}): {state}; "
            f"{values} | best so far: {best_text} | {pace / 60:.1f} min/trial, ETA {left * pace / 60:.0f} min")


def full_evaluation(plan: Plan, runner, template: Stage, trial) -> dict | None:
    """The setting's full evaluation (no proxy: generation, MIA) of one trial's saved config and last checkpoint,
    in ``<trial>/full``; returns its metrics (reused when it already ran)."""
    run_dir = runner.out / str(plan.directory.relative_to(runner.out)) / "trials" / trial.user_attrs[RUN_DIR]
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    if not ckpt.is_file():
        return None
    docs = runner.docs(template)
    revert = {}
    for key in [*plan.proxy, "trainer.callbacks"]:
        found, value = config_value(docs, key)
        revert[key] = value if found else None
    revert = {k: v for k, v in revert.items() if k.startswith(("data.", "trainer.callbacks"))}
    stage = Stage(str(run_dir.relative_to(runner.out) / "full"), (str(run_dir / "config.yaml"),),
                  {**revert, "ckpt_path": str(ckpt)}, "eval", common=False)
    runner.run_one(stage)
    return runner.records[stage.name]["metrics"]["eval"]


def run_sweep(setting, method: str, n_trials: int = 12, mini: int | None = None, out: str | Path | None = None,
              space_path: str | Path | None = None, objectives: list[str] | None = None,
              constraints: list[str] | None = None, storage: str | None = None, name: str | None = None,
              model: str | None = None, seed: int = 0, extra: dict | None = None, timeout_min: float | None = None,
              final: bool = True, heartbeat: int | None = None, report: bool = True, attack: str = "none",
              processes: bool = False) -> dict:
    """Run (or continue) the sweep of ``method`` on ``setting`` (module docstring); returns the summary."""
    if n_trials < 1:
        raise ConfigError(f"--n-trials must be >= 1, got {n_trials}")
    space = load_space(space_path or find_space(setting.benchmark, method))
    objs, cons = resolve_goals(setting, space, objectives, constraints)
    out = out or setting.out.format(mini="mini" if mini else "run")
    runner = setting.runner(out, mini, model, seed, extra or {})
    stages = setting.stages([method])
    for stage in stages:
        runner.config_paths(stage)  # every config found before anything runs
    runner.processes = processes  # each trial a process of its own (a multi-GPU DDP trial)
    runner.run(stages[:-1])  # the learned model (and the reference rows): reused, or trained once
    pre, template = runner.with_prerequisite(stages[-1])
    if pre is not None:
        runner.run_one(pre)
    if setting.reference not in runner.records:
        raise ConfigError(f"the setting's reference stage {setting.reference!r} did not run")
    name = name or method
    directory = runner.out / "sweeps" / name
    axes = setting.axes or (objs[0].metric, cons[0].metric if cons else objs[1].metric if len(objs) > 1 else
                            objs[0].metric)
    learned = runner.records[setting.reference]["metrics"]["after"]
    reference = {}
    for metric in {c.metric for c in cons} | set(axes) | {o.metric for o in objs}:
        value = metric_value(learned, metric)
        if value is not None:
            split, _, key = metric.partition("/")
            reference.setdefault(split, {})[key] = value
    plan = Plan(name, method, directory, storage or f"sqlite:///{directory / 'study.db'}", space, objs, cons, axes,
                n_trials, {**setting.proxy, **space.proxy}, reference, seed,
                timeout_min * 60 if timeout_min else None)
    directory.mkdir(parents=True, exist_ok=True)
    study = make_study(plan, heartbeat)
    recover(study)
    print(f"[lit_unlearn] sweep {name}: {method} on {setting.benchmark}, {len(ended(study))} of {n_trials} trials "
          f"ended; objectives {', '.join(map(str, objs))}" + (f"; subject to {', '.join(map(str, cons))}" if cons
                                                                 else "") + f"; study {plan.storage}", file=sys.stderr)
    t_start, done_here = time.time(), 0
    while len(ended(study)) < n_trials:
        if plan.timeout_s is not None and time.time() - t_start > plan.timeout_s:
            print(f"[lit_unlearn] sweep {name}: --timeout-min {timeout_min} reached; rerun the command to continue",
                  file=sys.stderr)
            break
        trial = run_trial(plan, runner, template, study)
        done_here += 1
        print(progress(plan, study, trial, t_start, done_here), file=sys.stderr)
    from lit_unlearn.sweep import report as reporting

    trials = ended(study)
    frontier = reporting.frontier(plan, trials)
    full = {}
    if final and len(trials) >= n_trials:
        for t in frontier:
            try:
                full[t.number] = full_evaluation(plan, runner, template, t)
            except LitUnlearnError as err:
                print(f"[lit_unlearn] sweep {name}: the full evaluation of trial {t.number} failed: {err}",
                      file=sys.stderr)
    if attack != "none" and setting.attack is None:
        raise ConfigError(f"--attack {attack}: the {setting.benchmark} setting has no attack")
    if attack != "none" and final and len(trials) >= n_trials:
        best = reporting.best_trial(plan, trials)
        targets = frontier if attack == "frontier" else [best] if best is not None else []
        for t in targets:
            run_dir = directory / "trials" / t.user_attrs[RUN_DIR]
            values = setting.attack(runner, run_dir / "adapter", run_dir / "attack", mini, model, seed)
            full[t.number] = {**(full.get(t.number) or {}), "attack": values}
    summary = reporting.summarize(plan, study, frontier, full, runner, template, setting)
    if report:
        reporting.write_all(plan, summary, runner, template)
    return summary
