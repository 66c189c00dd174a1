"""Fault injection: every way a run can go wrong ends with its exit code, one line saying what happened, and nothing
lost or overwritten. Signals and concurrent fits run as real processes (``train.py`` / ``eval.py``); bad input runs
through the same ``main()`` in-process.

Exit codes (``lit_unlearn/runs.py``): 2 an error of ours, 3 collapsed / diverged, 130 SIGINT, 143 SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import FORGET_ROWS, REPO_ROOT, RETAIN_ROWS, write_jsonl
from lit_unlearn.cli import TRACEBACK_ENV, main
from test_scale import config

ENV = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO_ROOT), str(REPO_ROOT / "tests")]))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("fault_data")
    write_jsonl(d / "forget.jsonl", FORGET_ROWS)
    write_jsonl(d / "retain.jsonl", RETAIN_ROWS)
    return d


def npo(tmp_path: Path, model_dir: str, data_dir: Path, name: str = "run", **trainer) -> str:
    """An NPO (cached reference) config of 8 steps in 2 epochs, logging to ``<tmp>/logs/runs/<name>``."""
    return config(tmp_path / f"{name}.yaml", model_dir, data_dir, tmp_path / "logs",
                  {"class_path": "NPO", "retain": "nll", "reference": "cached", "lr_schedule": "cosine"},
                  trainer={"max_epochs": 2, "logger": {"class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                                                       "init_args": {"save_dir": str(tmp_path / "logs"),
                                                                     "name": "runs", "version": name}}, **trainer})


def run(script: str, *args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO_ROOT / script), *args], cwd=cwd, env=env or ENV,
                          capture_output=True, text=True, timeout=300)


def lines_of(stderr: str) -> list[str]:
    """The lines lit_unlearn itself wrote to stderr (not library warnings)."""
    return [line for line in stderr.splitlines() if line.startswith(("lit_unlearn:", "[lit_unlearn]"))]


def state(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]


# ---- signals ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_saves_the_current_step_exits_nonzero_and_the_run_resumes_to_the_same_end(
        signum, tiny_model_dir, data_dir, tmp_path):
    cfg = npo(tmp_path, tiny_model_dir, data_dir)
    proc = run("train.py", "fit", "--config", cfg, "--trainer.callbacks+=fault_callbacks.SignalAtStep",
               "--trainer.callbacks.init_args.signum", str(int(signum)), "--trainer.callbacks.init_args.at_step", "2",
               cwd=tmp_path)
    assert proc.returncode == 128 + signum, proc.stderr[-2000:]
    run_dir = tmp_path / "logs" / "runs" / "run"
    # the step during which the signal came finished and was checkpointed (atomically, with its checksum)
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["global_step"] == 3 and (run_dir / "checkpoints" / "last.ckpt.sha256").is_file()
    record = json.loads((run_dir / "metrics.json").read_text())
    assert record["status"] == "interrupted"
    assert record["metrics"]["interrupted"]["signal"] == signal.Signals(signum).name
    assert record["metrics"]["interrupted"]["global_step"] == 3
    said = lines_of(proc.stderr)
    assert any(f"{signal.Signals(signum).name} at step 3" in line and "--ckpt_path last" in line for line in said)
    assert not (run_dir / "adapter").exists()  # nothing exported from an unfinished run

    resumed = run("train.py", "fit", "--config", cfg, "--ckpt_path", "last", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    # the evaluation before fit is the first launch's, read back, not run again
    assert any("resumed: the evaluation before fit is read from" in line for line in lines_of(resumed.stdout))
    whole = npo(tmp_path, tiny_model_dir, data_dir, name="whole")  # uninterrupted, in a process of its own as well
    assert run("train.py", "fit", "--config", whole, cwd=tmp_path).returncode == 0
    a, b = state(run_dir), state(tmp_path / "logs" / "runs" / "whole")
    assert a.keys() == b.keys()
    for k in a:  # nothing lost: the interrupted + resumed run ends where an uninterrupted one does, bit for bit
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    done = json.loads((run_dir / "metrics.json").read_text())
    assert done["status"] == "finished" and done["run_id"] == record["run_id"]  # one run, one id
    assert done["metrics"]["before"] == record["metrics"]["before"] and done["wall_time_s"]["eval_before"] == 0.0


def test_a_resumed_fit_evaluates_again_before_training_when_its_model_or_data_changed(tiny_model_dir, data_dir,
                                                                                      tmp_path, capsys):
    cfg = npo(tmp_path, tiny_model_dir, data_dir)
    assert main(["fit", "--config", cfg]) == 0
    run_dir = tmp_path / "logs" / "runs" / "run"
    first = json.loads((run_dir / "eval_before.json").read_text())["metrics"]["before"]
    assert first and first == json.loads((run_dir / "metrics.json").read_text())["metrics"]["before"]
    capsys.readouterr()
    # two more epochs on the same model and data: the saved evaluation is read back
    assert main(["fit", "--config", cfg, "--ckpt_path", "last", "--trainer.max_epochs", "3"]) == 0
    out = capsys.readouterr()
    assert "resumed: the evaluation before fit is read from" in out.out
    assert json.loads((run_dir / "metrics.json").read_text())["wall_time_s"]["eval_before"] == 0.0
    # another data config (fewer rows): that evaluation no longer describes this fit, so it runs again
    assert main(["fit", "--config", cfg, "--ckpt_path", "last", "--trainer.max_epochs", "4",
                 "--data.init_args.max_rows", "4"]) == 0
    out = capsys.readouterr()
    assert "was made with another model, data or seed" in out.err and "read from" not in out.out
    record = json.loads((run_dir / "metrics.json").read_text())
    assert record["wall_time_s"]["eval_before"] > 0.0 and record["metrics"]["before"] != first


# ---- collapse and NaN protection, on by default ----------------------------------------------------------------------
def test_a_diverging_run_is_stopped_by_the_default_guard(tiny_model_dir, data_dir, tmp_path, capsys):
    from safetensors.torch import load_file

    cfg = config(tmp_path / "ga.yaml", tiny_model_dir, data_dir, tmp_path / "logs",
                 {"class_path": "GradAscent", "lr": 1.0e30}, trainer={"max_steps": 10})
    assert main(["fit", "--config", cfg]) == 3
    run_dir = next((tmp_path / "logs" / "runs").iterdir())
    record = json.loads((run_dir / "metrics.json").read_text())
    assert record["status"] == "collapsed" and "non-finite" in record["metrics"]["collapse_events"][0]["reason"]
    weights = load_file(run_dir / "adapter" / "adapter_model.safetensors")
    assert weights and all(torch.isfinite(t).all() for t in weights.values())  # the restored, finite adapter
    assert all(v == v for split in record["metrics"]["after"].values() for v in split.values())  # no NaN metric
    assert any("collapse guard stopped the run" in line for line in capsys.readouterr().err.splitlines())


def test_with_the_guard_off_a_diverged_run_exports_nothing(tiny_model_dir, data_dir, tmp_path):
    cfg = config(tmp_path / "ga.yaml", tiny_model_dir, data_dir, tmp_path / "logs",
                 {"class_path": "GradAscent", "lr": 1.0e30}, trainer={"max_steps": 4},
                 top={"guard": {"enabled": False}})
    assert main(["fit", "--config", cfg]) == 3
    run_dir = next((tmp_path / "logs" / "runs").iterdir())
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "diverged"
    assert not (run_dir / "adapter").exists()


def test_every_shipped_unlearning_config_carries_a_relative_retain_floor(monkeypatch):
    from lit_unlearn.cli import UnlearnCLI, cli_main
    from test_cli import CONFIGS, config_command

    monkeypatch.chdir(REPO_ROOT)
    monkeypatch.setattr(UnlearnCLI, "_run_subcommand", lambda self, subcommand: None)
    # the documented exceptions: PI-Prefix trains a prefix it does not evaluate (the transformed one is; the trained
    # one scores near 0 by design), RapidUn's retain side is judged by perplexity (no retain accuracy to floor), and
    # the predict stages train nothing
    floor_off = {"PIPrefix"}
    checked = 0
    for path in CONFIGS:
        args = config_command(path)
        if args[0] == "predict":
            continue
        cli = cli_main(args)
        guard = cli.config.fit.guard
        name = type(cli.model).__name__
        if any(a.endswith("rapidun/base.yaml") for a in args):  # RapidUn on its own benchmark
            assert not guard.enabled, path  # perplexity, not accuracy, on retain: no floor to set (docs/influence.md)
            continue
        assert guard.enabled and guard.check_finite, path
        if name == "Finetune":
            continue
        if name in floor_off:
            assert guard.retain_floor is None, path
            continue
        assert guard.retain_floor == 0.5 and guard.relative, path  # every other unlearning config
        checked += 1
    assert checked >= 8


# ---- verified checkpoints ----------------------------------------------------------------------------------------------
@pytest.fixture
def finished_run(tiny_model_dir, data_dir, tmp_path) -> tuple[Path, str]:
    """A finished run with a checkpoint every 2 steps (kept) beside last.ckpt."""
    cfg = npo(tmp_path, tiny_model_dir, data_dir)
    assert main(["fit", "--config", cfg, "--checkpoint.every_n_train_steps", "2", "--checkpoint.save_top_k", "-1"]) == 0
    return tmp_path / "logs" / "runs" / "run", cfg


@pytest.mark.parametrize("damage", ["bytes", "truncated", "empty"])
def test_a_damaged_checkpoint_is_refused_naming_it_and_the_newest_intact_one(damage, finished_run, capsys):
    run_dir, cfg = finished_run
    last = run_dir / "checkpoints" / "last.ckpt"
    data = bytearray(last.read_bytes())
    if damage == "bytes":
        data[len(data) // 2:len(data) // 2 + 8] = b"\x00\x01\x02\x03\x04\x05\x06\x07"
    elif damage == "truncated":
        data = data[: len(data) // 3]
    else:
        data = b""
    last.write_bytes(bytes(data))
    intact = max((p for p in last.parent.glob("epoch=*.ckpt")), key=lambda p: p.stat().st_mtime)
    capsys.readouterr()
    for argv, evaluate in ((["fit", "--config", cfg, "--ckpt_path", "last", "--trainer.max_epochs", "3"], False),
                           (["--config", str(run_dir / "config.yaml"), "--ckpt_path", str(last)], True)):
        assert main(argv, evaluate=evaluate) == 2
        said = lines_of(capsys.readouterr().err)
        assert len(said) == 1 and str(last) in said[0] and str(intact) in said[0], said
    assert main(["--config", str(run_dir / "config.yaml"), "--ckpt_path", str(intact),
                 "--trainer.logger.init_args.version", "eval_intact"], evaluate=True) == 0  # the one it offered loads


def test_a_checkpoint_without_a_checksum_file_still_loads(finished_run):
    run_dir, _ = finished_run
    (run_dir / "checkpoints" / "last.ckpt.sha256").unlink()
    assert main(["--config", str(run_dir / "config.yaml"), "--ckpt_path", str(run_dir / "checkpoints" / "last.ckpt"),
                 "--trainer.logger.init_args.version", "eval"], evaluate=True) == 0


class _Payload:
    """An object whose unpickling would run code (what a weights-only load refuses)."""

    def __reduce__(self):
        return (print, ("a pickle payload ran",))


@pytest.mark.parametrize("fault", ["pickle_payload", "nan_without_checksum"])
def test_a_checkpoint_with_a_payload_or_nan_weights_is_one_line(fault, finished_run, capsys):
    """A pickle payload is refused (loads are weights-only), without the traceback that suggested weights_only=False;
    a checkpoint copied without its checksum file is loaded only if its weights are finite."""
    run_dir, _ = finished_run
    last = run_dir / "checkpoints" / "last.ckpt"
    ckpt = torch.load(last, weights_only=True)
    if fault == "pickle_payload":
        ckpt["payload"] = _Payload()
        expect = "holds objects other than tensors (a pickle payload)"
    else:
        name = next(iter(ckpt["state_dict"]))
        ckpt["state_dict"][name] = torch.full_like(ckpt["state_dict"][name], float("nan"))
        expect = f"has no checksum file and holds non-finite weights ({name})"
    torch.save(ckpt, last)
    (run_dir / "checkpoints" / "last.ckpt.sha256").unlink()
    capsys.readouterr()
    assert main(["--config", str(run_dir / "config.yaml"), "--ckpt_path", str(last),
                 "--trainer.logger.init_args.version", "eval"], evaluate=True) == 2
    captured = capsys.readouterr()
    said = lines_of(captured.err)
    assert len(said) == 1 and expect in said[0] and str(last) in said[0], said
    assert "Traceback" not in captured.err and "weights_only=False" not in captured.err
    assert "a pickle payload ran" not in captured.out


# ---- run directories ------------------------------------------------------------------------------------------------
def test_a_finished_run_is_not_overwritten_unless_asked(finished_run, capsys):
    run_dir, cfg = finished_run
    before = {p: p.read_bytes() for p in (run_dir / "metrics.json", run_dir / "config.yaml",
                                           run_dir / "adapter" / "adapter_model.safetensors")}
    capsys.readouterr()
    assert main(["fit", "--config", cfg, "--model.init_args.lr", "0.05"]) == 2
    said = lines_of(capsys.readouterr().err)
    assert len(said) == 1 and "already holds a completed run" in said[0] and "--overwrite true" in said[0]
    assert all(p.read_bytes() == b for p, b in before.items())  # untouched
    old_id = json.loads((run_dir / "metrics.json").read_text())["run_id"]

    assert main(["fit", "--config", cfg, "--model.init_args.lr", "0.05", "--overwrite", "true"]) == 0
    record = json.loads((run_dir / "metrics.json").read_text())
    assert record["config"]["model"]["init_args"]["lr"] == 0.05 and record["run_id"] != old_id
    # only this run's checkpoints: the old every-2-steps ones are gone, and no last-v1.ckpt beside an old last.ckpt
    assert sorted(p.name for p in (run_dir / "checkpoints").glob("*.ckpt")) == ["epoch=1-step=8.ckpt", "last.ckpt"]
    # config.yaml, metrics.json and adapter/ carry the same run id
    assert (run_dir / "config.yaml").read_text().splitlines()[0] == f"# lit_unlearn run {record['run_id']}"
    adapter_run = json.loads((run_dir / "adapter" / "lit_unlearn_run.json").read_text())
    assert adapter_run["run_id"] == record["run_id"]


def test_a_second_fit_into_a_directory_in_use_is_refused(tiny_model_dir, data_dir, tmp_path):
    cfg = npo(tmp_path, tiny_model_dir, data_dir)
    first = subprocess.Popen([sys.executable, str(REPO_ROOT / "train.py"), "fit", "--config", cfg,
                              "--trainer.callbacks+=fault_callbacks.SlowSteps", "--model.init_args.lr", "0.01"],
                             cwd=tmp_path, env={**ENV, "HOLD_UNTIL": str(tmp_path / "go")},
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lock = tmp_path / "logs" / "runs" / "run" / ".lit_unlearn.lock"
    deadline = time.time() + 120
    while not lock.exists() and first.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert lock.exists(), "the first fit never took its lock"
    second = run("train.py", "fit", "--config", cfg, "--model.init_args.lr", "0.03", cwd=tmp_path)
    (tmp_path / "go").write_text("")  # the first fit holds its first step until the second has been refused
    assert first.wait(timeout=300) == 0, first.stderr.read()[-2000:]
    assert second.returncode == 2
    said = lines_of(second.stderr)
    assert len(said) == 1 and "is in use by another fit" in said[0] and "Traceback" not in second.stderr
    record = json.loads((tmp_path / "logs" / "runs" / "run" / "metrics.json").read_text())
    assert record["config"]["model"]["init_args"]["lr"] == 0.01  # one run's records, the first's
    assert not lock.exists()  # released


def test_a_lock_left_by_a_dead_process_is_taken_over(tiny_model_dir, data_dir, tmp_path):
    import socket

    cfg = npo(tmp_path, tiny_model_dir, data_dir)
    run_dir = tmp_path / "logs" / "runs" / "run"
    run_dir.mkdir(parents=True)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (run_dir / ".lit_unlearn.lock").write_text(json.dumps({"pid": int(dead.stdout), "host": socket.gethostname()}))
    assert main(["fit", "--config", cfg, "--trainer.max_epochs", "1"]) == 0


# ---- inputs: one line naming the file, row or flag, exit code 2 ----------------------------------------------------------
def bad_input(tmp_path: Path, model_dir: str, data_dir: Path, method: dict | None = None, forget: str | None = None,
              data: dict | None = None) -> list[str]:
    cfg = config(tmp_path / "c.yaml", model_dir, data_dir, tmp_path / "logs", method or {"class_path": "GradDiff"},
                 trainer={"max_steps": 1}, data={**({"forget": forget} if forget else {}), **(data or {})})
    return ["fit", "--config", cfg]


@pytest.mark.parametrize("case", ["latin1", "json_strings", "directory", "empty_answer", "max_rows_0", "lr_negative",
                                  "lr_zero", "warmup_2", "negative_weight", "npo_beta_0", "simnpo_beta_negative",
                                  "tnpo_beta_0"])
def test_bad_input_is_one_line_naming_what_to_fix(case, tiny_model_dir, data_dir, tmp_path, capsys):
    forget, method, data, expect = None, None, None, None
    if case == "latin1":
        path = tmp_path / "latin1.jsonl"
        path.write_bytes('{"question": "Où est né Ilsa ?", "answer": "Lisbon"}\n'.encode("latin-1"))
        forget, expect = str(path), f"{path} line 1 is not UTF-8"
    elif case == "json_strings":
        path = tmp_path / "rows.json"
        path.write_text('["a", "b"]')
        forget, expect = str(path), f"{path}[0] is not a JSON object"
    elif case == "directory":
        forget, expect = str(tmp_path), f"{tmp_path} is a directory"
    elif case == "empty_answer":
        path = write_jsonl(tmp_path / "f.jsonl", [{"question": "Q?", "answer": ""}])
        forget, expect = path, f"{path}:1 has an empty answer"
    elif case == "max_rows_0":
        data, expect = {"max_rows": 0}, "--data.max_rows must be >= 1"
    elif case.startswith(("lr", "warmup", "negative", "npo", "simnpo", "tnpo")):
        key, value, expect = {"lr_negative": ("lr", -1e-3, "--model.lr must be > 0"),
                              "lr_zero": ("lr", 0.0, "--model.lr must be > 0"),
                              "warmup_2": ("warmup_ratio", 2.0, "--model.warmup_ratio must be in [0, 1)"),
                              "negative_weight": ("retain_weight", -1.0, "--model.retain_weight must be >= 0"),
                              "npo_beta_0": ("beta", 0.0, "--model.beta must be > 0"),
                              "simnpo_beta_negative": ("beta", -1.0, "--model.beta must be > 0"),
                              "tnpo_beta_0": ("beta", 0.0, "--model.beta must be > 0")}[case]
        # a model that does not exist: the value is refused when the method is built, before any model is loaded
        cls = {"npo": "NPO", "sim": "SimNPO", "tnp": "TNPO"}.get(case[:3], "GradDiff")
        method = {"class_path": cls, key: value}
    args = bad_input(tmp_path, tiny_model_dir, data_dir, method, forget, data)
    if method is not None:
        args += ["--model.init_args.model", str(tmp_path / "no_such_model")]
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    said = lines_of(err)
    assert len(said) == 1 and said[0].startswith("lit_unlearn: error: ") and expect in said[0], said
    assert "Traceback" not in err
    assert not list((tmp_path / "logs").rglob("metrics.json"))


def test_a_csv_with_a_byte_order_mark_is_read(tiny_model_dir, tmp_path):
    from lit_unlearn.data import SST2DataModule

    path = tmp_path / "forget.csv"
    path.write_bytes("\ufefftext,label,label_text\nfun,1,positive\n".encode("utf-8"))
    dm = SST2DataModule(forget=str(path), tokenizer=tiny_model_dir)
    dm.setup("fit")
    assert dm.datasets["forget"].rows[0]["text"] == "fun"


def test_the_one_line_is_what_the_process_prints_and_the_switch_shows_the_traceback(tiny_model_dir, data_dir,
                                                                                      tmp_path):
    args = bad_input(tmp_path, tiny_model_dir, data_dir, data={"max_rows": 0})
    proc = run("train.py", *args, cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert lines_of(proc.stderr) == ["lit_unlearn: error: --data.max_rows must be >= 1 (got 0 for forget)"]
    shown = run("train.py", *args, cwd=tmp_path, env=dict(ENV, **{TRACEBACK_ENV: "1"}))
    assert shown.returncode != 0 and "Traceback" in shown.stderr and "DataError" in shown.stderr


# ---- reproducibility ------------------------------------------------------------------------------------------------------
def test_converting_the_embedded_model_does_not_draw_on_the_seeded_rng(tmp_path, monkeypatch):
    """The first run after an empty model cache converts the GGUF file; that must leave the global RNG as it was, or
    that run would initialise its adapter differently from every later run."""
    from lit_unlearn.models import loading

    spec = loading.EMBEDDED_MODELS["smollm2-135m-instruct"]
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / spec.gguf_file).write_bytes(b"gguf")
    monkeypatch.setenv("LIT_UNLEARN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(loading, "_package_dir", lambda package: tmp_path / "pkg")

    def convert(gguf, target):  # what from_config's random initialisation does to the global RNG
        torch.randn(1000)
        target.mkdir(parents=True)

    monkeypatch.setattr(loading, "_convert_gguf", convert)
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    loading.resolve_model("smollm2-135m-instruct")
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("case", ["guard_metric", "no_evaluator", "merge_a_prefix"])
def test_a_run_that_would_silently_report_nothing_is_one_line(case, tiny_model_dir, data_dir, tmp_path, capsys):
    """A misspelled guard metric used to switch the retain floor off, and a run whose splits all have empty
    evaluator lists "finished" with no metric; both are one line and exit 2."""
    if case == "guard_metric":
        args = bad_input(tmp_path, tiny_model_dir, data_dir) + [
            "--guard.retain_metric", "val/retain/accuracy", "--guard.retain_floor", "0.1", "--guard.relative", "false",
            "--trainer.max_steps", "4", "--trainer.val_check_interval", "2"]
        expect = "--guard.retain_metric val/retain/accuracy is not a metric of this run"
    elif case == "no_evaluator":
        args = bad_input(tmp_path, tiny_model_dir, data_dir, data={"evaluators": {"forget": [], "retain": []}})
        expect = "no split of the data module has an evaluator"
    else:  # the adapter declares it cannot be merged (Adapter.mergeable): refused before training, not after it
        args = bad_input(tmp_path, tiny_model_dir, data_dir, method={
            "class_path": "GradDiff", "adapter": {"class_path": "Prefix", "init_args": {"length": 2}}}) + [
            "--export_merged", "true"]
        expect = "--export_merged true: a Prefix cannot be merged"
    capsys.readouterr()
    assert main(args) == 2
    said = lines_of(capsys.readouterr().err)
    assert len(said) == 1 and expect in said[0], said
    if case == "guard_metric":
        assert "val/retain/acc" in said[0]  # the names it could have meant


def test_a_run_prints_none_of_the_libraries_noise(tiny_model_dir, data_dir, tmp_path):
    """No litlogger tip, no transformers / Lightning deprecation warnings, no Lightning box beside eval.py's own
    table; an evaluation's table has one value column (there is no before)."""
    cfg = npo(tmp_path, tiny_model_dir, data_dir, "noise")
    fit = subprocess.run([sys.executable, "-m", "lit_unlearn", "fit", "--config", cfg, "--trainer.max_steps", "2"],
                         cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=300)
    assert fit.returncode == 0, fit.stderr[-2000:]
    run_dir = tmp_path / "logs" / "runs" / "noise"
    ev = subprocess.run([sys.executable, "-m", "lit_unlearn", "eval", "--config", str(run_dir / "config.yaml"),
                         "--ckpt_path", str(run_dir / "checkpoints" / "last.ckpt")], cwd=tmp_path, env=ENV,
                        capture_output=True, text=True, timeout=300)
    assert ev.returncode == 0, ev.stderr[-2000:]
    for out in (fit.stdout + fit.stderr, ev.stdout + ev.stderr):
        for noise in ("litlogger", "is_gradient_checkpointing", "LeafSpec", "args parameter is intended",
                      "Validate metric"):
            assert noise not in out, noise
    header = next(line for line in ev.stdout.splitlines() if line.startswith("split"))
    assert header.split() == ["split", "metric", "value"]


def test_the_progress_bar_shows_the_whole_version():
    from types import SimpleNamespace

    from lit_unlearn.cli import _whole_version

    metrics = _whole_version(lambda trainer, module: {"v_num": "hole", "loss": 1.0})
    trainer = SimpleNamespace(logger=SimpleNamespace(version="whole"))
    assert metrics(trainer, None) == {"v_num": "whole", "loss": 1.0}


@pytest.mark.parametrize(("flag", "expect"), [
    (["--model.class_path", "NPOO"], "--model.class_path NPOO is not a known class; one of: "),
    (["--data.class_path", "TOFU"], "--data.class_path TOFU is not a known class; one of: "),
    (["--model.init_args.adapter.class_path", "Lora"], "--model.init_args.adapter.class_path Lora is not a known class"),
    (["--model.init_args.betta", "3"], "--model.init_args.betta: GradDiff has no argument 'betta'"),
    (["--model.init_args.adapter.init_args.rank", "3"], "--model.init_args.adapter.init_args.rank: LoRA has no argument"),
    (["--trainer.max_epochs", "abc"], "--trainer.max_epochs 'abc' is not a valid value"),
])
def test_a_bad_class_or_key_is_one_line_naming_the_choices(flag, expect, capsys):
    """Not jsonargparse's usage dump of every option (73 lines) without the valid names."""
    with pytest.raises(SystemExit) as stop:
        from lit_unlearn.cli import cli_main

        cli_main(["fit", "--config", "tofu/base", *flag])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("lit_unlearn: error: ") and expect in err[0], err
    if "known class" in expect:
        assert {"NPOO": "NPO", "TOFU": "TOFUDataModule", "Lora": "LoRA"}[flag[1]] in err[0]
