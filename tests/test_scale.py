"""Scaling and safety: DDP with in-loop evaluation, resume after a crash, atomic checkpoints, the collapse guard."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml

from conftest import FORGET_ROWS, REPO_ROOT, RETAIN_ROWS, TINY_KWARGS, write_jsonl
from lit_unlearn.checkpoints import AtomicCheckpointIO
from lit_unlearn.cli import cli_main, eval_main
from lit_unlearn.methods import ALL_METHODS


class CrashAtStep(L.Callback):
    """Raises after optimizer step ``at_step`` (a crash in the middle of an epoch)."""

    def __init__(self, at_step: int = 6):
        self.at_step = at_step

    def on_train_batch_end(self, trainer, *args):
        if trainer.global_step == self.at_step:
            raise RuntimeError("simulated crash")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("scale_data")
    write_jsonl(d / "forget.jsonl", FORGET_ROWS)
    write_jsonl(d / "retain.jsonl", RETAIN_ROWS)
    # 5 rows: an uneven split across 2 ranks, evaluated only
    write_jsonl(d / "extra.jsonl", RETAIN_ROWS[:5])
    return d


def config(path: Path, model_dir: str, data_dir: Path, log_dir: Path, method: dict, trainer: dict | None = None,
           data: dict | None = None, top: dict | None = None) -> str:
    method = dict(method)
    adapter = method.pop("adapter", {"class_path": "LoRA", "init_args": {"r": 4}})
    cfg = {
        "model": {"class_path": method.pop("class_path"),
                  "init_args": {"model": model_dir, "adapter": adapter, "lr": 0.02, **method}},
        "data": {"class_path": "QADataModule",
                 "init_args": {"forget": str(data_dir / "forget.jsonl"), "retain": str(data_dir / "retain.jsonl"),
                               "batch_size": 2, "eval_batch_size": 3, "max_length": 64, **(data or {})}},
        "trainer": {"accelerator": "cpu", "devices": 1, "enable_progress_bar": False, "enable_model_summary": False,
                    "logger": {"class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                               "init_args": {"save_dir": str(log_dir), "name": "runs"}},
                    **(trainer or {})},
        **(top or {}),
    }
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def metrics_of(run_dir: Path, name: str = "metrics.json") -> dict:
    return json.loads((run_dir / name).read_text())["metrics"]


def assert_metrics_close(a: dict, b: dict, what: str = "") -> None:
    """Equal metrics, split by split; ``time_s`` (a split's evaluation wall time) differs run to run: present and
    non-negative on both sides is all that is asked of it."""
    assert a.keys() == b.keys()
    for split in a:
        assert a[split].keys() == b[split].keys(), split
        for k in a[split]:
            if k == "time_s":
                assert a[split][k] >= 0 and b[split][k] >= 0, (split, k)
                continue
            assert a[split][k] == pytest.approx(b[split][k], rel=1e-5, abs=1e-6), (what, split, k)


# ---- 1. DDP with evaluation inside the loop --------------------------------------------------------------------
@pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                    reason="needs torch.distributed with gloo")
def test_ddp_in_loop_metrics_equal_single_process_eval(tiny_model_dir, data_dir, tmp_path):
    """2 CPU processes (gloo) through the CLI: validation every epoch, best checkpoint on val/gap. The metrics the DDP
    run reduced across ranks equal a single-process evaluation of the same checkpoint (every row counted once)."""
    cfg = config(tmp_path / "ddp.yaml", tiny_model_dir, data_dir, tmp_path / "logs",
                 {"class_path": "NPO", "retain": "nll"},
                 trainer={"max_epochs": 2, "strategy": "ddp", "devices": 2},
                 data={"eval_splits": {"extra": str(data_dir / "extra.jsonl")}},
                 top={"checkpoint": {"monitor": "val/gap", "mode": "max"}})
    proc = subprocess.run([sys.executable, str(REPO_ROOT / "train.py"), "fit", "--config", cfg], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)))
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = next((tmp_path / "logs" / "runs").iterdir())
    record = metrics_of(run_dir)
    ddp_after = record["after"]
    # the loop evaluated the final weights at its last step; that evaluation is the one after fit, not run twice
    assert json.loads((run_dir / "metrics.json").read_text())["wall_time_s"]["eval_after"] == 0.0
    assert set(ddp_after) == {"forget", "retain", "extra"}
    assert record["best_checkpoint"] and Path(record["best_checkpoint"]).is_file()
    last = run_dir / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=False)["global_step"] == record["global_step"]  # last.ckpt is fresh

    single = eval_main(["--config", str(run_dir / "config.yaml"), "--ckpt_path", str(last),
                        "--trainer.strategy", "auto", "--trainer.devices", "1",
                        "--trainer.logger.init_args.save_dir", str(tmp_path / "eval_logs")])
    assert_metrics_close(ddp_after, single.model.last_eval)
    # the in-loop validation logged the trade-off metric ModelCheckpoint selected on
    best = torch.load(record["best_checkpoint"], weights_only=False)
    assert "val/gap" in str(best["callbacks"])


@pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                    reason="needs torch.distributed with gloo")
def test_every_method_trains_and_evaluates_under_ddp(tiny_model_dir, data_dir, tmp_path):
    """Every method in ALL_METHODS, 2 CPU processes (gloo), one epoch with validation: it finishes, its adapter moved,
    and the metrics it reduced across ranks equal a single-process evaluation of its last checkpoint."""
    configs = {}
    # each method with an adapter it accepts; RapidUn needs backdoor rows (a clean response per forget row), which
    # QA rows do not have: its chain, with the DDP influence stage, is tests/test_rapidun.py's
    adapters = {"Prefix": {"class_path": "Prefix", "init_args": {"length": 3}},
                "LoReFT": {"class_path": "LoReFT", "init_args": {"layers": [0, 1], "rank": 2, "gated": True}}}
    for cls in ALL_METHODS:
        name = cls.__name__
        if name == "RapidUn":
            continue
        adapter = adapters.get((cls.adapter_types or ("LoRA",))[0], {"class_path": "LoRA", "init_args": {"r": 4}})
        configs[name] = config(tmp_path / f"{name}.yaml", tiny_model_dir, data_dir, tmp_path / "logs",
                               {"class_path": name, "adapter": adapter, **TINY_KWARGS.get(name, {})},
                               trainer={"max_epochs": 1, "strategy": "ddp", "devices": 2,
                                        "logger": {"class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                                                   "init_args": {"save_dir": str(tmp_path / "logs"), "name": name}}},
                               data={"eval_splits": {"extra": str(data_dir / "extra.jsonl")},
                                     **({"cot_field": "cot", "max_length": 128}
                                        if getattr(cls, "needs_cot", False) else {})})
    proc = subprocess.run([sys.executable, str(REPO_ROOT / "tests" / "ddp_run_configs.py"), *configs.values()],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)))
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in configs:
        run_dir = next((tmp_path / "logs" / name).iterdir())
        record = metrics_of(run_dir)
        assert record["global_step"] == 2, name  # 8 retain rows, 2 ranks x batch 2, max_size_cycle: 2 steps
        def scores(m):
            return {s: {k: v for k, v in d.items() if k != "time_s"} for s, d in m.items()}

        assert scores(record["before"]) != scores(record["after"]), f"{name}: the adapter did not change the metrics"
        last = run_dir / "checkpoints" / "last.ckpt"
        single = eval_main(["--config", str(run_dir / "config.yaml"), "--ckpt_path", str(last),
                            "--trainer.strategy", "auto", "--trainer.devices", "1",
                            "--trainer.logger.init_args.save_dir", str(tmp_path / "eval_logs")])
        assert set(record["after"]) == {"forget", "retain", "extra"}, name
        assert_metrics_close(record["after"], single.model.last_eval, name)


# ---- 2. resume ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("mixing", "every_n_steps", "resume_step"), [
    ("max_size_cycle", None, 4),  # default checkpointing: the last checkpoint is epoch 1's end
    ("max_size_cycle", 1, 5),  # a checkpoint every step: resume from the middle of epoch 2 (4 steps an epoch)
    ("ratio", 1, 5),
], ids=["epoch-end", "mid-epoch", "mid-epoch-ratio"])
def test_resume_after_a_crash_matches_an_uninterrupted_run(tiny_model_dir, data_dir, tmp_path, mixing, every_n_steps,
                                                           resume_step):
    common = dict(model_dir=tiny_model_dir, data_dir=data_dir, log_dir=tmp_path / "logs",
                  method={"class_path": "NPO", "retain": "nll", "lr_schedule": "cosine", "warmup_ratio": 0.2},
                  trainer={"max_epochs": 4}, data={"mixing": mixing},
                  top={"checkpoint": {"every_n_train_steps": every_n_steps}} if every_n_steps else None)
    full_cfg = config(tmp_path / "full.yaml", **common)
    cli_main(["fit", "--config", full_cfg, "--trainer.logger.init_args.version", "full"])

    part_cfg = config(tmp_path / "part.yaml", **common)
    version = ["--trainer.logger.init_args.version", "part"]
    with pytest.raises(RuntimeError, match="simulated crash"):
        cli_main(["fit", "--config", part_cfg, *version, "--trainer.callbacks+=test_scale.CrashAtStep",
                  "--trainer.callbacks.init_args.at_step", "6"])
    part_dir = tmp_path / "logs" / "runs" / "part"
    assert not (part_dir / "metrics.json").exists()
    assert torch.load(part_dir / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == resume_step
    cli_main(["fit", "--config", part_cfg, *version, "--ckpt_path", "last"])

    full_dir = tmp_path / "logs" / "runs" / "full"
    a = torch.load(full_dir / "checkpoints" / "last.ckpt", weights_only=False)
    b = torch.load(part_dir / "checkpoints" / "last.ckpt", weights_only=False)
    assert a["global_step"] == b["global_step"] == 16
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for k in a["state_dict"]:
        torch.testing.assert_close(a["state_dict"][k], b["state_dict"][k], rtol=0, atol=0, msg=k)
    assert_metrics_close(metrics_of(full_dir)["after"], metrics_of(part_dir)["after"])


# ---- atomic checkpoints ----------------------------------------------------------------------------------------------
def test_a_killed_checkpoint_write_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    path = tmp_path / "ckpts" / "last.ckpt"
    io.save_checkpoint({"step": 1, "w": torch.ones(3)}, path)
    assert torch.load(path, weights_only=False)["step"] == 1

    real_save = torch.save

    def dies_halfway(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 partial bytes")  # what a process killed mid-write leaves behind
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(torch, "save", dies_halfway)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"step": 2, "w": torch.zeros(3)}, path)
    monkeypatch.setattr(torch, "save", real_save)

    loaded = torch.load(path, weights_only=False)  # still the complete previous checkpoint
    assert loaded["step"] == 1 and torch.equal(loaded["w"], torch.ones(3))
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt", "last.ckpt.sha256"]  # no temporary file


def test_the_cli_writes_checkpoints_through_the_atomic_writer(tiny_model_dir, data_dir, tmp_path):
    cfg = config(tmp_path / "c.yaml", tiny_model_dir, data_dir, tmp_path / "logs", {"class_path": "GradDiff"},
                 trainer={"max_steps": 1}, top={"eval_before": False})
    cli = cli_main(["fit", "--config", cfg])
    assert isinstance(cli.trainer.strategy.checkpoint_io, AtomicCheckpointIO)


# ---- 3. collapse guard ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def learned_model_dir(tiny_model_dir, data_dir, tmp_path_factory) -> str:
    """The tiny model fully fine-tuned on forget + retain rows and exported merged: retain accuracy well above 0."""
    root = tmp_path_factory.mktemp("learned")
    cfg = config(root / "learn.yaml", tiny_model_dir, data_dir, root / "logs",
                 {"class_path": "Finetune", "adapter": None, "lr": 0.01},
                 trainer={"max_steps": 40, "check_val_every_n_epoch": 1000}, top={"export_merged": True})
    cli = cli_main(["fit", "--config", cfg])
    run_dir = Path(cli.trainer.log_dir)
    assert metrics_of(run_dir)["after"]["retain"]["acc"] > 0.6
    return str(run_dir / "merged")


def test_collapse_guard_stops_at_the_retain_floor_and_restores(learned_model_dir, data_dir, tmp_path):
    guard = {"retain_metric": "val/retain/acc", "retain_floor": 0.5, "relative": True}
    cfg = config(tmp_path / "ga.yaml", learned_model_dir, data_dir, tmp_path / "logs",
                 {"class_path": "GradAscent", "lr": 0.1},
                 trainer={"max_steps": 12, "val_check_interval": 1}, top={"guard": guard})
    cli = cli_main(["fit", "--config", cfg])
    assert cli.exit_code == 3 and cli.status == "collapsed"  # a stopped run says so in its exit code
    assert json.loads((Path(cli.trainer.log_dir) / "metrics.json").read_text())["status"] == "collapsed"
    record = metrics_of(Path(cli.trainer.log_dir))
    start = record["before"]["retain"]["acc"]
    events = record["collapse_events"]
    assert len(events) == 1 and "below the floor" in events[0]["reason"]
    assert events[0]["evaluation"]["val/retain/acc"] < 0.5 * start  # what the collapsed model scored
    assert events[0]["restored_step"] < events[0]["step"]
    assert record["global_step"] < 12  # stopped early
    # the restored weights are the last ones that passed the floor
    assert record["after"]["retain"]["acc"] >= 0.5 * start


def test_collapse_guard_catches_a_non_finite_loss(tiny_model_dir, data_dir, tmp_path):
    cfg = config(tmp_path / "ga.yaml", tiny_model_dir, data_dir, tmp_path / "logs",
                 {"class_path": "GradAscent", "lr": 1.0e30},
                 trainer={"max_steps": 10, "check_val_every_n_epoch": 1000})  # the default guard, no config
    cli = cli_main(["fit", "--config", cfg])
    assert cli.exit_code == 3
    record = metrics_of(Path(cli.trainer.log_dir))
    events = record["collapse_events"]
    assert len(events) == 1 and "non-finite" in events[0]["reason"] and events[0]["restored_step"] == 0
    assert record["global_step"] < 10
    for p in cli.model.parameters():
        assert torch.isfinite(p).all()
    # restored to the fresh (identity) LoRA: the model evaluates exactly as before training
    assert_metrics_close(record["before"], record["after"])
