"""The corpus-unlearning setting of Deeb & Roger: the data module's corpora, training form and per-split subsets,
RIA / FWF reading their corpora, the RTT fold split (V never trained on), and the RTT sweep and the
learn -> unlearn -> RTT pipeline run end to end on a tiny model from the shipped configs."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

import torch

from conftest import needs_mirror, write_jsonl
from lit_unlearn.core.errors import DataError

N_Q = 4  # questions per split of the tiny copy


def write_random_bd(root, splits=range(10)) -> str:
    """A tiny copy of ``data/random_bd``: per split N_Q questions; the true corpus with two statements per question
    in question order and no ``original_question`` (as the original), the wrong-fact corpora with it."""
    d = root / "random_bd"
    d.mkdir(parents=True)
    for i in splits:
        qs = [{"question": f"When was P{i}{k} born?", "choices": [1900 + k, 1950, 1960, 1970], "answer": k % 4}
              for k in range(N_Q)]
        write_jsonl(d / f"split_{i}.jsonl", qs)
        write_jsonl(d / f"corpus_split_{i}.jsonl", [{"text": f"P{i}{k} was born in {1900 + k}{s}", "split": f"split_{i}"}
                                                    for k in range(N_Q) for s in (".", "!")])
        for kind in ("whp", "fwf"):
            write_jsonl(d / f"{kind}_corpus_split_{i}.jsonl", [
                {"text": f"{kind}: P{i}{k} was born in {1980 + k}.", "split": f"split_{i}",
                 "original_question": q["question"]} for k, q in enumerate(qs) for _ in range(1 + (k % 2))])
    return str(root)


def make_dm(root, tokenizer, **kwargs):
    from lit_unlearn.data import DeebRogerDataModule

    dm = DeebRogerDataModule(source=str(root), tokenizer=tokenizer, max_length=128, **kwargs)
    dm.setup("fit")
    return dm


def test_the_mcq_training_form_scores_the_text_or_the_answer(tmp_path, mcq_model_dir):
    root = write_random_bd(tmp_path / "data")
    dm = make_dm(root, mcq_model_dir, forget_splits=[0], retain_splits=[5], forget_corpus="mcq")
    row = dm.datasets["forget"].rows[0]
    text = "When was P00 born?\nA. 1900\nB. 1950\nC. 1960\nD. 1970\nAnswer: A. 1900"
    assert row["prompt"] == "" and row["answer"] == text  # "text": every token scored
    assert row["labels"][1:] == row["input_ids"][1:]
    dm = make_dm(root, mcq_model_dir, forget_splits=[0], retain_splits=[5], forget_corpus="mcq", mcq_loss="answer")
    row = dm.datasets["forget"].rows[0]
    assert row["prompt"] + row["answer"] == text and row["answer"] == " A. 1900"
    assert 0 < sum(t != -100 for t in row["labels"]) < len(row["input_ids"]) / 3
    # the retain corpus stays the true statements
    assert dm.datasets["retain"].rows[0]["answer"] == "P50 was born in 1900."


def test_questions_per_split_keeps_the_same_facts_in_every_corpus(tmp_path, tokenizer):
    root = write_random_bd(tmp_path / "data")
    kept = {}
    for corpus in ("corpus", "whp_corpus", "fwf_corpus", "mcq"):
        dm = make_dm(root, tokenizer.name_or_path, forget_splits=[1, 2], retain_splits=[5], forget_corpus=corpus,
                     questions_per_split=2)
        kept[corpus] = [r["answer"] for r in dm.datasets["forget"].rows]
        assert [r["question"] for r in dm.datasets["forget_mcq"].rows] == [
            "When was P10 born?", "When was P11 born?", "When was P20 born?", "When was P21 born?"]
        ids = [r["index"] for r in dm.datasets["forget"].rows]
        assert len(set(ids)) == len(ids)  # stable positions in the concatenated sources
    # by position (no original_question: 2 statements per question) and by original_question (1 or 2 per question)
    assert kept["corpus"] == [f"P{i}{k} was born in {1900 + k}{s}" for i in (1, 2) for k in (0, 1) for s in ".!"]
    assert kept["whp_corpus"] == [f"whp: P{i}{k} was born in {1980 + k}." for i in (1, 2) for k in (0, 1, 1)]
    assert all(a.startswith("fwf: P") for a in kept["fwf_corpus"]) and len(kept["fwf_corpus"]) == 6
    assert len(kept["mcq"]) == 4


def test_corpus_loss_number_scores_the_year_of_each_statement_only(tmp_path, tokenizer, make_method):
    """The original's NUMBER loss on the random birthdays (conf/random_bd.yaml:70, unlearn_corpus.py:282-292): GD
    ascends on the year's tokens, not on "was born in"; the text after the year is dropped (causal: the year's NLL is
    unchanged), and the retain term scores the years too."""
    from lit_unlearn.core.tokens import collate
    from lit_unlearn.methods import GradDiff

    root = write_random_bd(tmp_path / "data")
    text = make_dm(root, tokenizer.name_or_path, forget_splits=[0], retain_splits=[5])
    dm = make_dm(root, tokenizer.name_or_path, forget_splits=[0], retain_splits=[5], corpus_loss="number")
    for split in ("forget", "retain"):
        for whole, row in zip(text.datasets[split].rows, dm.datasets[split].rows):
            scored = tokenizer.decode([t for t in row["labels"] if t != -100]).strip()
            assert scored == whole["text"].split("born in ")[1][:4]  # the year, nothing else
            assert row["prompt"] + row["answer"] == whole["text"][:-1] and row["prompt"].endswith("born in ")
    # GD's ascent term is the year's CE: the same as the full statement's NLL restricted to the year's positions
    method = make_method(GradDiff)
    with torch.no_grad():
        rows = dm.datasets["forget"].rows
        full = method(collate(text.datasets["forget"].rows, tokenizer.pad_token_id, "forget"))
        year = method(collate(rows, tokenizer.pad_token_id, "forget"))
        n = year.mask.sum(-1)
        for i in range(len(rows)):
            end = int(year.mask[i].nonzero().max()) + 1  # the year's positions are the same in both
            torch.testing.assert_close(year.token_nll[i, :end][year.mask[i, :end]],
                                       full.token_nll[i, :end][year.mask[i, :end]], rtol=1e-5, atol=1e-5)
        assert (n < full.mask.sum(-1)).all()
    (tmp_path / "data" / "random_bd" / "whp_corpus_split_0.jsonl").write_text(
        json.dumps({"text": "no number here", "split": "split_0", "original_question": "When was P00 born?"}) + "\n")
    with pytest.raises(DataError, match="has no number to score .*corpus_loss number"):
        make_dm(root, tokenizer.name_or_path, forget_splits=[0], retain_splits=[5], forget_corpus="whp_corpus",
                corpus_loss="number")


@needs_mirror
def test_the_shipped_random_birthdays_config_ascends_on_the_years(monkeypatch, tokenizer):
    """configs/deeb_roger/base.yaml on the real random_bd statements: every forget row's scored tokens are its year."""
    import re

    from conftest import REPO_ROOT
    from lit_unlearn.cli import UnlearnCLI, cli_main

    monkeypatch.chdir(REPO_ROOT)
    monkeypatch.setattr(UnlearnCLI, "_run_subcommand", lambda self, subcommand: None)
    cli = cli_main(["fit", "--config", "configs/deeb_roger/base.yaml", "--config", "configs/deeb_roger/gd.yaml",
                    "--data.init_args.questions_per_split", "4", "--model.init_args.model", tokenizer.name_or_path])
    dm = cli.datamodule
    dm.setup("fit")
    rows = dm.datasets["forget"].rows
    assert len(rows) == 5 * 4 * 3  # 3 statements per question
    for row in rows:
        scored = tokenizer.decode([t for t in row["labels"] if t != -100]).strip()
        assert re.fullmatch(r"\d{4}", scored) and scored in row["text"], (scored, row["text"])


def test_a_corpus_that_cannot_be_matched_to_its_questions_is_one_line(tmp_path, tokenizer):
    root = write_random_bd(tmp_path / "data")
    path = tmp_path / "data" / "random_bd" / "corpus_split_0.jsonl"
    path.write_text(path.read_text() + json.dumps({"text": "one more", "split": "split_0"}) + "\n")
    with pytest.raises(DataError, match=r"corpus_split_0.jsonl has 9 statements for 4 questions and no "
                                        r"original_question field"):
        make_dm(root, tokenizer.name_or_path, forget_splits=[0], retain_splits=[5], questions_per_split=2)


@pytest.mark.parametrize("kwargs, message", [
    ({"forget_splits": [0, 1], "heldout_splits": [1]}, r"--data.heldout_splits and --data.forget_splits share "
                                                       r"split 1"),
    ({"heldout_splits": [5]}, r"--data.heldout_splits and --data.retain_splits share split 5"),
    ({"questions_per_split": 0}, r"--data.questions_per_split must be >= 1"),
    ({"mcq_loss": "letters"}, r"--data.mcq_loss must be text or answer"),
    ({"corpus_loss": "year"}, r"--data.corpus_loss must be text or number"),
    ({"dataset": "mmlu_cats_random_trimmed", "forget_splits": [10]}, r"mmlu_cats_random_trimmed has splits 0-9"),
])
def test_bad_split_roles_are_one_line(kwargs, message, tmp_path, tokenizer):
    root = write_random_bd(tmp_path / "data")
    with pytest.raises(DataError, match=message):
        make_dm(root, tokenizer.name_or_path, **{"forget_splits": [0], "retain_splits": [5], **kwargs})


def test_mmlu_categories_by_index_name_the_papers_files():
    from lit_unlearn.data import DeebRogerDataModule

    dm = DeebRogerDataModule(dataset="mmlu_cats_random_trimmed", forget_corpus="whp_corpus")
    assert dm.sources["forget_mcq"] == [f"aghyad-deeb/unlearning_evaluation:mmlu_cats_random_trimmed@mmlu_{c}"
                                        for c in ("STEM", "business", "chemistry", "culture", "geography")]
    assert dm.sources["retain"][-1] == ("aghyad-deeb/unlearning_evaluation:mmlu_cats_random_trimmed@"
                                        "corpus_mmlu_social sciences")
    assert dm.sources["forget"][0].endswith("@whp_corpus_mmlu_STEM")


def test_the_wmdp_setting_retains_mmlu_categories():
    from lit_unlearn.data import DeebRogerDataModule

    dm = DeebRogerDataModule(dataset="wmdp-deduped", retain_dataset="mmlu_cats_random_trimmed")
    prefix = "aghyad-deeb/unlearning_evaluation:"
    assert dm.sources["forget"] == [f"{prefix}wmdp-deduped@corpus_split_{i}" for i in range(5)]
    assert dm.sources["retain_mcq"][0] == f"{prefix}mmlu_cats_random_trimmed@mmlu_health"
    assert dm.sources["retain"][0] == f"{prefix}mmlu_cats_random_trimmed@corpus_mmlu_health"
    # with another retain data set, split indices may repeat across the two
    dm = DeebRogerDataModule(dataset="wmdp-deduped", retain_dataset="mmlu_cats_random_trimmed", retain_splits=[0])
    assert dm.sources["retain"] == [f"{prefix}mmlu_cats_random_trimmed@corpus_mmlu_STEM"]


# ---- RIA and FWF ---------------------------------------------------------------------------------------------------
def run_fit(tmp_path, model_dir, root, method, corpus, extra=()):
    from lit_unlearn.cli import main

    return main(["fit", "--model", method, "--model.init_args.model", model_dir, "--model.init_args.lr", "0.01",
                 "--data", "DeebRogerDataModule", "--data.init_args.source", root,
                 "--data.init_args.forget_splits", "[0]", "--data.init_args.retain_splits", "[5]",
                 "--data.init_args.forget_corpus", corpus, "--data.init_args.max_length", "128",
                 "--trainer.max_steps", "2", "--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false",
                 "--trainer.logger.init_args.save_dir", str(tmp_path / "logs"), *extra])


@pytest.mark.parametrize("method, corpus", [("RIA", "whp_corpus"), ("FixedWrongFact", "fwf_corpus")])
def test_ria_and_fwf_read_their_wrong_fact_corpus(method, corpus, tmp_path, mcq_model_dir, monkeypatch, capsys):
    from conftest import REPO_ROOT
    from lit_unlearn.cli import UnlearnCLI, cli_main

    root = write_random_bd(tmp_path / "data")
    # the shipped config pairs the method with its corpus
    with monkeypatch.context() as m:
        m.chdir(REPO_ROOT)
        m.setattr(UnlearnCLI, "_run_subcommand", lambda self, subcommand: None)
        config = f"configs/deeb_roger/{'ria' if method == 'RIA' else 'fwf'}.yaml"
        cli = cli_main(["fit", "--config", "configs/deeb_roger/base.yaml", "--config", config])
        assert type(cli.model).__name__ == method and cli.datamodule.forget_corpus == corpus
    monkeypatch.chdir(tmp_path)
    assert run_fit(tmp_path, mcq_model_dir, root, method, corpus) == 0
    # any other corpus is refused when training starts, naming the flag
    assert run_fit(tmp_path, mcq_model_dir, root, method, "corpus") == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == (f"lit_unlearn: error: {method} descends on the {corpus} statements, but --data.forget_corpus is "
                   f"corpus: set --data.forget_corpus {corpus}")


def test_ria_lowers_the_nll_of_the_wrong_facts(tmp_path, make_method, mcq_model_dir):
    """RIA's step is a descent on the forget rows: after a few steps on the wrong-fact statements their NLL is lower
    (GD, on the same rows, raises it)."""
    import torch

    from lit_unlearn.data.base import _Collate
    from lit_unlearn.methods import RIA, GradDiff

    root = write_random_bd(tmp_path / "data")
    dm = make_dm(root, mcq_model_dir, forget_splits=[0], retain_splits=[5], forget_corpus="whp_corpus")
    pad = dm.tokenizer.pad_token_id
    batch = {s: _Collate(pad, s)(dm.datasets[s].rows) for s in ("forget", "retain")}
    moved = {}
    for cls in (RIA, GradDiff):
        method = make_method(cls, model_dir=mcq_model_dir, lr=0.05)
        opt = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=0.05)

        def forget_nll() -> float:
            with torch.no_grad():
                return method(batch["forget"]).weighted_ce(None).item()

        start = forget_nll()
        for _ in range(3):
            opt.zero_grad()
            method.training_step(batch, 0).backward()
            opt.step()
        moved[cls.__name__] = forget_nll() - start
    assert moved["RIA"] < 0 < moved["GradDiff"]


# ---- RTT ---------------------------------------------------------------------------------------------------------------
def test_rtt_folds_hold_out_disjoint_splits_that_cover_the_forget_set():
    from lit_unlearn.rtt import RTTError, folds

    assert folds([0, 1, 2, 3, 4]) == [([0, 2, 4], [1, 3]), ([1, 3], [0, 2, 4])]
    for v, t in folds([0, 1, 2, 3, 4], 3):
        assert not set(v) & set(t) and sorted(v + t) == [0, 1, 2, 3, 4]
    with pytest.raises(RTTError, match="--folds must be between 2 and the number of forget splits"):
        folds([0, 1], 3)


def test_an_rtt_sub_run_never_trains_on_its_heldout_questions(tmp_path, tokenizer):
    root = write_random_bd(tmp_path / "data")
    dm = make_dm(root, tokenizer.name_or_path, forget_splits=[1, 3], heldout_splits=[0, 2, 4], forget_corpus="mcq",
                 train_splits=["forget"], evaluators={"forget_mcq": []})
    trained = {r["question"] for s in dm.train_splits for r in dm.datasets[s].rows}
    heldout = {r["question"] for r in dm.datasets["heldout_mcq"].rows}
    assert len(heldout) == 3 * N_Q and len(trained) == 2 * N_Q and not trained & heldout
    assert dm.train_splits == ("forget",) and "heldout_mcq" in dm.eval_split_names
    assert "forget_mcq" not in dm.eval_split_names


@pytest.fixture
def random_bd_mirror(tmp_path, monkeypatch):
    """The tiny random_bd as the mirror's deeb_roger/ folder, so the shipped configs' hub names resolve to it."""
    from lit_unlearn.data.catalog import MIRROR_ENV

    write_random_bd(tmp_path / "mirror" / "deeb_roger")
    monkeypatch.setenv(MIRROR_ENV, str(tmp_path / "mirror"))
    return tmp_path / "mirror"


def test_the_relearning_pipeline_runs_learn_unlearn_rtt_from_the_shipped_configs(
        random_bd_mirror, mcq_model_dir, tmp_path, monkeypatch, capsys):
    from lit_unlearn.relearning import format_markdown, run_pipeline

    monkeypatch.chdir(tmp_path)
    out = tmp_path / "runs" / "dr_tiny"
    summary = run_pipeline(["gd", "ria"], out, mini=2, model=mcq_model_dir, rtt_lrs=(1e-3, 1e-2), rtt_epochs=2,
                           unlearn_epochs=1)
    stages = summary["stages"]
    assert list(stages) == ["learn", "gd", "ria"]
    for name, row in stages.items():
        assert 0 <= row["forget"] <= 1 and 0 <= row["retain_cal"] <= 1 and 0 <= row["rtt_best"] <= 1, name
    # the RTT of the GD model: 2 folds x 2 lrs, each with epochs 0 (before), 1, 2; V = 3 and 2 splits x 2 questions
    rtt = json.loads((out / "rtt_gd" / "rtt_summary.json").read_text())
    assert sorted(rtt["runs"]) == ["fold0_lr0.001", "fold0_lr0.01", "fold1_lr0.001", "fold1_lr0.01"]
    assert [pt["epoch"] for pt in rtt["runs"]["fold0_lr0.001"]["curve"]] == [0, 1, 2]
    assert [pt["epoch"] for pt in rtt["runs"]["fold0_lr0.01"]["curve"]] == [1, 2]  # epoch 0 is evaluated once
    assert [f["n"] for f in rtt["folds"]] == [6, 4]
    for f in rtt["folds"]:
        best = max(pt["heldout"] for n, r in rtt["runs"].items() if r["fold"] == f["fold"] for pt in r["curve"]
                   if pt["epoch"] > 0)
        assert f["best"] == best
    # each sub-run trained on T only, from the learned + unlearned adapters
    config = (out / "rtt_gd" / "fold0_lr0.001" / "config.yaml").read_text()
    assert "heldout_splits:\n      - 0\n      - 2\n      - 4" in config.replace("    - ", "      - ")
    assert str(out / "gd" / "adapter") in config and str(out / "learn" / "adapter") in config
    table = format_markdown(summary)
    assert "| learned (before unlearning) |" in table and "| gd |" in table
    capsys.readouterr()
    again = run_pipeline(["gd", "ria"], out, mini=2, model=mcq_model_dir, rtt_lrs=(1e-3, 1e-2), rtt_epochs=2)
    assert capsys.readouterr().out.count("reusing") == 3 and again["stages"] == stages
    # the values the hand-written driver this pipeline replaced gave on this tiny setting (issue 21), re-pinned when the
    # mini recipe's learn stage became lr 3e-4 for 16 epochs (its calibrated accuracies and one RTT retain value moved)
    # and again when its gd section became the searched point (lr 2.3e-4, retain weight 28): the GD RTT retain value
    pinned = json.loads((Path(__file__).parent / "pinned" / "relearning_tiny_summary.json").read_text())
    for stage, row in pinned.items():
        for key, value in row.items():
            assert stages[stage][key] == (pytest.approx(value, abs=1e-4) if isinstance(value, float) else value), \
                (stage, key)


def test_grun_gated_rmu_runs_in_the_pipeline_and_reports_its_gate(random_bd_mirror, mcq_model_dir, tmp_path,
                                                                  monkeypatch, capsys):
    """GRUN's WMDP variant from its shipped config: the unlearning run reports the gate on every split, and the
    relearning attack trains a LoRA on top of the frozen intervention."""
    from lit_unlearn.relearning import run_pipeline

    monkeypatch.chdir(tmp_path)
    out = tmp_path / "runs" / "dr_grun"
    summary = run_pipeline(["grun_rmu"], out, mini=2, model=mcq_model_dir, rtt_lrs=(1e-3,), rtt_epochs=1,
                           unlearn_epochs=1)
    assert 0 <= summary["stages"]["grun_rmu"]["rtt_best"] <= 1
    record = json.loads((out / "grun_rmu" / "metrics.json").read_text())
    gates = {split: m["gate_mean"] for split, m in record["metrics"]["after"].items()}
    assert set(gates) == {"forget_mcq", "retain_mcq"} and all(0 < g < 1 for g in gates.values()), gates
    # the mini recipe's own section for it: GRUN's LoReFT lr (4e-3), not the mini LoRA lr (1e-4)
    assert "--model.init_args.lr 0.004" in record["command"]
    saved = json.loads((out / "grun_rmu" / "adapter" / "adapter_config.json").read_text())
    assert saved["adapter_type"] == "LoReFT" and saved["position"] == "fraction" and saved["fraction"] == 0.8
    config = (out / "rtt_grun_rmu" / "fold0_lr0.001" / "config.yaml").read_text()
    assert str(out / "grun_rmu" / "adapter") in config
    capsys.readouterr()


def test_rtt_bad_flags_are_one_line(tmp_path):
    from lit_unlearn.rtt import main

    with pytest.raises(SystemExit, match=r"lit_unlearn.rtt: error: --init-adapter .*nope: no such adapter directory"):
        main(["--init-adapter", str(tmp_path / "nope"), "--out", str(tmp_path / "o")])
    with pytest.raises(SystemExit, match=r"--rtt-lrs takes comma-separated numbers"):
        main(["--rtt-lrs", "1e-5,x", "--out", str(tmp_path / "o")])


def test_with_several_devices_the_sweep_fans_out_to_child_processes(random_bd_mirror, mcq_model_dir, tmp_path,
                                                                    monkeypatch):
    """``devices: 2`` runs the sub-runs two at a time as ``python -m lit_unlearn fit`` child processes (the installed
    package, from any directory), each pinned to one device
    (``CUDA_VISIBLE_DEVICES``; on this CPU machine the pin is inert), with the same records as in-process runs."""
    import subprocess

    from lit_unlearn import rtt

    monkeypatch.chdir(tmp_path)
    seen = []
    real = subprocess.run

    def spy(cmd, env=None, **kwargs):
        seen.append((cmd[1:4], env.get("CUDA_VISIBLE_DEVICES")))
        return real(cmd, env=env, **kwargs)

    monkeypatch.setattr(rtt.subprocess, "run", spy)
    from lit_unlearn.relearning import run_pipeline

    # a learned adapter to attack: the learn stage alone (no method, no control attack)
    run_pipeline([], tmp_path / "runs", mini=2, model=mcq_model_dir, rtt_lrs=(1e-3,), rtt_epochs=1, control=False)
    adapter = str(tmp_path / "runs" / "learn" / "adapter")
    summary = rtt.run_rtt([adapter], tmp_path / "rtt", mcq_model_dir, lrs=(1e-3, 1e-2), epochs=1, mini=2, devices=2,
                          extra=["--trainer.accelerator", "cpu"])
    assert sorted(dev for _, dev in seen) == ["0", "0", "1", "1"]
    assert all(cmd == ["-m", "lit_unlearn", "fit"] for cmd, _ in seen)
    assert len(summary["runs"]) == 4 and all(len(r["curve"]) >= 1 for r in summary["runs"].values())


def test_the_table_shows_what_a_collapsed_run_scored_at_the_trip():
    from lit_unlearn.pipelines.runner import summarize
    from lit_unlearn.relearning import COLUMNS, format_markdown

    after = {"forget_mcq": {"mcq_acc": 0.9, "mcq_acc_calibrated": 0.8},
             "retain_mcq": {"mcq_acc": 0.85, "mcq_acc_calibrated": 0.8}}
    record = {"status": "collapsed", "wall_time_s": {"fit": 12.0}, "metrics": {"after": after, "collapse_events": [
        {"step": 120, "evaluation": {"val/forget_mcq/mcq_acc": 0.3, "val/retain_mcq/mcq_acc": 0.25,
                                     "val/forget_mcq/mcq_acc_calibrated": 0.7}}]}}
    row = summarize(record, COLUMNS)
    row.update(rtt_best=0.45, rtt_retain=0.8, recovered=0.45 / 0.9)  # what run_pipeline adds after the attack
    assert row["forget"] == 0.9 and row["collapsed"]["retain"] == 0.25 and row["collapsed"]["rtt_best"] is None
    lines = format_markdown({"stages": {"gd": row}}).splitlines()
    assert lines[2].startswith("| gd (collapsed: restored) | 0.900 | 0.800 | 0.850 | 0.800 | 0.450 | 0.800 | 0.500 |")
    assert lines[3].startswith("| gd at the trip (step 120) | 0.300 | 0.700 | 0.250 | - | - | - | - |")


def test_a_stopped_sub_run_stops_the_sweep_with_its_exit_code(tmp_path, monkeypatch, capsys):
    from lit_unlearn import rtt

    calls = []
    monkeypatch.setattr(rtt, "_run", lambda args, device: calls.append(args) or 130)  # SIGINT in the first one
    (tmp_path / "adapter").mkdir()
    with pytest.raises(SystemExit) as stop:
        rtt.run_rtt([str(tmp_path / "adapter")], tmp_path / "rtt", lrs=(1e-5, 1e-4), epochs=1, devices=1)
    assert stop.value.code == 130 and len(calls) == 1
    assert "sub-run fold0_lr1e-05 was stopped by a signal" in capsys.readouterr().err


def test_the_requantization_audit_evaluates_each_model_merged_and_quantized(random_bd_mirror, mcq_model_dir,
                                                                            tmp_path, monkeypatch):
    """Issue 24's audit: the unlearned model is exported merged and evaluated loaded at int8 and nf4 with the stage's
    own evaluators, the learned model likewise as the control, and the recovery of the forget accuracy is the share
    of the unlearning's drop the quantized model undoes."""
    from lit_unlearn.pipelines.audit import audit_precisions, recovery
    from lit_unlearn.relearning import run_pipeline

    monkeypatch.chdir(tmp_path)
    out = tmp_path / "runs" / "dr_audit"
    summary = run_pipeline(["gd"], out, mini=2, model=mcq_model_dir, unlearn_epochs=1, control=False,
                           audit=("int8", "nf4"))
    stages = summary["stages"]
    assert {"learn", "gd", "gd_int8", "gd_nf4", "learn_int8", "learn_nf4"} <= set(stages)
    assert (out / "gd" / "merged" / "config.json").is_file() and (out / "learn" / "merged" / "config.json").is_file()
    for name, q in (("gd_int8", "int8"), ("gd_nf4", "nf4"), ("learn_nf4", "nf4")):
        record = json.loads((out / name / "eval_metrics.json").read_text())
        model = record["config"]["model"]
        assert model["class_path"].endswith("ScoredModel") and model["init_args"]["quantize"] == q
        assert model["init_args"]["init_adapter"] is None
        assert 0 <= stages[name]["forget"] <= 1
    for q in ("int8", "nf4"):
        expected = recovery(stages["learn"]["forget"], stages["gd"]["forget"], stages[f"gd_{q}"]["forget"])
        assert summary["audit_recovery"]["gd"][q] == {"forget": expected}
    assert recovery(0.9, 0.3, 0.6) == pytest.approx(0.5) and recovery(0.9, 0.9, 0.6) is None
    with pytest.raises(Exception, match="--audit int4: 'int4' is not a precision"):
        audit_precisions("int4")


def test_the_mini_recipe_runs_gd_rmu_and_ria_at_their_searched_points(random_bd_mirror, mcq_model_dir, tmp_path,
                                                                     capsys):
    """docs/results/frontier.md: the searches' best constrained points are the mini recipe's gd, rmu and ria sections,
    and a stage's own section wins over the recipe's shared unlearn section (GD: lr 2.3e-4, not 1e-4)."""
    from lit_unlearn.relearning import main

    main(["--mini", "2", "--methods", "rmu,gd,ria", "--out", str(tmp_path / "dry"), "--model", mcq_model_dir,
          "--dry-run"])
    out = capsys.readouterr().out
    stages = dict(re.findall(r"^(\w+): run \(fit\)\n((?:  .*\n)+)", out, re.M))
    assert set(stages) >= {"rmu", "gd", "ria"}, out
    for key, value in [("lr", "0.0008"), ("steering", "1.45"), ("alpha", "180.0"), ("layer", "5")]:
        assert f"model.init_args.{key} = {value}  (recipe deeb_roger_mini: rmu)" in stages["rmu"], key
    assert "trainer.max_epochs = 6  (recipe deeb_roger_mini: rmu)" in stages["rmu"]
    assert "model.init_args.lr = 0.00023  (recipe deeb_roger_mini: gd)" in stages["gd"]
    assert "model.init_args.retain_weight = 28.0  (recipe deeb_roger_mini: gd)" in stages["gd"]
    assert "trainer.max_epochs = 2  (recipe deeb_roger_mini: gd)" in stages["gd"]
    for key, value in [("lr", "0.000125"), ("retain_weight", "19.55")]:
        assert f"model.init_args.{key} = {value}  (recipe deeb_roger_mini: ria)" in stages["ria"], key
    assert "trainer.max_epochs = 4  (recipe deeb_roger_mini: ria)" in stages["ria"]
    assert "(recipe deeb_roger_mini: unlearn)" not in stages["gd"] + stages["rmu"] + stages["ria"]
    assert not (tmp_path / "dry").exists()  # a dry run writes nothing
