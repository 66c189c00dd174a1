"""The real CLI in-process: every shipped config parses (without loading a model), and a tiny ``fit`` writes its
run records (TensorBoard events, adapter-only checkpoint, adapter/, metrics.json), ``eval.py`` reproduces the
fit's final metrics from the checkpoint, and a second stage unlearns from the first stage's adapter."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
import torch
import yaml

from conftest import FORGET_ROWS, REPO_ROOT, RETAIN_ROWS, write_jsonl
from lit_unlearn.cli import UnlearnCLI, cli_main, eval_main
from lit_unlearn.config_files import expand_config_args, method_configs
from lit_unlearn.data.base import ForgetRetainDataModule
from lit_unlearn.methods import NPO, GradDiff, UnlearningMethod

#: the runnable configs (configs/search/ holds search spaces, checked in tests/test_sweep.py)
CONFIGS = sorted(p for p in (REPO_ROOT / "configs").rglob("*.yaml") if p.relative_to(REPO_ROOT / "configs").parts[0]
                 != "search")
SPLITS = ("forget", "retain")
METRICS = ("nll", "prob", "acc", "exact")


@pytest.fixture
def no_run(monkeypatch):
    """Parse and instantiate everything (trainer, model, data) but run no subcommand."""
    monkeypatch.setattr(UnlearnCLI, "_run_subcommand", lambda self, subcommand: None)


def test_there_are_configs():
    assert CONFIGS, "configs/ holds no YAML"


def config_command(config: Path) -> list[str]:
    """The arguments of the command a config opens with (``# python train.py fit --config ...``), checked to name
    the config itself, so the documented command is the one the tests run."""
    lines = config.read_text().splitlines()
    assert lines[0].startswith("# python "), f"{config.name} should open with the command that runs it"
    command = next((line for line in lines if line.startswith("#") and "python train.py " in line), None)
    assert command, f"{config.name}'s header names no train.py command"
    if command.endswith("\\"):  # continued on the next comment line
        command = command[:-1] + lines[lines.index(command) + 1][1:]
    args = shlex.split(command.split("python train.py ", 1)[1])
    args = expand_config_args(args)  # shipped names (tofu/base) to their files
    assert str(config.resolve()) in {str(Path(a).resolve()) for a in args}, f"{config.name}'s command does not use it"
    return args


@pytest.mark.parametrize("config", CONFIGS, ids=[str(p.relative_to(REPO_ROOT / "configs")) for p in CONFIGS])
def test_every_config_parses_without_loading_a_model(config, no_run, monkeypatch, capsys):
    monkeypatch.chdir(REPO_ROOT)  # configs are written to run from the repository root
    args = config_command(config)

    cli = cli_main(args)
    assert isinstance(cli.model, UnlearningMethod)
    assert isinstance(cli.datamodule, ForgetRetainDataModule)
    assert cli.model.lm is None, "parsing a config loaded a model (configure_model must stay lazy)"
    assert cli.datamodule.datasets == {} and cli.datamodule.tokenizer is None  # nor read data
    assert cli.datamodule.tokenizer_name == cli.model.model_name  # link model.model -> data.tokenizer
    assert cli.model.max_length == cli.datamodule.max_length  # link data.max_length -> model.max_length

    with pytest.raises(SystemExit) as exit_:
        cli_main([*args, "--print_config"])
    assert exit_.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["class_path"].startswith(("lit_unlearn.methods.", "lit_unlearn.predict_stages."))
    assert printed["data"]["class_path"].startswith("lit_unlearn.data.")


@pytest.mark.parametrize(("config", "flags", "expected"), [
    ("tofu/simnpo", [], {"forget_weight": 0.125, "beta": 4.5, "retain": "nll", "retain_weight": 1.0}),
    ("tofu/npo", [], {"beta": 0.1, "retain": "nll", "retain_weight": 1.0}),
    ("tofu/npo_gd", [], {"beta": 0.1, "retain": "nll", "retain_weight": 1.0}),
    ("tofu/npo_kl", [], {"beta": 0.1, "retain": "kl"}),
    ("tofu/tnpo", [], {"beta": 4.5, "retain": "none"}),
    ("tofu/grun", ["--model.init_args.loss", "grad_diff"], {"retain_weight": 2.0, "gate_weight": 10.0}),
    ("tofu/grun", [], {"retain_weight": 1.0, "npo_weight": 100.0, "lr": 4e-3}),
    ("tofu/rmu", [], {"alpha": 1200.0, "steering": 4.0, "lr": 1e-4}),
    ("deeb_roger/grun_rmu", [], {"rmu_layer": -2, "steering_scale": "corpus", "gate_weight": 100.0, "lr": 4e-3}),
    ("deeb_roger/rmu", [], {"steering_scale": "corpus", "positions": "text", "alpha": 100.0, "lr": 1e-3}),
    ("sst2/pi_prefix_relabel", [], {"variant": "relabel", "lr": 5e-4}),
    ("rapidun/fallback", [], {"weighting": "loss"}),
])
def test_the_originals_defaults_reach_the_cli(config, flags, expected, no_run, monkeypatch):
    """A method's own defaults survive LightningCLI, which passes every init_arg explicitly (a default set inside
    __init__ with kwargs.setdefault never did: GRUN's grad_diff retain weight of 2 came out as 1), and the method
    file (configs/methods/) composes with the benchmark's file of the same name as the pipelines compose them."""
    monkeypatch.chdir(REPO_ROOT)
    benchmark, method = config.split("/")
    configs = [f"{benchmark}/base", *method_configs(benchmark, method)]
    cli = cli_main(expand_config_args(["fit", *(a for c in configs for a in ("--config", c)), *flags]))
    got = {k: getattr(cli.model, k) for k in expected}
    assert got == expected
    assert cli.config.fit.trainer.logger.init_args.version == Path(configs[-1]).name  # the run's folder


# ---- a tiny fit, run once for this module ------------------------------------------------------------------------------
def write_config(path: Path, model_dir: str, data_dir: Path, log_dir: Path, model: dict, data: dict | None = None,
                 max_steps: int = 3) -> str:
    config = {
        "model": {"class_path": model.pop("class_path"),
                  "init_args": {"model": model_dir, "adapter": {"class_path": "LoRA", "init_args": {"r": 4}},
                                "lr": 0.02, **model}},
        "data": {"class_path": "QADataModule",
                 "init_args": {"forget": str(data_dir / "forget.jsonl"), "retain": str(data_dir / "retain.jsonl"),
                               "batch_size": 2, "eval_batch_size": 4, "max_length": 64, **(data or {})}},
        "trainer": {"accelerator": "cpu", "devices": 1, "max_steps": max_steps, "enable_progress_bar": False,
                    "enable_model_summary": False, "default_root_dir": str(log_dir),
                    "logger": {"class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                               "init_args": {"save_dir": str(log_dir), "name": "runs"}}},
    }
    path.write_text(yaml.safe_dump(config))
    return str(path)


@pytest.fixture(scope="module")
def fit_run(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    data = root / "data"
    data.mkdir()
    write_jsonl(data / "forget.jsonl", FORGET_ROWS)
    write_jsonl(data / "retain.jsonl", RETAIN_ROWS)
    config = write_config(root / "graddiff.yaml", tiny_model_dir, data, root / "logs", {"class_path": "GradDiff"})
    cli = cli_main(["fit", "--config", config, "--trainer.max_steps", "3"])
    run_dir = Path(cli.trainer.log_dir)
    return {"cli": cli, "run_dir": run_dir, "root": root, "data": data,
            "metrics": json.loads((run_dir / "metrics.json").read_text())}


def test_fit_writes_tensorboard_events(fit_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = fit_run["run_dir"]
    assert run_dir.parent.name == "runs" and run_dir.is_relative_to(fit_run["root"] / "logs")
    events = sorted(run_dir.glob("events.out.tfevents.*"))
    assert events
    tags = set()
    for e in events:
        acc = EventAccumulator(str(e))
        acc.Reload()
        tags |= set(acc.Tags()["scalars"])
    assert {"train/loss", "train/forget_loss", "train/retain_loss", "val/forget/acc", "val/retain/nll"} <= tags


def test_fit_checkpoint_holds_only_the_adapter(fit_run):
    ckpts = sorted((fit_run["run_dir"] / "checkpoints").glob("*.ckpt"))
    assert ckpts and (fit_run["run_dir"] / "checkpoints" / "last.ckpt") in ckpts
    ckpt = torch.load(fit_run["run_dir"] / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    keys = list(ckpt["state_dict"])
    assert keys and all("lora_" in k for k in keys), [k for k in keys if "lora_" not in k][:3]
    assert ckpt["global_step"] == 3
    assert ckpt["lit_unlearn"]["method"] == "GradDiff"
    assert any(t.abs().sum() > 0 for k, t in ckpt["state_dict"].items() if "lora_B" in k)  # trained, not init


def test_fit_exports_the_adapter(fit_run):
    adapter = fit_run["run_dir"] / "adapter"
    assert (adapter / "adapter_config.json").is_file()
    assert (adapter / "adapter_model.safetensors").is_file()
    assert json.loads((adapter / "adapter_config.json").read_text())["r"] == 4


def test_fit_metrics_json(fit_run):
    record = fit_run["metrics"]
    assert record["subcommand"] == "fit"
    assert record["config"]["model"]["class_path"] == "lit_unlearn.methods.GradDiff"
    assert record["config"]["trainer"]["max_steps"] == 3  # the command-line override is recorded
    versions = record["versions"]
    for pkg in ("python", "torch", "lightning", "transformers", "peft"):
        assert versions[pkg], pkg
    assert versions["torch"] == torch.__version__
    metrics = record["metrics"]
    assert metrics["global_step"] == 3
    for stage in ("before", "after"):
        assert set(metrics[stage]) == set(SPLITS)
        for split in SPLITS:
            values = metrics[stage][split]
            assert set(METRICS) <= set(values)
            assert values["nll"] > 0 and 0 <= values["prob"] <= 1
            assert 0 <= values["acc"] <= 1 and 0 <= values["exact"] <= 1
    assert metrics["before"] != metrics["after"], "3 steps at lr 0.02 changed nothing"
    assert {"eval_before", "fit", "eval_after"} <= set(record["wall_time_s"])
    assert all(v >= 0 for v in record["wall_time_s"].values())
    assert Path(metrics["last_checkpoint"]).is_file()
    assert (fit_run["run_dir"] / "config.yaml").is_file()


def test_eval_reproduces_the_fit_metrics(fit_run):
    run_dir = fit_run["run_dir"]
    cli = eval_main(["--config", str(run_dir / "config.yaml"), "--ckpt_path", str(run_dir / "checkpoints" / "last.ckpt")])
    record = json.loads((Path(cli.trainer.log_dir) / "eval_metrics.json").read_text())
    assert record["subcommand"] == "validate"
    assert record["metrics"]["ckpt_path"].endswith("last.ckpt")
    evaluated, after = record["metrics"]["eval"], fit_run["metrics"]["metrics"]["after"]
    assert set(evaluated) == set(after)
    for split in after:
        for k in METRICS:
            assert evaluated[split][k] == pytest.approx(after[split][k], rel=1e-5, abs=1e-7), (split, k)
    assert "eval" in record["wall_time_s"]


def test_eval_without_a_progress_bar_reports_each_split_with_an_eta(fit_run, capsys):
    run_dir = fit_run["run_dir"]
    capsys.readouterr()
    eval_main(["--config", str(run_dir / "config.yaml"), "--trainer.enable_progress_bar", "false",
               "--data.init_args.eval_batch_size", "1",  # a split of 4 batches or more is reported
               "--trainer.logger.init_args.save_dir", str(fit_run["root"] / "logs_progress")])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("eval ")]
    for split in SPLITS:  # about every quarter, and the last batch, with what is left: nothing
        mine = [line for line in lines if line.startswith(f"eval {split}: ")]
        assert 2 <= len(mine) <= 5 and mine[-1].endswith("ETA 0 s"), mine
    assert all(" batches, " in line for line in lines)


def test_second_stage_npo_from_the_first_stage_adapter(fit_run, tiny_model_dir):
    from lit_unlearn.models import load_causal_lm

    root, data = fit_run["root"], fit_run["data"]
    config = write_config(root / "npo.yaml", tiny_model_dir, data, root / "logs2",
                          {"class_path": "NPO", "init_adapter": str(fit_run["run_dir"] / "adapter"),
                           "retain": "nll", "reference": "cached"},
                          data={"mixing": "ratio", "batch_size": 4}, max_steps=2)
    cli = cli_main(["fit", "--config", config, "--export_merged", "true"])
    assert isinstance(cli.model, NPO) and cli.model.init_adapter == str(fit_run["run_dir"] / "adapter")
    run_dir = Path(cli.trainer.log_dir)
    record = json.loads((run_dir / "metrics.json").read_text())
    assert record["metrics"]["global_step"] == 2
    # the first stage's adapter is merged into the base: the second stage starts where the first ended
    first_after = fit_run["metrics"]["metrics"]["after"]
    for split in SPLITS:
        for k in METRICS:
            assert record["metrics"]["before"][split][k] == pytest.approx(first_after[split][k], rel=1e-5, abs=1e-7)
    assert record["metrics"]["after"] != record["metrics"]["before"]
    assert (run_dir / "adapter" / "adapter_config.json").is_file()
    # --export_merged: a plain transformers directory usable as a model name
    merged = load_causal_lm(str(run_dir / "merged"))
    assert not any("lora_" in n for n, _ in merged.named_parameters())
    # ... whose outputs are the trained model's, and the module now holds that merged model, adapter-free
    assert cli.model.adapter is None
    ids = torch.tensor([[5, 17, 42, 8, 99]])
    torch.testing.assert_close(merged(input_ids=ids).logits, cli.model.lm(input_ids=ids).logits, rtol=1e-4, atol=1e-5)
    evaluated = eval_main(["--config", str(run_dir / "config.yaml"), "--model.init_args.model", str(run_dir / "merged"),
                           "--model.init_args.init_adapter", "null",  # the config's fresh LoRA is the identity
                           "--trainer.logger.init_args.save_dir", str(root / "logs_merged")])
    for split in SPLITS:
        for k in METRICS:
            assert evaluated.model.last_eval[split][k] == pytest.approx(record["metrics"]["after"][split][k],
                                                                        rel=1e-4, abs=1e-6)


def test_restore_best_evaluates_and_exports_the_best_checkpoint_not_the_last(fit_run, tiny_model_dir):
    """--restore_best with a monitor: gradient ascent at a high lr raises the forget NLL at every validation, so the
    best checkpoint on ``val/forget/nll`` (mode min) is the first; the evaluation after fit and the exported adapter
    are that checkpoint's, not the last step's. Without a monitor the flag is one error line."""
    from lit_unlearn.core.errors import LitUnlearnError

    root, data = fit_run["root"], fit_run["data"]
    config = write_config(root / "ga_best.yaml", tiny_model_dir, data, root / "logs_best",
                          {"class_path": "GradAscent", "lr": 0.05}, max_steps=-1)
    cli = cli_main(["fit", "--config", config, "--trainer.max_epochs", "3", "--checkpoint.monitor", "val/forget/nll",
                    "--checkpoint.mode", "min", "--restore_best", "true"])
    run_dir = Path(cli.trainer.log_dir)
    record = json.loads((run_dir / "metrics.json").read_text())["metrics"]
    history = record["history"]
    nlls = [h["val/forget/nll"] for h in history]
    assert len(nlls) == 3 and nlls[0] < nlls[-1]  # the ascent worked: the last epoch is not the best
    restored = record["restored_best"]
    best = min(range(3), key=lambda i: nlls[i])
    assert restored["global_step"] == history[best]["step"] < record["global_step"]
    assert record["after"]["forget"]["nll"] == pytest.approx(nlls[best], rel=1e-5)
    saved = torch.load(restored["path"], map_location="cpu", weights_only=False)["state_dict"]
    from safetensors.torch import load_file

    exported = load_file(str(run_dir / "adapter" / "adapter_model.safetensors"))
    b_saved = [v for k, v in saved.items() if "lora_B" in k][0]
    assert any(torch.equal(b_saved, v) for v in exported.values())
    with pytest.raises(LitUnlearnError, match="--restore_best true needs --checkpoint.monitor"):
        cli_main(["fit", "--config", config, "--restore_best", "true", "--trainer.max_epochs", "1",
                  "--trainer.logger.init_args.save_dir", str(root / "logs_best2")])


def test_a_plain_model_is_evaluated_without_a_method_class(fit_run, capsys):
    """``--model ScoredModel`` (no unlearning method): the run's saved adapter folded into the base scores what the
    run's own evaluation after fit scored; fit refuses it, and a method's checkpoint on it is refused (it would
    restore nothing), each with one line and exit code 2."""
    from lit_unlearn.cli import main
    from lit_unlearn.eval.module import ScoredModel

    run_dir, root = fit_run["run_dir"], fit_run["root"]
    after = fit_run["metrics"]["metrics"]["after"]
    plain = ["--config", str(run_dir / "config.yaml"), "--model", "ScoredModel",
             "--model.init_adapter", str(run_dir / "adapter"), "--trainer.logger.init_args.save_dir",
             str(root / "logs_plain")]
    cli = eval_main(plain)
    assert type(cli.model) is ScoredModel and cli.model.adapter is None
    assert not any(p.requires_grad for p in cli.model.parameters())
    assert cli.model.scorer._head[0] is cli.model.lm.get_output_embeddings()  # frozen: the lean head qualifies
    for split in SPLITS:
        for k in METRICS:
            assert cli.model.last_eval[split][k] == pytest.approx(after[split][k], rel=1e-5, abs=1e-7), (split, k)
    assert main(["fit", *plain]) == 2
    assert "fit trains an unlearning method; --model ScoredModel only evaluates" in capsys.readouterr().err
    assert main([*plain, "--ckpt_path", str(run_dir / "checkpoints" / "last.ckpt")], evaluate=True) == 2
    # (LightningCLI rebuilds the class the checkpoint's hyperparameters name, GradDiff, with no adapter)
    assert "use the run's own config.yaml" in capsys.readouterr().err


def test_lion_from_a_config_makes_sign_updates(fit_run, tiny_model_dir, tmp_path, no_run):
    """``--model.optimizer`` takes an optimizer from a maintained package (Lion, lion-pytorch, as the Deeb & Roger
    and WMDP recipes use); its first step moves every trained weight by exactly lr (sign(g), no weight decay)."""
    from types import SimpleNamespace

    from lion_pytorch import Lion

    config = write_config(tmp_path / "c.yaml", tiny_model_dir, fit_run["data"], tmp_path / "logs",
                          {"class_path": "GradDiff"})
    cli = cli_main(["fit", "--config", config, "--model.init_args.optimizer", "lion_pytorch.Lion",
                    "--model.init_args.optimizer.init_args.weight_decay", "0.0", "--model.init_args.lr", "0.001"])
    method = cli.model
    method.configure_model()
    method._trainer = SimpleNamespace(estimated_stepping_batches=4)
    opt = method.configure_optimizers()["optimizer"]
    assert isinstance(opt, Lion) and opt.param_groups[0]["lr"] == 0.001
    trained = {n: p for n, p in method.named_parameters() if p.requires_grad}
    before = {n: p.detach().clone() for n, p in trained.items()}
    for p in trained.values():
        p.grad = torch.randn_like(p)
    opt.step()
    for n, p in trained.items():
        torch.testing.assert_close((p.detach() - before[n]).abs(), torch.full_like(p, 0.001), rtol=1e-3, atol=1e-7)


def test_model_name_and_max_length_links(fit_run, tiny_model_dir, tmp_path, no_run):
    root, data = fit_run["root"], fit_run["data"]
    config = write_config(tmp_path / "c.yaml", "smollm2-135m-instruct", data, tmp_path / "logs",
                          {"class_path": "GradDiff"})
    cli = cli_main(["fit", "--config", config])
    assert cli.datamodule.tokenizer_name == "smollm2-135m-instruct"
    cli = cli_main(["fit", "--config", config, "--model.init_args.model", tiny_model_dir,
                    "--data.init_args.max_length", "48"])
    assert isinstance(cli.model, GradDiff)
    assert cli.model.model_name == tiny_model_dir
    assert cli.datamodule.tokenizer_name == tiny_model_dir
    assert cli.datamodule.max_length == 48 and cli.model.max_length == 48
    assert cli.model.lm is None
    # the value is stated once: a linked target set on its own is overridden by the link
    cli = cli_main(["fit", "--config", config, "--data.init_args.tokenizer", "other"])
    assert cli.datamodule.tokenizer_name == cli.model.model_name == "smollm2-135m-instruct"


def test_unknown_method_is_a_parse_error(fit_run, tmp_path, no_run, tiny_model_dir, capsys):
    config = write_config(tmp_path / "c.yaml", tiny_model_dir, fit_run["data"], tmp_path / "logs",
                          {"class_path": "NoSuchMethod"})
    with pytest.raises(SystemExit):
        cli_main(["fit", "--config", config])
    assert "NoSuchMethod" in capsys.readouterr().err


DDP_SCRIPT = """
import json, sys
import torch
torch.set_num_threads(1)
from lit_unlearn.methods.base import UnlearningMethod

_step = UnlearningMethod.training_step


def spy(self, batch, batch_idx):
    with open(f"rank{self.global_rank}.jsonl", "a") as f:
        f.write(json.dumps({k: batch[k]["index"].tolist() for k in ("forget", "retain")}) + "\\n")
    return _step(self, batch, batch_idx)


UnlearningMethod.training_step = spy
from lit_unlearn.cli import cli_main
cli_main(["fit", "--config", sys.argv[1], "--trainer.devices", "2", "--trainer.strategy", "ddp",
          "--data.init_args.mixing", sys.argv[2], "--trainer.max_steps", "2"])
"""


@pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                    reason="needs torch.distributed with gloo")
def test_ddp_ranks_train_on_disjoint_forget_rows(fit_run, tiny_model_dir, tmp_path):
    """Two CPU processes under Lightning's DDP (a subprocess: DDP re-launches the script). Regression test for the
    data module reading the world size from its trainer: every rank used to train on the same rows."""
    import os
    import subprocess
    import sys

    config = write_config(tmp_path / "ddp.yaml", tiny_model_dir, fit_run["data"], tmp_path / "logs",
                          {"class_path": "GradDiff"}, data={"batch_size": 4}, max_steps=2)
    (tmp_path / "ddp_run.py").write_text(DDP_SCRIPT)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "ddp_run.py", config, "ratio"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    steps = [[json.loads(line) for line in (tmp_path / f"rank{r}.jsonl").read_text().splitlines()] for r in (0, 1)]
    assert len(steps[0]) == len(steps[1]) == 2
    for s0, s1 in zip(*steps):
        assert len(s0["forget"]) == 1 and len(s0["retain"]) == 3  # 3:1 per rank
        assert not set(s0["forget"]) & set(s1["forget"])
    forget_seen = [i for s in steps[0] + steps[1] for i in s["forget"]]
    assert sorted(forget_seen) == list(range(len(FORGET_ROWS)))  # one pass over forget, split between ranks
    records = list((tmp_path / "logs").rglob("metrics.json"))
    assert len(records) == 1  # written by rank 0 only


def test_eval_in_the_run_directory_keeps_the_fit_config(fit_run):
    run_dir = fit_run["run_dir"]
    before = (run_dir / "config.yaml").read_bytes()
    cli = eval_main(["--config", str(run_dir / "config.yaml"),
                     "--ckpt_path", str(run_dir / "checkpoints" / "last.ckpt"),
                     "--trainer.logger.init_args.version", run_dir.name])
    assert Path(cli.trainer.log_dir) == run_dir
    assert (run_dir / "config.yaml").read_bytes() == before  # the fit's config is not overwritten
    assert (run_dir / "eval_config.yaml").is_file()
    record = json.loads((run_dir / "eval_metrics.json").read_text())
    assert record["subcommand"] == "validate" and set(record["metrics"]["eval"]) == set(SPLITS)


def test_eval_help_lists_evaluation_flags_only_and_fit_help_keeps_them(capsys):
    from lit_unlearn.cli import main

    with pytest.raises(SystemExit):
        main(["--help"], evaluate=True)
    shown = capsys.readouterr().out
    assert "--ckpt_path" in shown and "--trainer.devices" in shown and "--model" in shown
    for fit_only in ("--guard.retain_floor", "--checkpoint.save_last", "--eval_before", "--export_merged",
                     "--trainer.max_epochs", "--trainer.gradient_clip_val", "--optimizer"):
        assert fit_only not in shown, fit_only
    assert len(shown.splitlines()) < 400
    with pytest.raises(SystemExit):
        main(["fit", "--help"])
    fit = capsys.readouterr().out
    assert "--guard.retain_floor" in fit and "--trainer.max_epochs" in fit and "--export_merged" in fit


def test_a_shipped_config_finds_earlier_stages_under_the_run_root_not_the_working_directory(no_run, tmp_path,
                                                                                          monkeypatch):
    """``{save_dir}/...`` in a shipped config is an earlier stage's output under the logger's save_dir: moving the
    runs moves what the later stages read, from any working directory."""
    monkeypatch.chdir(tmp_path)
    runs = tmp_path / "elsewhere" / "runs"
    cli = cli_main(expand_config_args(["fit", "--config", "tofu/base", "--config", "methods/npo",
                                       "--trainer.logger.init_args.save_dir", str(runs)]))
    assert cli.model.init_adapter == str(runs / "tofu" / "finetune" / "adapter")
    assert str(cli.config.fit.data.init_args.reference) == str(runs / "tofu" / "retain" / "rows" / "after")
    cli = cli_main(expand_config_args(["fit", "--config", "tofu/base", "--config", "methods/npo"]))
    assert cli.model.init_adapter == str(tmp_path / "checkpoints" / "tofu" / "finetune" / "adapter")
    for path in (REPO_ROOT / "configs").rglob("*.yaml"):  # no shipped value names a working-directory path
        values = [line.split("#")[0] for line in path.read_text().splitlines() if not line.lstrip().startswith("#")]
        assert not [v for v in values if ": checkpoints/" in v or "{out_dir: checkpoints" in v], path
