"""The package as users install it: configs found by name and as package data (no checkout needed), the
``lit-unlearn`` command, and a wheel installed (not editable) into a fresh environment that runs a pipeline and the
console script from a directory outside the clone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from conftest import REPO_ROOT
from lit_unlearn.__main__ import PIPELINES, main
from lit_unlearn.cli import UnlearnCLI, cli_main
from lit_unlearn.config_files import config_root, expand_config_args, resolve_config, shipped_configs
from lit_unlearn.core.errors import ConfigError


def test_the_shipped_configs_are_the_repositorys_and_resolve_by_name(tmp_path):
    assert config_root().resolve() == (REPO_ROOT / "configs").resolve()  # the package-data link
    names = shipped_configs()
    assert "tofu/npo_gd" in names and "deeb_roger/rmu" in names and len(names) == len(
        list((REPO_ROOT / "configs").rglob("*.yaml")))
    assert resolve_config("tofu/npo_gd").resolve() == (REPO_ROOT / "configs" / "tofu" / "npo_gd.yaml").resolve()
    assert resolve_config("tofu/npo_gd.yaml") == resolve_config("tofu/npo_gd")
    own = tmp_path / "mine.yaml"
    own.write_text("seed_everything: 1\n")
    assert resolve_config(str(own)) == own  # a path wins
    args = expand_config_args(["fit", "--config", "tofu/base", f"--config={own}", "--config", "{seed_everything: 2}"])
    assert args[2].endswith("configs/tofu/base.yaml") and args[3] == f"--config={own}" and args[5].startswith("{")
    with pytest.raises(ConfigError, match=r"--config tofu/npo_xx: no such file.*shipped: tofu/base.*tofu/npo_gd"):
        resolve_config("tofu/npo_xx")


def test_the_cli_takes_config_names_from_any_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(UnlearnCLI, "_run_subcommand", lambda self, subcommand: None)
    cli = cli_main(["fit", "--config", "tofu/base", "--config", "tofu/npo_gd"])
    assert type(cli.model).__name__ == "NPO" and cli.model.retain == "nll"


def test_the_lit_unlearn_command(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in PIPELINES) and "tofu/npo_gd" in out
    assert main(["run", "--list"]) == 0
    assert [line.split()[0] for line in capsys.readouterr().out.splitlines()] == list(PIPELINES)
    assert main(["run", "nope"]) == 2 and "one of: demo, tofu" in capsys.readouterr().err
    assert main(["frobnicate"]) == 2 and "unknown command 'frobnicate'" in capsys.readouterr().err
    assert main(["fit", "--config", "tofu/npo_xx"]) == 2
    assert "--config tofu/npo_xx: no such file" in capsys.readouterr().err


def test_a_wheel_installed_elsewhere_runs_a_pipeline_and_the_console_script(tiny_model_dir, tmp_path):
    """Build the wheel, install it (not editable, no dependencies: they come from this environment's packages)
    into a fresh venv, and run the demo pipeline on the tiny model and ``lit-unlearn`` from a directory outside the
    clone: configs travel as package data."""
    wheels = tmp_path / "wheels"
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                            str(wheels), str(REPO_ROOT)], capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr[-2000:]
    wheel = next(wheels.glob("lit_unlearn-*.whl"))
    env_dir = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env_dir)], check=True, timeout=120)
    py = env_dir / "bin" / "python"
    site = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    # the dependencies (torch, lightning, ...) from this environment, as a plain path: its editable finder for
    # lit_unlearn is not loaded (a .pth of a directory added by a .pth is not processed)
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    install = subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "-q",
                              str(wheel)], capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stderr[-2000:]
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    where = subprocess.run([str(py), "-c", "import lit_unlearn; print(lit_unlearn.__file__)"], cwd=outside, env=env,
                           capture_output=True, text=True, check=True).stdout.strip()
    assert Path(where).is_relative_to(site), where  # the installed copy, not the checkout
    listed = subprocess.run([str(env_dir / "bin" / "lit-unlearn"), "list"], cwd=outside, env=env,
                            capture_output=True, text=True, timeout=300)
    assert listed.returncode == 0 and "tofu/npo_gd" in listed.stdout, listed.stderr[-2000:]
    # the setting recipes travel too: a dry run of TOFU's mini setting resolves its values from them
    dry = subprocess.run([str(env_dir / "bin" / "lit-unlearn"), "run", "tofu", "--mini", "3", "--dry-run", "--out",
                          str(outside / "tofu")], cwd=outside, env=env, capture_output=True, text=True, timeout=300)
    assert dry.returncode == 0, dry.stderr[-2000:]
    assert "(recipe tofu_mini: learn)" in dry.stdout and "(recipe tofu_mini: npo_gd)" in dry.stdout, dry.stdout
    demo = subprocess.run([str(env_dir / "bin" / "lit-unlearn"), "run", "demo", "--model", tiny_model_dir,
                           "--people", "8", "--out_dir", str(outside / "demo"), "--data.init_args.max_length", "64",
                           "--trainer.max_epochs", "2"], cwd=outside, env=env,
                          capture_output=True, text=True, timeout=900)
    assert demo.returncode == 0, demo.stderr[-3000:]
    summary = json.loads((outside / "demo" / "summary.json").read_text())
    assert set(summary) >= {"base", "learn", "unlearn"} and "forget" in summary["unlearn"]
