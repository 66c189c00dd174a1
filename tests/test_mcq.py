"""Multiple-choice evaluation: letter-logit accuracy (plain, calibrated, per subject) against a hand-built case, the
letter token ids of a tokenizer, next-token logits against a plain forward, the MCQ data module's rows and bad
input, and ``eval.py`` on MMLU by hub id (the local mirror)."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import needs_mirror, write_jsonl
from lit_unlearn.core.errors import DataError, EvalError
from lit_unlearn.eval.mcq import MCQEvaluator, letter_token_ids

ROWS = [{"question": "When was Ada Brook born?", "choices": [1961, 1958, 1965, 1994], "answer": 0},
        {"question": "When was Lev Marsh born?", "choices": [1966, 1936, 2018, 1998], "answer": 1},
        {"question": "When was Ines Roan born?", "choices": [1995, 2005, 2022, 1977], "answer": "C"},
        {"question": "When was Otto Vale born?", "choices": [1956, 1927, 1983, 1958], "answer": "3"}]


class Letters:
    """A scorer whose next-token logits at the letters are set by the test (rows in prompt order)."""

    def __init__(self, tokenizer, logits: list[list[float]]):
        self.tokenizer, self.logits = tokenizer, logits

    def next_token_logits(self, prompts, token_ids):
        assert token_ids == letter_token_ids(self.tokenizer)
        return torch.tensor(self.logits[:len(prompts)])


def test_accuracy_plain_calibrated_and_per_subject_by_hand(mcq_model_dir):
    from lit_unlearn.models import load_tokenizer

    # plain argmax: A, A, A, D -> rows 0 and 3 right (0.5). Letter means: A 1.5, B 0.875, C 0.125, D 0.25;
    # subtracted: row 0 [.5, .125, -.125, -.25] -> A; row 1 [1.5, 1.625, ...] -> B; row 2 [-.5, -.875, .375, -.25]
    # -> C; row 3 [-1.5, -.875, -.125, .75] -> D: all four right (1.0)
    logits = [[2.0, 1.0, 0.0, 0.0], [3.0, 2.5, 0.0, 0.0], [1.0, 0.0, 0.5, 0.0], [0.0, 0.0, 0.0, 1.0]]
    scorer = Letters(load_tokenizer(mcq_model_dir), logits)
    ev = MCQEvaluator()
    batch = {"index": torch.arange(4), "id": list("abcd"), "prompt": ["p"] * 4, "gold": [0, 1, 2, 3],
             "subject": ["bio", "law", "law", "law"], "split": "forget"}
    ev.update(scorer, batch)
    got = ev.compute()
    assert got == {"mcq_acc": 0.5, "mcq_acc_calibrated": 1.0, "mcq_acc/bio": 1.0, "mcq_acc/law": pytest.approx(1 / 3)}
    assert [r["pred"] for r in ev.last_rows] == [0, 0, 0, 3]
    assert [r["pred_calibrated"] for r in ev.last_rows] == [0, 1, 2, 3]
    # a tie goes to the first letter
    ev.update(Letters(scorer.tokenizer, [[1.0, 1.0, 0.0, 0.0]]), {**batch, "index": torch.arange(1), "id": ["a"],
                                                                   "prompt": ["p"], "gold": [1], "subject": ["x"]})
    assert ev.compute()["mcq_acc"] == 0.0


class MergingTokenizer:
    """A tokenizer whose vocabulary merges "A." into one token (so the bare letter is not its first token)."""

    name_or_path = "merging"

    def encode(self, text, add_special_tokens=False):
        return [1 if text.startswith("A.") else 2, 3]

    def decode(self, ids):
        return {1: "A.", 2: "B", 3: " "}[ids[0]]


def test_letter_ids_follow_their_rule_or_are_an_error(mcq_model_dir, tokenizer):
    from lit_unlearn.models import load_tokenizer

    # bare (the Deeb & Roger rule): the first token of "X. ", the letter without a space
    assert [tokenizer.decode([i]) for i in letter_token_ids(tokenizer)] == ["A", "B", "C", "D"]
    assert letter_token_ids(tokenizer) == [tokenizer.encode(f"{x}. ", add_special_tokens=False)[0] for x in "ABCD"]
    with pytest.raises(EvalError, match=r"first token of 'A\. ' is 'A\.', not the letter 'A'"):
        letter_token_ids(MergingTokenizer())
    # spaced: the token after "Answer:" - one token in the letters tokenizer, two (" " + "A") in the default one
    tok = load_tokenizer(mcq_model_dir)
    ids = letter_token_ids(tok, "spaced")
    assert [tok.decode([i]) for i in ids] == [" A", " B", " C", " D"]
    assert [tok("Answer: " + letter)["input_ids"][-1] for letter in "ABCD"] == ids
    with pytest.raises(EvalError, match="answer letter 'A'.*2 tokens"):
        letter_token_ids(tokenizer, "spaced")


@pytest.mark.parametrize("lean_head", [True, False])
def test_next_token_logits_equal_a_plain_forward_of_each_prompt(lean_head, mcq_model_dir, make_method):
    from lit_unlearn.data.mcq import mcq_prompt
    from lit_unlearn.methods import Finetune

    method = make_method(Finetune, model_dir=mcq_model_dir, lean_head=lean_head)
    prompts = [mcq_prompt(r["question"], [str(c) for c in r["choices"]]) for r in ROWS]
    prompts[1] = "Short?\nA. x\nB. y\nC. z\nD. w\nAnswer:"  # rows of different lengths: right padding
    ids = letter_token_ids(method.tokenizer, "spaced")
    got = method.next_token_logits(prompts, ids, chunk=3)
    with torch.no_grad():
        for i, p in enumerate(prompts):
            enc = method.tokenizer(p, return_tensors="pt")
            want = method.lm(**enc).logits[0, -1, ids]
            torch.testing.assert_close(got[i], want, rtol=1e-5, atol=1e-5)


def test_the_data_module_builds_prompts_answers_and_gold(mcq_model_dir, tmp_path):
    from lit_unlearn.data import MCQDataModule

    forget = write_jsonl(tmp_path / "split_0.jsonl", ROWS)
    csv = tmp_path / "mmlu.csv"
    csv.write_text("question,choice0,choice1,choice2,choice3,answer\nWhat is 2+2?,3,4,5,6,1\n")
    dm = MCQDataModule(forget=forget, eval_splits={"mmlu": str(csv)}, tokenizer=mcq_model_dir)
    dm.setup("validate")
    rows = dm.datasets["forget"].rows
    assert [r["gold"] for r in rows] == [0, 1, 2, 3]
    assert rows[0]["prompt"] == "When was Ada Brook born?\nA. 1961\nB. 1958\nC. 1965\nD. 1994\nAnswer:"
    assert rows[1]["answer"] == " B. 1936"
    assert dm.datasets["mmlu"].rows[0]["choices"] == ["3", "4", "5", "6"] and dm.datasets["mmlu"].rows[0]["gold"] == 1
    assert [type(e).__name__ for e in dm.evaluators_for("mmlu")] == ["MCQEvaluator"]


@pytest.mark.parametrize("row, message", [
    ({"question": "q", "choices": [1, 2, 3], "answer": 0}, r"split_0.jsonl:2 has 3 choices in 'choices'"),
    ({"question": "q", "choices": [1, 2, 3, 4, 5], "answer": 0}, r"split_0.jsonl:2 has 5 choices"),
    ({"question": "q", "choices": [1, 2, 3, 4], "answer": 4}, r"split_0.jsonl:2 has answer '4' in 'answer'"),
    ({"question": "q", "choices": [1, 2, 3, 4], "answer": "E"}, r"split_0.jsonl:2 has answer 'E'"),
    ({"question": "q", "options": [1, 2, 3, 4], "answer": 1}, r"split_0.jsonl:2 has no field 'choices'.*choices_field"),
])
def test_bad_mcq_rows_are_one_line_naming_file_line_and_field(row, message, mcq_model_dir, tmp_path):
    from lit_unlearn.data import MCQDataModule

    dm = MCQDataModule(forget=write_jsonl(tmp_path / "split_0.jsonl", [ROWS[0], row]), tokenizer=mcq_model_dir)
    with pytest.raises(DataError, match=message):
        dm.setup("validate")


def test_eval_py_scores_mmlu_by_hub_id_on_a_plain_model(mcq_model_dir, tmp_path, monkeypatch):
    """``eval.py`` with no run or checkpoint: MMLU's abstract algebra (``cais/mmlu`` by hub id, read from the
    mirror) and a local file; accuracy, per-row letters and logits in ``rows/eval/``."""
    import yaml

    from lit_unlearn.cli import eval_main

    monkeypatch.chdir(tmp_path)
    cfg = {"model": {"class_path": "Finetune", "init_args": {"model": mcq_model_dir, "adapter": None}},
           "data": {"class_path": "MCQDataModule",
                    "init_args": {"forget": write_jsonl(tmp_path / "split_0.jsonl", ROWS),
                                  "eval_splits": {"algebra": "cais/mmlu:abstract_algebra@test"},
                                  "max_rows": {"algebra": 6}, "max_length": 512}},
           "trainer": {"accelerator": "cpu", "enable_progress_bar": False, "logger": {
               "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
               "init_args": {"save_dir": str(tmp_path / "logs"), "name": "mcq", "version": "eval"}}}}
    (tmp_path / "mcq.yaml").write_text(yaml.safe_dump(cfg))
    cli = eval_main(["--config", str(tmp_path / "mcq.yaml")])
    scores = cli.model.last_eval
    assert set(scores) == {"forget", "algebra"}
    rows = [json.loads(line) for line in (tmp_path / "logs" / "mcq" / "eval" / "rows" / "eval" / "algebra.mcq.jsonl")
            .read_text().splitlines()]
    assert len(rows) == 6 and all(len(r["logits"]) == 4 and 0 <= r["gold"] < 4 for r in rows)
    assert scores["algebra"]["mcq_acc"] == sum(r["pred"] == r["gold"] for r in rows) / 6


# ---- the Deeb & Roger data sets ---------------------------------------------------------------------------------
def write_deeb_roger(root, splits=range(4)) -> None:
    """A tiny copy of the repository's ``data/random_bd`` layout: per split 2 questions and 2 corpus lines of each
    kind."""
    d = root / "random_bd"
    d.mkdir(parents=True)
    for i in splits:
        write_jsonl(d / f"split_{i}.jsonl", [{"question": f"When was P{i}{k} born?", "choices": [1, 2, 3, 4],
                                               "answer": k} for k in range(2)])
        for kind in ("corpus_", "whp_corpus_", "fwf_corpus_"):
            write_jsonl(d / f"{kind}split_{i}.jsonl",
                        [{"text": f"{kind}P{i}{k} was born in {k}.", "split": f"split_{i}"} for k in range(2)])


def test_deeb_roger_splits_by_index_from_a_local_folder(tmp_path, tokenizer):
    from lit_unlearn.data import DeebRogerDataModule

    write_deeb_roger(tmp_path / "data")
    dm = DeebRogerDataModule(source=str(tmp_path / "data"), forget_splits=[0, 2], retain_splits=[3],
                             forget_corpus="whp_corpus", tokenizer=tokenizer.name_or_path)
    dm.setup("fit")
    forget = dm.datasets["forget"].rows
    # two sources read as one split: ids count on across them; the wrong-fact corpus of splits 0 and 2
    assert [r["id"] for r in forget] == ["0", "1", "2", "3"]
    assert [r["answer"] for r in forget] == [f"whp_corpus_P{i}{k} was born in {k}." for i in (0, 2) for k in (0, 1)]
    assert all(r["prompt"] == "" for r in forget) and forget[0]["labels"][1:] == forget[0]["input_ids"][1:]
    assert [r["answer"] for r in dm.datasets["retain"].rows] == [f"corpus_P3{k} was born in {k}." for k in (0, 1)]
    assert [r["subject"] for r in dm.datasets["forget_mcq"].rows] == ["split_0", "split_0", "split_2", "split_2"]
    assert dm.eval_split_names == ["forget_mcq", "retain_mcq"]  # the corpora are trained on, not evaluated
    assert dm.tradeoff_splits == ("forget_mcq", "retain_mcq")


@needs_mirror
def test_deeb_roger_random_birthdays_by_name_from_the_mirror(tokenizer):
    """The shipped default names the files as ``aghyad-deeb/unlearning_evaluation:random_bd@<file>`` (the mirror)."""
    from lit_unlearn.data import DeebRogerDataModule

    dm = DeebRogerDataModule(tokenizer=tokenizer.name_or_path, max_length=512)
    assert dm.sources["forget_mcq"][0] == "aghyad-deeb/unlearning_evaluation:random_bd@split_0"
    dm.setup("fit")
    sizes = {k: len(v) for k, v in dm.datasets.items()}
    assert sizes["forget_mcq"] == sizes["retain_mcq"] == 5 * 157
    assert {r["subject"] for r in dm.datasets["retain_mcq"].rows} == {f"split_{i}" for i in range(5, 10)}
    assert dm.datasets["forget"].rows[0]["answer"] == "Aidan Li was born in 1965."


@pytest.mark.parametrize("kwargs, message", [
    ({"forget_splits": [0, 1], "retain_splits": [1, 2]}, r"--data.forget_splits and --data.retain_splits share "
                                                         r"split 1"),
    ({"forget_corpus": "wrong"}, r"--data.forget_corpus must be one of corpus, whp_corpus, fwf_corpus, mcq"),
    ({"forget_splits": [7]}, r"forget: file .*corpus_split_7.jsonl does not exist"),
])
def test_bad_deeb_roger_settings_are_one_line(kwargs, message, tmp_path, tokenizer):
    from lit_unlearn.data import DeebRogerDataModule

    write_deeb_roger(tmp_path / "data")
    with pytest.raises(DataError, match=message):
        DeebRogerDataModule(source=str(tmp_path / "data"), tokenizer=tokenizer.name_or_path,
                            **{"forget_splits": [0], "retain_splits": [3], **kwargs}).setup("fit")
