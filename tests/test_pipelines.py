"""The pipeline layer's own pieces on the tiny model: the demo as a declaration (its values pinned to the driver it
replaced), pass-through flags, and the runner's refusal of bad declarations."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lit_unlearn.core.errors import ConfigError
from lit_unlearn.pipelines.runner import Runner, Stage, argv_values


def _close(got, want, where: str) -> None:
    if isinstance(want, dict):
        assert set(got) >= set(want), where
        for key, value in want.items():
            _close(got[key], value, f"{where}.{key}")
    elif isinstance(want, float):
        assert got == pytest.approx(want, abs=1e-6), where
    else:
        assert got == want, where


def test_the_demo_declaration_gives_the_old_drivers_values(tiny_model_dir, tmp_path, capsys):
    from lit_unlearn.demo import format_summary, run_demo

    summary = run_demo(tmp_path / "demo", n_people=8, model=tiny_model_dir,
                       extra=["--trainer.max_epochs", "1", "--trainer.enable_progress_bar", "false",
                              "--data.init_args.max_length", "64"])
    assert list(summary["stages"]) == ["base", "learn", "unlearn"]
    assert summary["stages"]["unlearn"]["forget acc"] == summary["unlearn"]["forget"]["acc"]
    assert summary["stages"]["base"]["retain prob"] == summary["base"]["retain"]["prob"]
    pinned = json.loads((Path(__file__).parent / "pinned" / "demo_tiny_summary.json").read_text())
    for key, want in pinned.items():
        _close(summary[key], want, key)
    config = (tmp_path / "demo" / "unlearn" / "config.yaml").read_text()
    assert str(tmp_path / "demo" / "learn" / "adapter") in config  # the learned adapter, from the learn stage
    assert json.loads((tmp_path / "demo" / "summary.json").read_text())["stages"] == summary["stages"]
    assert "greedy answers" in format_summary(summary)


def test_pass_through_flags_become_dotted_values_and_bad_ones_one_error():
    assert argv_values(["--a.b", "1", "--c=x y", "--d", "[1, 2]"]) == {"a.b": "1", "c": "x y", "d": "[1, 2]"}
    with pytest.raises(ConfigError, match=r"--trainer.max_steps has no value"):
        argv_values(["--trainer.max_steps"])
    with pytest.raises(ConfigError, match=r"'stray' is not a --key value pair"):
        argv_values(["stray", "--a", "1"])


def test_a_stage_naming_an_unknown_config_stops_before_anything_runs(tmp_path):
    runner = Runner(tmp_path / "run")
    with pytest.raises(ConfigError, match=r"tofu/no_such_method.*shipped"):
        runner.run([Stage("retain", ("tofu/base", "tofu/retain")), Stage("x", ("tofu/base", "tofu/no_such_method"))])
    assert not (tmp_path / "run" / "retain").exists()


def test_sides_of_one_key_are_gathered_into_one_mapping(tmp_path):
    runner = Runner(tmp_path / "run")
    stage = Stage("m", ("rapidun/base", "rapidun/rapidun"), needs={"data.init_args.weights@forget": "inf:f.jsonl",
                                                                   "data.init_args.weights@retain": "inf:r.jsonl",
                                                                   "model.init_args.model": "poison:merged"})
    got = runner.artifacts(stage)
    assert json.loads(got["data.init_args.weights"]) == {"forget": str(runner.out / "inf" / "f.jsonl"),
                                                         "retain": str(runner.out / "inf" / "r.jsonl")}
    assert got["model.init_args.model"] == str(runner.out / "poison" / "merged")


def test_every_method_has_one_config_and_benchmark_files_repeat_none_of_its_defaults():
    """configs/methods/ holds each registered unlearning method's class and defaults once; a benchmark's method file
    names the class and sets only values of its own (a corrected default is changed in one file)."""
    import yaml

    from lit_unlearn.config_files import config_root, method_class_of, method_configs, shipped_configs
    from lit_unlearn.methods import METHODS

    root = config_root()
    own = {n: method_class_of(root / f"{n}.yaml") for n in shipped_configs() if n.startswith("methods/")}
    missing = sorted(set(METHODS) - {"Finetune"} - set(own.values()))
    assert not missing, f"no configs/methods/ file for {missing}"
    repeated = []
    for name in shipped_configs():
        benchmark, method = name.split("/")
        if benchmark in ("methods", "demo"):
            continue
        try:
            configs = method_configs("sst2" if benchmark == "yelp" else benchmark, method)
        except ConfigError:
            continue  # not a method stage (base, learn, a setting)
        if name not in configs or len(configs) < 2:
            continue
        mine = (yaml.safe_load((root / f"{name}.yaml").read_text()).get("model") or {}).get("init_args") or {}
        for earlier in configs[:configs.index(name)]:
            theirs = (yaml.safe_load((root / f"{earlier}.yaml").read_text())["model"].get("init_args") or {})
            repeated += [f"{name}: {k}" for k, v in mine.items() if k != "adapter" and theirs.get(k) == v]
    assert not repeated, f"benchmark files repeat their method file's values: {repeated}"


def test_every_shipped_multiple_choice_benchmark_states_its_letter_style():
    """The MCQ letter token is a convention that moves accuracy ("A" vs " A"): each benchmark base that evaluates
    multiple choice says which one it uses rather than leaving it to a class default (issue 22)."""
    import yaml

    import lit_unlearn.data as data_modules
    from lit_unlearn.config_files import config_root

    checked = 0
    for base in sorted(config_root().glob("*/base.yaml")):
        data = yaml.safe_load(base.read_text())["data"]
        cls = getattr(data_modules, data["class_path"].rsplit(".", 1)[-1], None)
        if isinstance(cls, type) and issubclass(cls, data_modules.MCQDataModule):
            assert data["init_args"]["evaluator_args"]["mcq"]["letters"] in ("bare", "spaced"), base
            checked += 1
    assert checked >= 1  # Deeb & Roger's base
