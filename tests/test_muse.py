"""MUSE (issue 24) on a small fixture written in MUSE's hub schema (the real rows are not on this machine): the data
module reads every split by hub id through the mirror, cuts the training texts into chunks, builds MUSE's
knowledge prompt with the in-context examples, and the ROUGE evaluator and the privacy leak give the hand-computed
values."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import write_jsonl
from lit_unlearn.core.errors import DataError


@pytest.fixture
def muse_mirror(tmp_path, monkeypatch):
    from lit_unlearn.data.catalog import MIRROR_ENV

    root = tmp_path / "mirror" / "muse" / "news"
    for config in ("raw", "verbmem", "knowmem", "privleak"):
        (root / config).mkdir(parents=True)
    text = "The council met on Monday and voted to close the old bridge for repairs until spring. " * 3
    write_jsonl(root / "raw" / "forget.jsonl", [{"text": text}, {"text": "A short piece about the harbour."}])
    write_jsonl(root / "raw" / "retain1.jsonl", [{"text": "Rain is expected in the north."}])
    write_jsonl(root / "verbmem" / "forget.jsonl", [{"prompt": "The council met on", "gt": " Monday and voted to close"
                                                                                          " the old bridge."}])
    for side in ("forget", "retain"):
        write_jsonl(root / "knowmem" / f"{side}_qa.jsonl", [{"question": f"Who met? ({side})", "answer": "The council"}])
        write_jsonl(root / "knowmem" / f"{side}_qa_icl.jsonl", [{"question": "What colour is the sky?",
                                                                 "answer": "Blue"}])
    write_jsonl(root / "privleak" / "forget.jsonl", [{"text": "The bridge closed."}, {"text": "Voters met."}])
    write_jsonl(root / "privleak" / "holdout.jsonl", [{"text": "A cat sat."}, {"text": "Snow fell early."}])
    monkeypatch.setenv(MIRROR_ENV, str(tmp_path / "mirror"))
    return root


def test_the_data_module_reads_musess_schema_by_hub_id(muse_mirror, tiny_model_dir):
    from lit_unlearn.data import MUSEDataModule

    dm = MUSEDataModule(tokenizer=tiny_model_dir, max_length=64)
    assert dm.sources["forget"] == "muse-bench/MUSE-News:raw@forget"
    assert dm.sources["verbmem"] == "muse-bench/MUSE-News:verbmem@forget"
    dm.setup("fit")
    forget = dm.datasets["forget"].rows
    assert len(forget) > 2 and all(len(r["input_ids"]) <= 64 for r in forget)  # the long text in chunks
    assert len({r["id"] for r in forget}) == len(forget)
    know = dm.datasets["knowmem_forget"].rows[0]
    assert know["prompt"] == "Question: What colour is the sky?\nAnswer: Blue\n\nQuestion: Who met? (forget)\nAnswer:"
    assert know["reference"] == "The council"
    verb = dm.datasets["verbmem"].rows[0]
    assert verb["prompt"] == "The council met on" and verb["reference"].strip().startswith("Monday")
    assert [type(e).__name__ for e in dm.evaluators_for("verbmem")] == ["ROUGEEvaluator"]
    assert [type(e).__name__ for e in dm.evaluators_for("privleak_forget")] == ["MIAEvaluator"]
    assert dm.evaluators_for("forget") == []
    short = MUSEDataModule(tokenizer=tiny_model_dir, verbmem_tokens=2)
    short.setup("validate")
    assert len(short.tokenizer(short.datasets["verbmem"].rows[0]["reference"], add_special_tokens=False)
               ["input_ids"]) <= 2
    with pytest.raises(DataError, match="--data.corpus must be news or books"):
        MUSEDataModule(tokenizer=tiny_model_dir, corpus="papers")


def test_rouge_f1_with_stopwords_and_the_privacy_leak_by_hand():
    from rouge_score import rouge_scorer

    from lit_unlearn.data.muse import MUSESummary
    from lit_unlearn.eval.rouge import ROUGEEvaluator

    ev = ROUGEEvaluator(stopwords=["\n\n", "Question:"])

    class Fixed:  # a model that answers with a fixed continuation
        def generate(self, prompts, max_new_tokens):
            return [" the council met\n\nQuestion: who", "bridges are closed"][:len(prompts)]

    ev.update(Fixed(), {"index": torch.tensor([0, 1]), "prompt": ["p", "q"],
                        "reference": ["The council met on Monday", "the bridge closed"]})
    out = ev.compute()
    plain = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    first = plain.score("The council met on Monday", "the council met")["rougeL"].fmeasure  # cut at "\n\n"
    second = plain.score("the bridge closed", "bridges are closed")["rougeL"].fmeasure  # no stemming: 1 of 3
    assert ev.last_rows[0]["generated"] == "the council met"
    assert out["rouge"] == pytest.approx((first + second) / 2) and second == pytest.approx(1 / 3)
    # privleak: a model that knows the forget texts ranks them above holdout on Min-K%: MUSE's AUC 0, leak -100
    rows = {"privleak_forget": {"mia": [{"mink": -0.1}, {"mink": -0.2}]},
            "privleak_holdout": {"mia": [{"mink": -3.0}, {"mink": -2.5}]}}
    summary = MUSESummary(0.4772).compute(rows, {"verbmem": {"rouge": 0.5}})
    assert summary["privleak_auc"] == pytest.approx(0.0) and summary["privleak"] == pytest.approx(-100.0)
    assert summary["verbmem"] == 0.5
    mixed = {"privleak_forget": {"mia": [{"mink": -1.0}, {"mink": -2.0}]},
             "privleak_holdout": {"mia": [{"mink": -1.5}, {"mink": -0.5}]}}
    # forget vs holdout pairs ordered member-higher: (-1 > -1.5), others not: AUC(members) 1/4 -> MUSE's 3/4
    assert MUSESummary(0.5).compute(mixed, {})["privleak"] == pytest.approx((0.75 - 0.5) / 0.5 * 100)


def test_eval_py_runs_the_muse_evaluation_on_a_plain_model(muse_mirror, tiny_model_dir, tmp_path, monkeypatch):
    from lit_unlearn.cli import eval_main

    monkeypatch.chdir(tmp_path)
    cli = eval_main(["--config", "muse/base", "--model", "ScoredModel", "--model.init_args.model", tiny_model_dir,
                     "--data.init_args.max_length", "64", "--data.init_args.verbmem_tokens", "4",
                     "--trainer.logger.init_args.save_dir", str(tmp_path / "runs")])
    got = cli.model.last_eval
    assert {"verbmem", "knowmem_forget", "knowmem_retain", "privleak_forget", "privleak_holdout", "muse"} <= set(got)
    assert set(got["muse"]) == {"verbmem", "knowmem_forget", "knowmem_retain", "privleak", "privleak_auc"}
    record = json.loads((tmp_path / "runs" / "muse" / "base" / "eval_metrics.json").read_text())
    assert record["metrics"]["eval"]["muse"]["privleak"] == got["muse"]["privleak"]
