"""WMDP by hub id (issue 24) on a small fixture written in the hub's schema (only the deduplicated subset is on this
machine): the data module reads cais/wmdp, cais/wmdp-corpora, wikitext and cais/mmlu through the mirror, filters and
cuts the corpora as RMU's loader does, and a shipped-config run trains RMU on the corpus and reports WMDP and MMLU
accuracy."""

from __future__ import annotations

import json

import pytest

from conftest import write_jsonl
from lit_unlearn.core.errors import DataError

LONG = "Exploit code reads the buffer past its end and overwrites the return address of the caller. "  # 92 chars


@pytest.fixture
def wmdp_mirror(tmp_path, monkeypatch):
    from lit_unlearn.data.catalog import MIRROR_ENV

    root = tmp_path / "mirror"
    (root / "wmdp" / "corpora").mkdir(parents=True)
    for subset in ("bio", "cyber"):
        write_jsonl(root / "wmdp" / f"wmdp-{subset}.jsonl", [
            {"question": f"Which {subset} agent {i}?", "choices": ["w", "x", "y", "z"], "answer": i % 4}
            for i in range(3)])
    write_jsonl(root / "wmdp" / "corpora" / "cyber-forget-corpus.jsonl",
                [{"text": LONG * 30}, {"text": "too short to keep"}, {"text": LONG}])
    (root / "wikitext" / "wikitext-2-raw-v1").mkdir(parents=True)
    write_jsonl(root / "wikitext" / "wikitext-2-raw-v1" / "test.jsonl",
                [{"text": ""}, {"text": " = Valkyria Chronicles = \n"}, {"text": "The game began development in 2010 and "
                                                                                  "carried over a large portion. " * 2}])
    (root / "mmlu" / "test").mkdir(parents=True)
    for subject in ("college_biology", "virology", "college_computer_science", "computer_security"):
        (root / "mmlu" / "test" / f"{subject}_test.csv").write_text(
            "question,choice0,choice1,choice2,choice3,answer\n" + f"{subject} question?,a,b,c,d,1\n")
    monkeypatch.setenv(MIRROR_ENV, str(root))
    return root


def test_the_data_module_reads_wmdp_by_hub_id_and_cuts_the_corpora_as_rmu(wmdp_mirror, mcq_model_dir):
    from lit_unlearn.data import WMDPDataModule

    dm = WMDPDataModule(tokenizer=mcq_model_dir, max_length=64, max_chars=500)
    assert dm.sources["wmdp_bio"] == "cais/wmdp:wmdp-bio@test"
    assert dm.sources["forget"] == "cais/wmdp-corpora:cyber-forget-corpus@train"
    assert len(dm.sources["mmlu"]) == 4 and dm.tradeoff_splits == ("wmdp_bio", "mmlu")
    dm.setup("fit")
    forget = [r["text"] for r in dm.datasets["forget"].rows]
    assert len(forget) == 2  # "too short to keep" (17 characters <= 50) is dropped
    assert len(forget[0]) <= 500 and forget[0].startswith("Exploit code")  # cut at max_chars, then at max_length
    assert all(len(r["input_ids"]) <= 64 for r in dm.datasets["forget"].rows)
    assert len(dm.datasets["retain"].rows) == 1  # wikitext: the empty line and the 26-character title are dropped
    bio = dm.datasets["wmdp_bio"].rows
    assert [r["gold"] for r in bio] == [0, 1, 2] and bio[0]["subject"] == "wmdp-bio"
    assert bio[1]["prompt"].endswith("Answer:") and bio[1]["answer"] == " B. x"
    assert {r["subject"] for r in dm.datasets["mmlu"].rows} == {"college_biology", "virology",
                                                                "college_computer_science", "computer_security"}
    assert dm.evaluators_for("forget") == [] and dm.evaluators_for("retain") == []
    assert [type(e).__name__ for e in dm.evaluators_for("wmdp_cyber")] == ["MCQEvaluator"]


@pytest.mark.parametrize("kwargs,match", [
    ({"subsets": ["bio", "nuclear"]}, r"--data.subsets: 'nuclear' is not a WMDP subset; choose among bio, chem, cyber"),
    ({"min_chars": 100, "max_chars": 50}, r"--data.max_chars \(50\) must exceed --data.min_chars \(100\)"),
    ({"eval_splits": {"mmlu": "cais/mmlu:anatomy@test"}}, r"--data.eval_splits: 'mmlu' is a split WMDPDataModule"),
])
def test_bad_wmdp_arguments_are_one_line(kwargs, match, mcq_model_dir):
    from lit_unlearn.data import WMDPDataModule

    with pytest.raises(DataError, match=match):
        WMDPDataModule(tokenizer=mcq_model_dir, **kwargs)


def test_a_corpus_with_no_text_long_enough_is_one_line(wmdp_mirror, mcq_model_dir):
    from lit_unlearn.data import WMDPDataModule

    dm = WMDPDataModule(tokenizer=mcq_model_dir, max_length=64, min_chars=10_000, max_chars=20_000)
    with pytest.raises(DataError, match=r"forget: no text of cais/wmdp-corpora:cyber-forget-corpus@train is longer "
                                        r"than --data.min_chars \(10000\)"):
        dm.setup("fit")


def test_rmu_on_wmdp_from_the_shipped_config(wmdp_mirror, mcq_model_dir, tmp_path, monkeypatch):
    """configs/wmdp/base.yaml + configs/methods/rmu.yaml train on the corpora and report WMDP and MMLU accuracy
    before and after; the adapter's weights move."""
    from lit_unlearn.cli import cli_main

    monkeypatch.chdir(tmp_path)
    cli_main(["fit", "--config", "wmdp/base", "--config", "methods/rmu", "--model.init_args.model", mcq_model_dir,
              "--model.init_args.layer", "1", "--model.init_args.lr", "0.01", "--data.init_args.max_length", "64",
              "--trainer.max_epochs", "4",
              "--trainer.logger.init_args.save_dir", str(tmp_path / "runs")])
    record = json.loads((tmp_path / "runs" / "wmdp" / "rmu" / "metrics.json").read_text())
    for when in ("before", "after"):
        got = record["metrics"][when]
        assert {"wmdp_bio", "wmdp_cyber", "mmlu"} <= set(got), got.keys()
        assert 0 <= got["wmdp_cyber"]["mcq_acc"] <= 1 and 0 <= got["mmlu"]["mcq_acc"] <= 1
    measured = record["metrics"]["measured"]  # the scale-free coefficient, measured on the forget corpus
    assert measured["rmu_steering_scale"] == "corpus" and measured["rmu_activation_norm"] > 0
    assert measured["rmu_forget_mse_end"] < 0.9 * measured["rmu_forget_mse_start"]  # the forget rows were steered
    assert record["metrics"]["global_step"] == 4
