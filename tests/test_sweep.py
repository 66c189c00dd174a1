"""The search (issue 23): the YAML space and the objectives parsed and refused with one line, a sweep of a method on
the random-birthdays pipeline with a tiny model (killed and continued; constrained and multi-objective; pruning),
its outputs (the tables, the PNG, the best config that reruns), and two worker processes sharing one study."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO_ROOT
from lit_unlearn.core.errors import ConfigError
from test_relearning import write_random_bd
from test_tofu import tofu_mirror  # noqa: F401  (the fixture)


@pytest.fixture
def random_bd_mirror(tmp_path, monkeypatch):
    from lit_unlearn.data.catalog import MIRROR_ENV

    write_random_bd(tmp_path / "mirror" / "deeb_roger")
    monkeypatch.setenv(MIRROR_ENV, str(tmp_path / "mirror"))
    return tmp_path / "mirror"


def write_space(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


SPACE = """
space:
  model.init_args.lr: {low: 1.0e-3, high: 3.0e-2, log: true}
  model.init_args.retain_weight: {low: 0.1, high: 10.0, log: true}
  trainer.max_epochs: {low: 1, high: 2}
"""


# ---- parsing ---------------------------------------------------------------------------------------------------
def test_a_space_file_becomes_typed_distributions(tmp_path):
    import optuna

    from lit_unlearn.sweep.space import load_space

    space = load_space(write_space(tmp_path / "s.yaml", SPACE + "  model.init_args.retain: {choices: [nll, kl]}\n"
                                   "fixed: {model.init_args.beta: 0.5}\n"))
    kinds = {p.key: p.kind for p in space.params}
    assert kinds == {"model.init_args.lr": "float", "model.init_args.retain_weight": "float",
                     "trainer.max_epochs": "int", "model.init_args.retain": "categorical"}
    assert space.fixed == {"model.init_args.beta": 0.5}
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    values = space.sample(study.ask())
    assert 1e-3 <= values["model.init_args.lr"] <= 3e-2 and values["trainer.max_epochs"] in (1, 2)
    assert values["model.init_args.retain"] in ("nll", "kl")


@pytest.mark.parametrize("text, message", [
    ("space: {a.b: {low: 1, high: 1}}", r"s.yaml: space.a.b: low \(1\) must be below high \(1\)"),
    ("space: {a.b: {low: 0, high: 1, log: true}}", r"space.a.b: a log-uniform range needs low > 0"),
    ("space: {a.b: {lo: 0, high: 1}}", r"space.a.b has unknown field 'lo'"),
    ("space: {a.b: [1, 2]}", r"space.a.b must be a mapping"),
    ("spaces: {a.b: {low: 0, high: 1}}", r"unknown section 'spaces'"),
    ("space: {}", r"'space' must map dotted config keys"),
    ("space: {a.b: {choices: []}}", r"space.a.b.choices must be a non-empty list"),
    ("space: {a.b: {low: 0, high: 1}}\nfixed: {a.b: 2}", r"a.b is both searched and fixed"),
    ("space: {a.b: {low: 0, high: 1}}\nproxy: {trainer.x: 2}\nfixed: {trainer.x: 1}",
     r"trainer.x is both fixed and in"),
    ("space: {a.b: {low: 0, high: 1}}\nproxy: {model.init_args.lr: 1}", r"proxy key model.init_args.lr: only data"),
    ("space: {a.b: {low: 0, high: 1}}\nproxy: [1]", r"'proxy' must map dotted config keys"),
    ("space: [a", r"s.yaml line 1: not valid YAML"),
])
def test_a_bad_space_is_one_line_naming_file_and_key(tmp_path, text, message):
    from lit_unlearn.sweep.space import load_space

    with pytest.raises(ConfigError, match=message) as err:
        load_space(write_space(tmp_path / "s.yaml", text))
    assert "\n" not in str(err.value)


def test_objectives_and_constraints_parse_and_bad_ones_are_refused():
    from lit_unlearn.sweep.objectives import parse_constraint, parse_objective, pareto_front, Objective

    ref = {"retain": {"acc": 0.8}}
    assert parse_objective("forget/acc:min").direction == "minimize"
    assert parse_objective("tofu/forget_quality:max").sign == -1.0
    assert parse_constraint("retain/acc >= 0.9 * ref").bound(ref) == pytest.approx(0.72)
    assert parse_constraint("retain/acc >= ref - 0.03").bound(ref) == pytest.approx(0.77)
    assert parse_constraint("retain/acc >= 0.5").bound(ref) == 0.5
    c = parse_constraint("retain/acc >= 0.9*ref")
    assert c.violation({"retain": {"acc": 0.75}}, ref) == pytest.approx(-0.03)  # feasible: <= 0
    assert c.violation({"retain": {"acc": 0.70}}, ref) == pytest.approx(0.02)
    assert c.violation({}, ref) == float("inf")  # a missing metric is infeasible, not a pass
    assert parse_constraint("forget/acc <= 0.4").violation({"forget": {"acc": 0.5}}, ref) == pytest.approx(0.1)
    for bad in ("forget/acc", "forget:min", "acc:down"):
        with pytest.raises(ConfigError, match="--objective"):
            parse_objective(bad)
    for bad in ("retain/acc > 0.5", "retain/acc >= half", "retain/acc >= 0 * ref"):
        with pytest.raises(ConfigError, match="--constraint"):
            parse_constraint(bad)
    objs = [Objective("f", "minimize"), Objective("u", "maximize")]
    points = [(0, [0.5, 0.9]), (1, [0.3, 0.8]), (2, [0.6, 0.7]), (3, [0.3, 0.9])]
    assert sorted(pareto_front(points, objs)) == [3]  # 3 dominates every other point
    assert sorted(pareto_front(points[:3], objs)) == [0, 1]
    assert pareto_front([(4, [1.0, 1.0]), (5, [1.0, 1.0]), (6, [0.5, 0.9])], objs) == [4, 6]  # ties: the first


# ---- sweeps on the tiny random-birthdays pipeline ----------------------------------------------------------------
def sweep_args(out: Path, space: str, n: int, *more: str) -> list[str]:
    return ["relearning", "--method", "gd", "--mini", "2", "--out", str(out), "--space", space, "--n-trials", str(n),
            "--seed", "0", *more]


def test_a_constrained_sweep_runs_its_trials_and_writes_every_output(random_bd_mirror, mcq_model_dir, tmp_path,
                                                                     monkeypatch, capsys):
    import optuna

    from lit_unlearn.sweep.__main__ import main

    monkeypatch.chdir(tmp_path)
    out = tmp_path / "runs"
    space = write_space(tmp_path / "gd.yaml", SPACE)
    summary = main(sweep_args(out, space, 3, "--model", mcq_model_dir))
    sweep = out / "sweeps" / "gd"
    study = optuna.load_study(study_name="gd", storage=f"sqlite:///{sweep / 'study.db'}")
    ended = [t for t in study.trials if t.state.name in ("COMPLETE", "PRUNED")]
    assert len(ended) == 3 and len(summary["trials"]) == 3
    assert summary["objectives"] == ["forget_mcq/mcq_acc:min"]
    assert summary["constraints"] == ["retain_mcq/mcq_acc >= 0.9 * ref"]
    learned = json.loads((out / "learn" / "metrics.json").read_text())["metrics"]["after"]
    assert summary["reference"]["retain_mcq"]["mcq_acc"] == learned["retain_mcq"]["mcq_acc"]
    for row in summary["trials"]:
        run = sweep / "trials" / row["run_dir"]
        record = json.loads((run / "metrics.json").read_text())
        # an ordinary run directory, on the learned model, with the sampled values and the proxy evaluation
        assert (run / "config.yaml").is_file() and (run / "adapter").is_dir()
        config = record["config"]
        assert config["model"]["init_args"]["lr"] == pytest.approx(row["params"]["model.init_args.lr"])
        assert config["trainer"]["max_epochs"] == row["params"]["trainer.max_epochs"]
        assert config["trainer"]["check_val_every_n_epoch"] == 1
        assert config["model"]["init_args"]["init_adapter"] == str(out / "learn" / "adapter")
        if row["state"] == "COMPLETE":
            after = record["metrics"]["after"]
            assert row["metrics"]["forget_mcq/mcq_acc"] == after["forget_mcq"]["mcq_acc"]
            bound = 0.9 * learned["retain_mcq"]["mcq_acc"]
            assert row["feasible"] == (after["retain_mcq"]["mcq_acc"] >= bound)
            # per-epoch reports reached the study
            trial = study.trials[row["number"]]
            assert sorted(trial.intermediate_values) == list(range(1, row["params"]["trainer.max_epochs"] + 1))
    # outputs: the Markdown table, the summary, the plot, TensorBoard, and the best constrained config
    assert (sweep / "frontier.png").stat().st_size > 1000
    assert any((sweep / "tensorboard").glob("events.*"))
    text = (sweep / "trials.md").read_text()
    assert "| reference |" in text and text.count("\n| ") >= 5
    assert json.loads((sweep / "sweep_summary.json").read_text())["frontier"] == summary["frontier"]
    assert summary["frontier"] and all(isinstance(n, int) for n in summary["frontier"])
    best = summary["best"]
    if best is not None:
        assert best["feasible"] and best["number"] in [r["number"] for r in summary["trials"]]
        assert best["full_evaluation"] is not None
        feasible_values = [r["metrics"]["forget_mcq/mcq_acc"] for r in summary["trials"] if r["feasible"]]
        assert best["metrics"]["forget_mcq/mcq_acc"] == min(feasible_values)
        # the best config reruns as it is (train.py fit --config best.yaml) and reproduces the trial's numbers
        from lit_unlearn.cli import cli_main

        text = (sweep / "best.yaml").read_text()
        assert text.startswith("# python train.py fit --config") and "TrialReport" not in text
        cli = cli_main(["fit", "--config", str(sweep / "best.yaml"), "--trainer.check_val_every_n_epoch", "1"])
        assert cli.exit_code == 0
        rerun = json.loads((Path(cli.trainer.log_dir) / "metrics.json").read_text())["metrics"]["after"]
        assert rerun["forget_mcq"]["mcq_acc"] == pytest.approx(best["metrics"]["forget_mcq/mcq_acc"], abs=1e-6)
    # the frontier points got the full evaluation (here the same evaluators: MCQ is teacher-forced)
    for number in summary["frontier"]:
        row = next(r for r in summary["trials"] if r["number"] == number)
        full = json.loads((sweep / "trials" / row["run_dir"] / "full" / "eval_metrics.json").read_text())
        assert full["metrics"]["eval"]["forget_mcq"]["mcq_acc"] == pytest.approx(row["metrics"]["forget_mcq/mcq_acc"])
    # rerunning the same command runs nothing more
    capsys.readouterr()
    again = main(sweep_args(out, space, 3, "--model", mcq_model_dir))
    assert len(again["trials"]) == 3 and "trial 3" not in capsys.readouterr().err


def test_a_space_s_proxy_section_makes_the_trials_evaluation_cheaper_and_not_the_full_one(
        random_bd_mirror, mcq_model_dir, tmp_path, monkeypatch):
    """``proxy`` keys shape only the trials' evaluation: a seeded subset of the MCQ rows, every second epoch (so the
    pruner hears at epoch 2 only and a 3-epoch trial is evaluated once more after fit); the frontier's full evaluation
    and best.yaml have every row and the recipe's evaluation schedule."""
    import optuna

    from lit_unlearn.sweep.__main__ import main

    monkeypatch.chdir(tmp_path)
    out = tmp_path / "runs"
    space = write_space(tmp_path / "gd.yaml", "space:\n  model.init_args.lr: {low: 1.0e-3, high: 3.0e-2, log: true}\n"
                        "fixed: {trainer.max_epochs: 3}\n"
                        "proxy: {trainer.check_val_every_n_epoch: 2, data.init_args.max_rows: {forget_mcq: 2}}\n")
    summary = main(sweep_args(out, space, 1, "--model", mcq_model_dir, "--no-constraints"))
    row = summary["trials"][0]
    run = out / "sweeps" / "gd" / "trials" / row["run_dir"]
    record = json.loads((run / "metrics.json").read_text())
    assert record["config"]["trainer"]["check_val_every_n_epoch"] == 2
    assert [h["epoch"] for h in record["metrics"]["history"]] == [2]
    assert record["wall_time_s"]["eval_after"] > 0  # epoch 3 was not evaluated in the loop: it is, after fit
    study = optuna.load_study(study_name="gd", storage=f"sqlite:///{out / 'sweeps' / 'gd' / 'study.db'}")
    assert sorted(study.trials[0].intermediate_values) == [2]

    def n_rows(folder: Path, split: str) -> int:
        files = list(folder.rglob(f"{split}.*jsonl"))
        assert files, f"no rows of {split} under {folder}"
        return len(files[0].read_text().splitlines())

    learned = n_rows(out / "learn" / "rows" / "after", "forget_mcq")
    assert learned > 2
    assert n_rows(run / "rows" / "after", "forget_mcq") == 2
    assert n_rows(run / "rows" / "after", "retain_mcq") == n_rows(out / "learn" / "rows" / "after", "retain_mcq")
    assert n_rows(run / "full", "forget_mcq") == learned  # the full evaluation takes the proxy back
    best = (out / "sweeps" / "gd" / "best.yaml").read_text()
    assert "check_val_every_n_epoch: 1" in best and "forget_mcq: 2" not in best
    # the study remembers its proxy: continuing it with another one is refused, not mixed
    other = write_space(tmp_path / "gd2.yaml", Path(space).read_text().replace("forget_mcq: 2", "forget_mcq: 3"))
    with pytest.raises(ConfigError, match="was made with other proxy"):
        main(sweep_args(out, other, 2, "--model", mcq_model_dir, "--no-constraints"))


def start_sweep(args: list[str], log: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.Popen([sys.executable, "-m", "lit_unlearn.sweep", *args], stdout=log.open("w"),
                            stderr=subprocess.STDOUT, env=env, cwd=str(log.parent))


def ended_trials(sweep: Path, storage: str | None = None, name: str = "gd") -> list:
    import optuna

    study = optuna.load_study(study_name=name, storage=storage or f"sqlite:///{sweep / 'study.db'}")
    return study.get_trials()


def test_a_killed_sweep_continues_where_it_stopped(random_bd_mirror, mcq_model_dir, tmp_path, monkeypatch):
    """The sweep process is killed (SIGKILL: no clean-up) while a trial trains; the same command finds that trial
    RUNNING under a dead worker, marks it failed, runs it again with the same values in the same folder, and the
    study ends with the 3 trials asked for."""
    from lit_unlearn.sweep.__main__ import main

    monkeypatch.chdir(tmp_path)
    out = tmp_path / "runs"
    slow = write_space(tmp_path / "gd.yaml", SPACE.replace("{low: 1, high: 2}", "{low: 30, high: 40}")
                       .replace("{low: 1.0e-3, high: 3.0e-2, log: true}", "{low: 1.0e-4, high: 3.0e-4}"))
    args = sweep_args(out, slow, 3, "--model", mcq_model_dir, "--no-final")
    main(sweep_args(out, slow, 1, "--model", mcq_model_dir, "--no-final"))  # the learned model and trial 0
    proc = start_sweep(args, tmp_path / "worker.log")
    target = out / "sweeps" / "gd" / "trials" / "t0001"
    deadline = time.time() + 240
    while time.time() < deadline and not list(target.glob("checkpoints/*.ckpt")) and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, (tmp_path / "worker.log").read_text()[-3000:]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    states = {t.number: t.state.name for t in ended_trials(out / "sweeps" / "gd")}
    assert states[1] == "RUNNING" and states[0] in ("COMPLETE", "PRUNED") and len(states) == 2
    summary = main(args)
    trials = ended_trials(out / "sweeps" / "gd")
    by_state = {}
    for t in trials:
        by_state.setdefault(t.state.name, []).append(t)
    assert [t.number for t in by_state["FAIL"]] == [1]
    assert len(by_state.get("COMPLETE", [])) + len(by_state.get("PRUNED", [])) == 3
    retry = next(t for t in trials if t.user_attrs.get("retry_of") == 1)
    assert retry.params == by_state["FAIL"][0].params and retry.user_attrs["run_dir"] == "t0001"
    assert len(summary["trials"]) == 4  # three ended and the failed one, recorded as such
    assert json.loads((target / "metrics.json").read_text())["status"] in ("finished", "collapsed")  # it ended


def test_a_multi_objective_sweep_returns_the_pareto_set(random_bd_mirror, mcq_model_dir, tmp_path, monkeypatch):
    import optuna

    from lit_unlearn.sweep.__main__ import main

    monkeypatch.chdir(tmp_path)
    out = tmp_path / "runs"
    space = write_space(tmp_path / "gd.yaml", SPACE)
    summary = main(sweep_args(out, space, 4, "--model", mcq_model_dir, "--no-constraints", "--name", "pareto",
                              "--objective", "forget_mcq/mcq_acc:min", "--objective", "retain_mcq/mcq_acc:max",
                              "--attack", "best"))
    # the setting's attack (RTT) ran on the best point: its recovered share of the learned forget accuracy
    best = summary["best"]
    attack = summary["full_evaluation"][str(best["number"])]["attack"]
    rtt = json.loads((out / "sweeps" / "pareto" / "trials" / best["run_dir"] / "attack" / "rtt_summary.json")
                     .read_text())
    assert attack["rtt_best"] == rtt["overall"]["best"] and 0 <= attack["rtt_recovered"]
    study = optuna.load_study(study_name="pareto", storage=f"sqlite:///{out / 'sweeps' / 'pareto' / 'study.db'}")
    assert [d.name for d in study.directions] == ["MINIMIZE", "MAXIMIZE"]
    assert sorted(summary["frontier"]) == sorted(t.number for t in study.best_trials)
    assert summary["constraints"] == [] and (out / "sweeps" / "pareto" / "frontier.png").is_file()
    # a multi-objective study is not pruned: every trial ran all its epochs
    assert all(not t.intermediate_values for t in study.trials)
    # a rerun with other objectives is refused instead of mixing two studies
    with pytest.raises(ConfigError, match="was made with other objectives"):
        main(sweep_args(out, space, 4, "--model", mcq_model_dir, "--no-constraints", "--name", "pareto",
                        "--objective", "forget_mcq/mcq_acc:min"))


def test_pruned_and_collapsed_trials_are_recorded_as_such(random_bd_mirror, mcq_model_dir, tmp_path, monkeypatch):
    from lit_unlearn.sweep.__main__ import main
    from lit_unlearn.sweep.objectives import parse_constraint, parse_objective
    from lit_unlearn.sweep.study import read_outcome

    monkeypatch.chdir(tmp_path)
    out = tmp_path / "runs"
    # a pruner that stops every trial at its first report
    space = write_space(tmp_path / "gd.yaml", SPACE.replace("{low: 1, high: 2}", "{low: 3, high: 4}")
                        + "pruner: {class_path: ThresholdPruner, init_args: {upper: -1.0}}\n")
    summary = main(sweep_args(out, space, 2, "--model", mcq_model_dir))
    for row in summary["trials"]:
        assert row["state"] == "PRUNED" and row["status"] == "pruned at epoch 1" and row["pruned_at_epoch"] == 1
        record = json.loads((out / "sweeps" / "gd" / "trials" / row["run_dir"] / "metrics.json").read_text())
        assert record["metrics"]["history"][-1]["epoch"] == 1  # it stopped after its first epoch
    assert summary["best"] is None and "No trial met the constraints" in (out / "sweeps" / "gd" / "trials.md").read_text()

    class Plan:  # what read_outcome reads of a plan
        objectives = [parse_objective("forget/acc:min")]
        constraints = [parse_constraint("retain/acc >= 0.9 * ref")]
        axes = ("forget/acc", "retain/acc")
        reference = {"retain": {"acc": 1.0}}

    after = {"forget": {"acc": 0.3}, "retain": {"acc": 0.95}}
    ok = read_outcome(Plan, {"status": "finished", "metrics": {"after": after}}, None)
    assert ok["state"] == "COMPLETE" and ok["values"] == [0.3] and ok["constraints"] == [pytest.approx(-0.05)]
    tripped = {"status": "collapsed", "metrics": {"after": after, "collapse_events": [
        {"step": 9, "reason": "val/retain/acc=0.1 below the floor 0.5", "restored_step": 6,
         "evaluation": {"val/forget/acc": 0.05, "val/retain/acc": 0.1}}]}}
    out_c = read_outcome(Plan, tripped, None)
    assert out_c["state"] == "PRUNED" and out_c["status"] == "collapsed" and out_c["trip"]["step"] == 9
    # the collapsed model's numbers at the trip, not the restored adapter's evaluation after fit
    assert out_c["metrics"] == {"forget/acc": 0.05, "retain/acc": 0.1}
    assert read_outcome(Plan, {"status": "diverged", "metrics": {"after": {}}}, None)["state"] == "PRUNED"
    missing = read_outcome(Plan, {"status": "finished", "metrics": {"after": {"retain": {"acc": 1.0}}}}, None)
    assert missing["state"] == "FAIL"


@pytest.mark.parametrize("storage", ["journal", "sqlite"])
def test_two_worker_processes_share_one_study(storage, random_bd_mirror, mcq_model_dir, tmp_path, monkeypatch):
    from lit_unlearn.sweep.__main__ import main

    monkeypatch.chdir(tmp_path)
    out = tmp_path / "runs"
    space = write_space(tmp_path / "gd.yaml", SPACE.replace("{low: 1, high: 2}", "{low: 4, high: 6}"))
    url = f"journal:///{tmp_path / 'study.log'}" if storage == "journal" else f"sqlite:///{tmp_path / 'study.db'}"
    args = sweep_args(out, space, 4, "--model", mcq_model_dir, "--storage", url, "--no-final")
    # one trial first: the learned model exists before the two workers start (else both would train it)
    main(sweep_args(out, space, 1, "--model", mcq_model_dir, "--storage", url, "--no-final"))
    workers = [start_sweep(args, tmp_path / f"worker{i}.log") for i in range(2)]
    for w in workers:
        assert w.wait(timeout=600) == 0, (tmp_path / "worker0.log").read_text()[-3000:]
    from lit_unlearn.sweep.study import open_storage
    import optuna

    study = optuna.load_study(study_name="gd", storage=open_storage(url))
    done = [t for t in study.trials if t.state.name in ("COMPLETE", "PRUNED")]
    assert len(done) >= 4 and not [t for t in study.trials if t.state.name in ("RUNNING", "FAIL")]
    pids = {t.user_attrs["worker"]["pid"] for t in done if t.number > 0}
    assert len(pids) == 2  # both processes ran trials of the one study
    dirs = [t.user_attrs["run_dir"] for t in done]
    assert len(set(dirs)) == len(dirs) and all((out / "sweeps" / "gd" / "trials" / d / "metrics.json").is_file()
                                               for d in dirs)


def test_a_tofu_sweep_trains_on_the_teacher_forced_proxy_and_evaluates_the_frontier_in_full(
        tofu_mirror, tiny_model_dir, tmp_path, monkeypatch):
    """TOFU's trials are evaluated without generation or MIA (probability and truth ratio: forget quality and the
    teacher-forced utility), every epoch; the frontier's points get TOFU's whole evaluation afterwards."""
    from lit_unlearn.sweep.__main__ import main

    monkeypatch.chdir(tmp_path)
    out = tmp_path / "runs"
    space = write_space(tmp_path / "npo.yaml", "space:\n  model.init_args.lr: {low: 1.0e-3, high: 1.0e-2, log: true}\n"
                        "  model.init_args.beta: {low: 0.05, high: 1.0, log: true}\nfixed: {trainer.max_epochs: 2}\n")
    summary = main(["tofu", "--method", "npo_gd", "--mini", "3", "--out", str(out), "--space", space, "--n-trials",
                    "2", "--model", tiny_model_dir, "--model.init_args.lr", "1e-2"])
    assert summary["objectives"] == ["tofu/forget_quality:max"]
    assert summary["constraints"] == ["tofu/model_utility_tf >= 0.9 * ref"]
    learned = json.loads((out / "finetune" / "metrics.json").read_text())["metrics"]["after"]
    assert summary["reference"]["tofu"]["model_utility_tf"] == learned["tofu"]["model_utility_tf"]
    for row in summary["trials"]:
        run = out / "sweeps" / "npo_gd" / "trials" / row["run_dir"]
        after = json.loads((run / "metrics.json").read_text())["metrics"]["after"]
        assert "rouge" not in after["forget"] and {"prob", "truth_ratio"} <= set(after["forget"])
        assert "holdout" not in after and "mia" not in after and "model_utility" not in after["tofu"]
        assert {"forget_quality", "model_utility_tf"} <= set(after["tofu"])
        rows = [json.loads(line) for line in (run / "rows" / "after" / "forget.tofu.jsonl").read_text().splitlines()]
        assert all(r["generated"] is None for r in rows)  # nothing was generated
    for number in summary["frontier"]:
        full = summary["full_evaluation"][str(number)]
        assert {"rouge", "prob", "truth_ratio"} <= set(full["forget"]) and "model_utility" in full["tofu"]
        assert "auc_loss" in full["mia"]
        row = next(r for r in summary["trials"] if r["number"] == number)
        # the teacher-forced numbers of the full evaluation are the proxy's
        assert full["tofu"]["forget_quality"] == pytest.approx(row["metrics"]["tofu/forget_quality"], abs=1e-9)
        assert full["tofu"]["model_utility_tf"] == pytest.approx(row["metrics"]["tofu/model_utility_tf"], abs=1e-9)


SPACES = sorted((REPO_ROOT / "configs" / "search").rglob("*.yaml"))


@pytest.mark.parametrize("path", SPACES, ids=[p.stem for p in SPACES])
def test_every_shipped_search_space_names_real_keys_of_its_method(path, monkeypatch):
    """Each shipped space parses, opens with the sweep command that uses it, and every searched or fixed key, set to
    a value of its range, parses with the method's configs on the benchmark that command names (a misspelt key
    would otherwise fail only when a trial starts)."""
    import shlex

    from lit_unlearn.cli import UnlearnCLI, cli_main
    from lit_unlearn.config_files import expand_config_args, method_configs
    from lit_unlearn.sweep.__main__ import parser, setting_of
    from lit_unlearn.sweep.space import load_space

    space = load_space(path)
    first = path.read_text().splitlines()[0]
    assert first.startswith("# python -m lit_unlearn.sweep "), f"{path.name} should open with its sweep command"
    args, _ = parser().parse_known_args(shlex.split(first.split("python -m lit_unlearn.sweep ", 1)[1]))
    assert args.method == path.stem
    setting = setting_of(args.setting)
    monkeypatch.setattr(UnlearnCLI, "_run_subcommand", lambda self, subcommand: None)
    configs = [f"{setting.benchmark}/base", *method_configs(setting.benchmark, args.method)]
    values = {p.key: (p.choices[-1] if p.kind == "categorical" else p.high) for p in space.params}
    flags = [a for k, v in {**values, **space.fixed, **space.proxy}.items()
             for a in (f"--{k}", json.dumps(v) if not isinstance(v, str) else v)]
    cli = cli_main(expand_config_args(["fit", *(a for c in configs for a in ("--config", c)), *flags]))
    for key, value in values.items():
        section, *rest = key.split(".")
        node = cli.config.fit[section]
        for part in rest:
            node = node[part]
        assert node == value, key


def test_trials_run_as_processes_of_their_own_report_to_the_study(random_bd_mirror, mcq_model_dir, tmp_path,
                                                                  monkeypatch):
    """``--processes``: each stage runs as ``python -m lit_unlearn fit ...`` (what a DDP trial needs: Lightning's
    launcher re-runs the command of the process it is in), and the trial's callback reaches the study from there."""
    import optuna

    from lit_unlearn.sweep.__main__ import main

    monkeypatch.chdir(tmp_path)
    out = tmp_path / "runs"
    space = write_space(tmp_path / "gd.yaml", SPACE.replace("{low: 1, high: 2}", "{low: 2, high: 3}"))
    summary = main(sweep_args(out, space, 2, "--model", mcq_model_dir, "--processes", "--no-final"))
    study = optuna.load_study(study_name="gd", storage=f"sqlite:///{out / 'sweeps' / 'gd' / 'study.db'}")
    for row in summary["trials"]:
        record = json.loads((out / "sweeps" / "gd" / "trials" / row["run_dir"] / "metrics.json").read_text())
        assert record["command"].startswith("python __main__.py fit")  # python -m lit_unlearn, not this process
        assert study.trials[row["number"]].intermediate_values  # reported from the child process
    assert json.loads((out / "learn" / "metrics.json").read_text())["command"].startswith("python __main__.py fit")
