"""Data: answer-only labels, pad = EOS, error messages that name the file/field/flag, row subsets, SST-2 prompts,
source parsing (no hub access), and forget/retain mixing (seeded, epoch-aware, disjoint across ranks)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from conftest import FORGET_ROWS, RETAIN_ROWS, first_train_batch, make_qa_datamodule, write_jsonl, write_sst2_csv
from lit_unlearn.data import DataError, QADataModule, RatioSampler, SST2DataModule
from lit_unlearn.data import sources
from lit_unlearn.data.sst2 import SST2_PROMPT
from lit_unlearn.core.tokens import IGNORE, collate, encode
from lit_unlearn.core.scoring import TokenStats


def scored_text(tokenizer, labels) -> str:
    labels = torch.as_tensor(labels)
    return tokenizer.decode(labels[labels != IGNORE])


# ---- answer-token masking ------------------------------------------------------------------------------------------
def test_labels_mask_the_prompt(tokenizer):
    prompt, answer = "Question: Where was Ilsa Varga born?\nAnswer:", " Lisbon"
    enc = encode(tokenizer, prompt, answer)
    assert enc["input_ids"] == tokenizer(prompt + answer)["input_ids"]
    n_prompt = len(tokenizer(prompt)["input_ids"])
    assert enc["labels"][:n_prompt] == [IGNORE] * n_prompt
    assert all(x != IGNORE for x in enc["labels"][n_prompt:])
    assert enc["n_answer"] == len(enc["input_ids"]) - n_prompt > 0
    assert scored_text(tokenizer, enc["labels"]) == " Lisbon"


def test_trailing_space_prompt_keeps_the_answer_scored(tokenizer):
    """docs/methods.md section 7: "Answer: " + "Lisbon" merges the space into the answer's first token."""
    prompt, answer = "Answer: ", "Lisbon"
    prompt_ids = tokenizer(prompt)["input_ids"]
    full_ids = tokenizer(prompt + answer)["input_ids"]
    # the case this test is about: the prompt's last token (' ') is not a prefix token of prompt+answer
    assert full_ids[: len(prompt_ids)] != prompt_ids
    naive = full_ids[len(prompt_ids):]  # "the first len(prompt) tokens are the prompt"
    enc = encode(tokenizer, prompt, answer)
    assert enc["n_answer"] >= 1
    assert enc["n_answer"] > len(naive)  # the naive split drops the first answer token
    assert scored_text(tokenizer, enc["labels"]).strip() == "Lisbon"


def test_trailing_space_template_through_the_data_module(tiny_model_dir, qa_files):
    dm = make_qa_datamodule(tiny_model_dir, qa_files, prompt_template="Question: {question}\nAnswer: ",
                            answer_template="{answer}")
    for role, raw in (("forget", FORGET_ROWS), ("retain", RETAIN_ROWS)):
        rows = dm.datasets[role].rows
        assert len(rows) == len(raw)
        for row, src in zip(rows, raw):
            assert row["n_answer"] >= 1
            assert scored_text(dm.tokenizer, row["labels"]).strip() == src["answer"]


def test_pad_equals_eos_masks_by_position_not_by_id(tokenizer):
    eos = tokenizer.eos_token_id
    assert tokenizer.pad_token_id == eos
    short = encode(tokenizer, "Question: Where?\nAnswer:", f" Lisbon{tokenizer.eos_token}")
    long = encode(tokenizer, "Question: In which city was the writer born?\nAnswer:", " Dublin")
    assert short["input_ids"][-1] == eos  # an end-of-turn token inside the answer
    batch = collate([short, long], tokenizer.pad_token_id)
    k = len(short["input_ids"])
    assert batch["input_ids"].size(1) > k  # the short row is padded, with the same id
    assert batch["labels"][0, k - 1].item() == eos  # the real EOS is still a label
    assert (batch["labels"][0, k:] == IGNORE).all()  # padding positions are not
    assert (batch["input_ids"][0, k:] == eos).all()
    assert batch["attention_mask"][0].tolist() == [1] * k + [0] * (batch["input_ids"].size(1) - k)
    # and the metrics count it as an answer token
    stats = TokenStats.from_logits(torch.zeros(2, batch["input_ids"].size(1), len(tokenizer)), batch["labels"])
    assert stats.n_tokens[0].item() == short["n_answer"]


def test_eos_inside_an_answer_stays_a_label_in_the_data_module(tiny_model_dir, tmp_path):
    files = {"forget": write_jsonl(tmp_path / "f.jsonl", [{"question": "Where?", "answer": "Lisbon<eos>"},
                                                          {"question": "Where was the writer born?", "answer": "Oslo"}])}
    dm = make_qa_datamodule(tiny_model_dir, files)
    eos = dm.tokenizer.eos_token_id
    row = dm.datasets["forget"].rows[0]
    assert row["input_ids"][-1] == eos and row["labels"][-1] == eos
    batch = next(iter(dm.val_dataloader()[0]))
    i = batch["id"].index(row["id"])  # (evaluation batches are length-sorted: the shorter row comes second)
    k = len(row["input_ids"])
    assert batch["input_ids"].size(1) > k  # the row is right-padded with pad = EOS
    assert (batch["input_ids"][i, k:] == eos).all()
    assert (batch["labels"][i] == eos).sum().item() == 1  # the answer's EOS, not the padding
    assert batch["attention_mask"][i, :k].all() and not batch["attention_mask"][i, k:].any()


# ---- error messages -----------------------------------------------------------------------------------------------
def test_missing_file_names_path_and_flag(tiny_model_dir, tmp_path):
    missing = tmp_path / "nowhere" / "forget.jsonl"
    dm = QADataModule(forget=str(missing), tokenizer=tiny_model_dir)
    with pytest.raises(DataError) as err:
        dm.setup("fit")
    assert str(missing) in str(err.value)
    assert "--data.forget" in str(err.value)


def test_missing_retain_file_names_retain_flag(tiny_model_dir, qa_files, tmp_path):
    dm = QADataModule(forget=qa_files["forget"], retain=str(tmp_path / "r.csv"), tokenizer=tiny_model_dir)
    with pytest.raises(DataError, match="--data.retain"):
        dm.setup("fit")


def test_missing_field_names_file_line_field_and_flag(tiny_model_dir, tmp_path):
    path = write_jsonl(tmp_path / "forget.jsonl", [{"question": "Q1", "answer": "Oslo"}, {"question": "Q2"}])
    dm = QADataModule(forget=path, tokenizer=tiny_model_dir)
    with pytest.raises(DataError) as err:
        dm.setup("fit")
    msg = str(err.value)
    assert f"{path}:2" in msg and "'answer'" in msg and "--data.answer_field" in msg
    assert "question" in msg  # lists the fields that are there


def test_custom_field_name_is_used_and_named(tiny_model_dir, tmp_path):
    path = write_jsonl(tmp_path / "forget.jsonl", [{"q": "Where?", "a": "Oslo"}])
    dm = make_qa_datamodule(tiny_model_dir, {"forget": path}, question_field="q", answer_field="a")
    assert dm.datasets["forget"].rows[0]["answer"] == " Oslo"
    dm = QADataModule(forget=path, tokenizer=tiny_model_dir, question_field="question")
    with pytest.raises(DataError, match=r"'question'.*--data\.question_field"):
        dm.setup("fit")


def test_empty_split(tiny_model_dir, qa_files, tmp_path):
    empty = tmp_path / "retain.jsonl"
    empty.write_text("\n\n", encoding="utf-8")
    dm = QADataModule(forget=qa_files["forget"], retain=str(empty), tokenizer=tiny_model_dir)
    with pytest.raises(DataError, match=r"retain: .*is empty"):
        dm.setup("fit")


def test_row_longer_than_max_length(tiny_model_dir, qa_files):
    dm = QADataModule(forget=qa_files["forget"], tokenizer=tiny_model_dir, max_length=8)
    with pytest.raises(DataError) as err:
        dm.setup("fit")
    msg = str(err.value)
    assert f"{qa_files['forget']}:1" in msg
    assert "max_length=8" in msg and "--data.too_long skip" in msg


def test_invalid_json_line(tiny_model_dir, tmp_path):
    path = tmp_path / "forget.jsonl"
    path.write_text('{"question": "Q", "answer": "A"}\n{"question": oops}\n', encoding="utf-8")
    dm = QADataModule(forget=str(path), tokenizer=tiny_model_dir)
    with pytest.raises(DataError, match=rf"{path} line 2 is not valid JSON"):
        dm.setup("fit")
    path.write_text('["not", "an", "object"]\n', encoding="utf-8")
    with pytest.raises(DataError, match="line 1 is not a JSON object"):
        sources.read_rows(str(path), "forget")


def test_too_long_skip_drops_only_long_rows(tiny_model_dir, tmp_path, capsys):
    rows = FORGET_ROWS + [{"question": "Where was " + "a very long name " * 20 + "born?", "answer": "Oslo"}]
    path = write_jsonl(tmp_path / "forget.jsonl", rows)
    with pytest.raises(DataError, match="max_length=48"):
        make_qa_datamodule(tiny_model_dir, {"forget": path}, max_length=48)
    dm = make_qa_datamodule(tiny_model_dir, {"forget": path}, max_length=48, too_long="skip")
    kept = dm.datasets["forget"].rows
    assert [r["answer"].strip() for r in kept] == [r["answer"] for r in FORGET_ROWS]
    assert [r["index"] for r in kept] == list(range(len(FORGET_ROWS)))
    assert "skipped 1 rows" in capsys.readouterr().out
    with pytest.raises(DataError, match="no rows .* fit in max_length=4"):
        make_qa_datamodule(tiny_model_dir, {"forget": path}, max_length=4, too_long="skip")


def test_constructor_checks():
    with pytest.raises(DataError, match="max_length"):
        QADataModule(forget="x.jsonl", max_length=1)
    with pytest.raises(DataError, match="batch_size"):
        QADataModule(forget="x.jsonl", batch_size=0)


# ---- max_rows --------------------------------------------------------------------------------------------------------
def retained_answers(dm, role="retain") -> list[str]:
    return [r["answer"].strip() for r in dm.datasets[role].rows]


def test_max_rows_is_a_seeded_subset_in_file_order(tiny_model_dir, qa_files):
    all_answers = [r["answer"] for r in RETAIN_ROWS]
    a = retained_answers(make_qa_datamodule(tiny_model_dir, qa_files, max_rows=3, seed=0))
    b = retained_answers(make_qa_datamodule(tiny_model_dir, qa_files, max_rows=3, seed=0))
    others = {tuple(retained_answers(make_qa_datamodule(tiny_model_dir, qa_files, max_rows=3, seed=s)))
              for s in (1, 2, 3)}
    assert a == b and len(a) == 3
    assert others - {tuple(a)}, "the subset does not depend on the seed"
    assert len(set(all_answers)) == len(all_answers)
    positions = [all_answers.index(x) for x in a]
    assert positions == sorted(positions)


def test_max_rows_per_split(tiny_model_dir, qa_files):
    dm = make_qa_datamodule(tiny_model_dir, qa_files, max_rows={"retain": 5})
    assert len(dm.datasets["retain"]) == 5 and len(dm.datasets["forget"]) == len(FORGET_ROWS)
    # each row keeps its position in the source file as its index and id: a stable key, not a position in the subset
    kept = [r["index"] for r in dm.datasets["retain"].rows]
    assert kept == sorted(kept) and kept != list(range(5))
    assert [RETAIN_ROWS[i]["answer"] for i in kept] == [r["answer"].strip() for r in dm.datasets["retain"].rows]
    assert [r["id"] for r in dm.datasets["retain"].rows] == [str(i) for i in kept]


# ---- SST-2 -----------------------------------------------------------------------------------------------------------
def test_sst2_prompt_and_label_only_scoring(tiny_model_dir, sst2_files):
    dm = SST2DataModule(forget=sst2_files["forget"], retain=sst2_files["retain"], tokenizer=tiny_model_dir)
    dm.setup("fit")
    row = dm.datasets["forget"].rows[0]
    assert row["prompt"] == ("### Text: a gripping, funny film\n\n### Question: What is the sentiment of the given"
                             " text?\n\n### Sentiment:")
    assert row["prompt"] == SST2_PROMPT.format(text="a gripping, funny film")
    assert row["answer"] == " positive"
    assert scored_text(dm.tokenizer, row["labels"]) == " positive"
    prompt_len = len(dm.tokenizer(row["prompt"])["input_ids"])
    assert row["labels"][:prompt_len] == [IGNORE] * prompt_len
    assert [r["answer"] for r in dm.datasets["retain"].rows] == [" positive", " negative", " positive", " negative"]
    batch = next(iter(dm.val_dataloader()[1]))
    assert batch["split"] == "retain"
    for labels in batch["labels"]:
        assert scored_text(dm.tokenizer, labels) in (" positive", " negative")


def test_sst2_eval_splits_and_missing_label_field(tiny_model_dir, sst2_files, tmp_path):
    test_forget = write_sst2_csv(tmp_path / "test_forget.csv", [("funny", 1, " positive ")])
    dm = SST2DataModule(forget=sst2_files["forget"], eval_splits={"test_forget": test_forget},
                        tokenizer=tiny_model_dir)
    dm.setup("fit")
    assert dm.split_names == ["forget", "test_forget"]
    assert dm.datasets["test_forget"].rows[0]["answer"] == " positive"  # label text stripped
    assert [b["split"] for b in (next(iter(loader)) for loader in dm.val_dataloader())] == ["forget", "test_forget"]

    bad = tmp_path / "bad.csv"
    bad.write_text("text,label\nfunny,1\n", encoding="utf-8")
    with pytest.raises(DataError) as err:
        SST2DataModule(forget=str(bad), tokenizer=tiny_model_dir).setup("fit")
    assert f"{bad}:2" in str(err.value) and "--data.label_field" in str(err.value)


# ---- sources: local formats and hub ids (no network) -------------------------------------------------------------------
def test_local_json_and_tsv_sources(tmp_path):
    js = tmp_path / "rows.json"
    js.write_text(json.dumps([{"question": "Q", "answer": "A"}]), encoding="utf-8")
    assert sources.read_rows(str(js), "forget") == [{"question": "Q", "answer": "A", "_where": f"{js}[0]", "_index": 0}]
    tsv = tmp_path / "rows.tsv"
    tsv.write_text("text\tlabel_text\nfun\tpositive\n", encoding="utf-8")
    assert sources.read_rows(str(tsv), "forget")[0] == {"text": "fun", "label_text": "positive", "_where": f"{tsv}:2",
                                                        "_index": 0}
    txt = tmp_path / "rows.txt"
    txt.write_text("x\n", encoding="utf-8")
    with pytest.raises(DataError, match="unsupported type"):
        sources.read_rows(str(txt), "forget")


@pytest.mark.parametrize("source,expected", [
    ("locuslab/TOFU", ("locuslab/TOFU", None, "train")),
    ("locuslab/TOFU:forget10", ("locuslab/TOFU", "forget10", "train")),
    ("locuslab/TOFU:forget10@train", ("locuslab/TOFU", "forget10", "train")),
    ("karuna-bhaila/Unlearning_SST2v3@train_forget", ("karuna-bhaila/Unlearning_SST2v3", None, "train_forget")),
])
def test_hub_id_parsing(source, expected, monkeypatch):
    calls = []

    def fake_hub(hub, split):
        calls.append((hub.repo, hub.config, hub.split))
        return [{"question": "Q", "answer": "A"}]

    monkeypatch.delenv("LIT_UNLEARN_DATA", raising=False)
    monkeypatch.setattr(sources, "_load_hub", fake_hub)
    rows = sources.read_rows(source, "forget")
    assert calls == [expected] and len(rows) == 1


@pytest.mark.parametrize("source", ["./no/such/dir/forget", "/no/such/forget", "data/missing.jsonl",
                                    "~/no_such_lit_unlearn_file.csv"])
def test_local_looking_paths_fail_without_touching_the_hub(source, monkeypatch):
    def no_hub(*args):
        raise AssertionError("hub was contacted for a local-looking path")

    monkeypatch.setattr(sources, "_load_hub", no_hub)
    with pytest.raises(DataError, match="does not exist"):
        sources.read_rows(source, "forget")


def test_neither_file_nor_hub_id(monkeypatch):
    monkeypatch.setattr(sources, "_load_hub", lambda *a: pytest.fail("hub contacted"))
    with pytest.raises(DataError, match="neither an existing file nor a hub id"):
        sources.read_rows("a/b/c", "retain")


def test_hub_errors_become_data_errors(monkeypatch):
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("offline")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    monkeypatch.delenv("LIT_UNLEARN_DATA", raising=False)
    with pytest.raises(DataError, match=r"retain: could not load hub dataset owner/name \(config=cfg, split=dev\)"):
        sources.read_rows("owner/name:cfg@dev", "retain")


# ---- RatioSampler ------------------------------------------------------------------------------------------------------
def batches(sampler) -> list[list[int]]:
    idx = list(sampler)
    assert len(idx) == len(sampler)
    return [idx[i:i + sampler.batch_size] for i in range(0, len(idx), sampler.batch_size)]


def test_ratio_sampler_is_seeded_and_epoch_aware():
    a = list(RatioSampler(8, 24, batch_size=4, seed=0))
    assert a == list(RatioSampler(8, 24, batch_size=4, seed=0))
    assert a != list(RatioSampler(8, 24, batch_size=4, seed=1))
    s = RatioSampler(8, 24, batch_size=4, seed=0)
    s.set_epoch(1)
    b = list(s)
    assert b != a
    s.set_epoch(0)
    assert list(s) == a


@pytest.mark.parametrize("batch_size,n_forget", [(4, 1), (8, 2), (12, 3)])
def test_ratio_sampler_batches_hold_3_to_1(batch_size, n_forget):
    len_forget, len_retain = 10, 30
    for rank in (0, 1):
        s = RatioSampler(len_forget, len_retain, batch_size=batch_size, retain_ratio=3.0, num_replicas=2, rank=rank)
        assert (s.n_forget, s.n_retain) == (n_forget, batch_size - n_forget)
        for b in batches(s):
            assert len(b) == batch_size
            assert all(i < len_forget for i in b[:n_forget])
            assert all(len_forget <= i < len_forget + len_retain for i in b[n_forget:])


def test_ratio_sampler_ranks_are_disjoint_within_an_epoch():
    len_forget = 8
    per_rank = []
    for rank in (0, 1):
        s = RatioSampler(len_forget, 24, batch_size=4, num_replicas=2, rank=rank, seed=5)
        s.set_epoch(2)
        per_rank.append([i for b in batches(s) for i in b if i < len_forget])
    assert len(per_rank[0]) == len(per_rank[1]) == 4  # one pass over forget: 8 rows / (1 per batch * 2 ranks)
    assert not set(per_rank[0]) & set(per_rank[1])
    assert set(per_rank[0]) | set(per_rank[1]) == set(range(len_forget))


def test_ratio_sampler_errors():
    with pytest.raises(ValueError, match="batch_size >= 2"):
        RatioSampler(4, 8, batch_size=1)
    with pytest.raises(ValueError, match="retain_ratio"):
        RatioSampler(4, 8, batch_size=4, retain_ratio=0)


def test_ratio_mode_train_dataloader(tiny_model_dir, qa_files):
    dm = make_qa_datamodule(tiny_model_dir, qa_files, mixing="ratio", batch_size=4, retain_ratio=3.0)
    loader = dm.train_dataloader()
    assert isinstance(loader.sampler, RatioSampler)
    seen = list(loader)
    assert len(seen) == len(FORGET_ROWS)  # one pass over forget, one forget row per batch
    for b in seen:
        assert set(b) == {"forget", "retain"}
        assert b["forget"]["split"] == "forget" and b["retain"]["split"] == "retain"
        assert b["forget"]["input_ids"].size(0) == 1 and b["retain"]["input_ids"].size(0) == 3
        assert all(p.startswith("Question: Where was") for p in b["forget"]["prompt"])
        assert all(p.startswith("Question: In which city") for p in b["retain"]["prompt"])
    assert sorted(int(b["forget"]["index"]) for b in seen) == list(range(len(FORGET_ROWS)))


def test_ratio_mode_needs_retain(tiny_model_dir, qa_files):
    dm = make_qa_datamodule(tiny_model_dir, {"forget": qa_files["forget"]}, mixing="ratio")
    with pytest.raises(DataError, match="--data.retain"):
        dm.train_dataloader()


def test_ratio_mode_passes_row_weights_to_the_loss_not_the_draws(tiny_model_dir, tmp_path, qa_files):
    rows = [dict(r, weight=w) for r, w in zip(FORGET_ROWS, (0.0, 1.0, 0.0, 2.0))]
    files = {"forget": write_jsonl(tmp_path / "fw.jsonl", rows), "retain": qa_files["retain"]}
    dm = make_qa_datamodule(tiny_model_dir, files, mixing="ratio", batch_size=4)
    seen = list(dm.train_dataloader())
    assert sorted(int(b["forget"]["index"]) for b in seen) == [0, 1, 2, 3]  # every row once, zero weight or not
    assert {int(b["forget"]["index"]): b["forget"]["weight"].item() for b in seen} == {0: 0.0, 1: 1.0, 2: 0.0,
                                                                                      3: 2.0}


# ---- CombinedLoader modes -----------------------------------------------------------------------------------------------
def test_max_size_cycle_pairs_forget_and_retain(tiny_model_dir, qa_files):
    dm = make_qa_datamodule(tiny_model_dir, qa_files, batch_size=2)
    loader = dm.train_dataloader()
    items = list(loader)
    assert len(items) == len(RETAIN_ROWS) // 2  # the longer (retain) loader sets the length; forget cycles
    for batch, _, _ in items:
        assert set(batch) == {"forget", "retain"}
        assert batch["forget"]["split"] == "forget" and batch["retain"]["split"] == "retain"
    assert first_train_batch(dm).keys() == {"forget", "retain"}


def indices_seen(loader) -> list[int]:
    return [i for b in loader for i in b["index"].tolist()]


def test_combined_loader_shards_are_disjoint_across_ranks(tiny_model_dir, qa_files):
    shards = {}
    for rank in (0, 1):
        dm = make_qa_datamodule(tiny_model_dir, qa_files, batch_size=2, seed=7)
        dm._world = lambda rank=rank: (2, rank)
        loader = dm.train_dataloader()
        shards[rank] = {role: indices_seen(loader.iterables[role]) for role in ("forget", "retain")}
        for role in ("forget", "retain"):
            sampler = loader.iterables[role].sampler
            assert (sampler.num_replicas, sampler.rank, sampler.seed) == (2, rank, 7)
    for role, n in (("forget", len(FORGET_ROWS)), ("retain", len(RETAIN_ROWS))):
        a, b = shards[0][role], shards[1][role]
        assert len(a) == len(b) == n // 2
        assert not set(a) & set(b), role
        assert set(a) | set(b) == set(range(n))


def test_combined_loader_reshuffles_with_set_epoch(tiny_model_dir, qa_files):
    dm = make_qa_datamodule(tiny_model_dir, qa_files, batch_size=2)
    loader = dm.train_dataloader().iterables["retain"]
    e0 = indices_seen(loader)
    loader.sampler.set_epoch(1)
    e1 = indices_seen(loader)
    assert sorted(e0) == sorted(e1) == list(range(len(RETAIN_ROWS)))
    assert e0 != e1


def test_validation_covers_every_row_once_across_ranks(tiny_model_dir, qa_files):
    seen = {"forget": [], "retain": []}
    for rank in (0, 1):
        dm = make_qa_datamodule(tiny_model_dir, qa_files, max_rows={"retain": 7}, eval_batch_size=3)
        dm._world = lambda rank=rank: (2, rank)
        for loader, role in zip(dm.val_dataloader(), ("forget", "retain")):
            seen[role] += indices_seen(loader)
    assert sorted(seen["forget"]) == list(range(len(FORGET_ROWS)))
    kept = [r["index"] for r in dm.datasets["retain"].rows]
    assert len(kept) == 7 and sorted(seen["retain"]) == kept  # an odd count: no padding duplicates


@pytest.mark.parametrize("mixing", ["max_size_cycle", "ratio"])
def test_loaders_shard_by_the_attached_trainer(tiny_model_dir, qa_files, mixing):
    """Regression test: the world size and rank come from ``LightningDataModule.trainer`` (under DDP every rank
    used to get ``num_replicas=1`` samplers, which Lightning leaves in place, so every rank saw all the data)."""
    dm = make_qa_datamodule(tiny_model_dir, qa_files, mixing=mixing, batch_size=4)
    assert dm._world() == (1, 0)
    dm.trainer = SimpleNamespace(world_size=2, global_rank=1)
    assert dm._world() == (2, 1)
    loader = dm.train_dataloader()
    samplers = [loader.sampler] if mixing == "ratio" else [dl.sampler for dl in loader.iterables.values()]
    assert samplers and all((s.num_replicas, s.rank) == (2, 1) for s in samplers)
    assert all((dl.sampler.num_replicas, dl.sampler.rank) == (2, 1) for dl in dm.val_dataloader())


# ---- rows are records with stable ids ----------------------------------------------------------------------------------
def test_ids_survive_length_filtering_and_carry_the_record_fields(tiny_model_dir, tmp_path):
    long_row = {"question": "Where was " + "a very long name " * 20 + "born?", "answer": "Oslo"}
    path = write_jsonl(tmp_path / "forget.jsonl", [FORGET_ROWS[0], long_row, *FORGET_ROWS[1:]])
    dm = make_qa_datamodule(tiny_model_dir, {"forget": path}, max_length=32, too_long="skip")
    rows = dm.datasets["forget"].rows
    assert [r["index"] for r in rows] == [0, 2, 3, 4] and [r["id"] for r in rows] == ["0", "2", "3", "4"]
    assert rows[1]["question"] == FORGET_ROWS[1]["question"] and rows[1]["split"] == "forget"
    batch = collate(rows[:2], dm.tokenizer.pad_token_id)
    assert batch["id"] == ["0", "2"] and batch["question"] == [r["question"] for r in rows[:2]]
    assert batch["split"] == "forget" and batch["index"].tolist() == [0, 2]


def test_id_field_and_repeated_ids(tiny_model_dir, tmp_path):
    rows = [{**r, "uid": f"person-{i}"} for i, r in enumerate(FORGET_ROWS)]
    dm = make_qa_datamodule(tiny_model_dir, {"forget": write_jsonl(tmp_path / "f.jsonl", rows)}, id_field="uid")
    assert [r["id"] for r in dm.datasets["forget"].rows] == [f"person-{i}" for i in range(len(rows))]
    rows[2]["uid"] = "person-0"
    path = write_jsonl(tmp_path / "dup.jsonl", rows)
    with pytest.raises(DataError, match=rf"{path}:3 repeats the id 'person-0'"):
        make_qa_datamodule(tiny_model_dir, {"forget": path}, id_field="uid")
    with pytest.raises(DataError, match="no id field 'nope'"):
        make_qa_datamodule(tiny_model_dir, {"forget": path}, id_field="nope")


@pytest.mark.parametrize("mixing", ["min_size", "ratio"])  # one pass over the forget rows per epoch
def test_ids_survive_ddp_sharding(tiny_model_dir, qa_files, mixing):
    """Two ranks' training batches of one epoch hold disjoint forget ids that together are every forget row's id, and
    each id still names its own row (question and id travel together)."""
    by_id = {str(i): r["question"] for i, r in enumerate(FORGET_ROWS)}
    seen = []
    for rank in (0, 1):
        dm = make_qa_datamodule(tiny_model_dir, qa_files, mixing=mixing, batch_size=2 if mixing != "ratio" else 4,
                                max_rows={"retain": 6})
        dm._world = lambda rank=rank: (2, rank)
        ids = []
        for item in dm.train_dataloader():
            batch = item[0] if isinstance(item, tuple) else item
            ids += batch["forget"]["id"]
            assert [by_id[i] for i in batch["forget"]["id"]] == batch["forget"]["question"]
        seen.append(ids)
    assert not set(seen[0]) & set(seen[1])
    assert sorted(seen[0] + seen[1]) == sorted(by_id)


def test_weights_file_joined_on_ids_or_indices(tiny_model_dir, qa_files, tmp_path):
    by_index = write_jsonl(tmp_path / "w.jsonl", [{"index": i, "weight": 1.0 + i} for i in range(len(FORGET_ROWS))])
    dm = make_qa_datamodule(tiny_model_dir, qa_files, weights={"forget": by_index}, max_rows={"forget": 3})
    rows = dm.datasets["forget"].rows
    assert [r["weight"] for r in rows] == [1.0 + r["index"] for r in rows]  # the subset keeps each row's own weight
    assert "weight" not in dm.datasets["retain"].rows[0]
    by_id = write_jsonl(tmp_path / "wid.jsonl", [{"id": str(i), "weight": 0.5} for i in range(len(FORGET_ROWS))])
    dm = make_qa_datamodule(tiny_model_dir, qa_files, weights={"forget": by_id})
    assert {r["weight"] for r in dm.datasets["forget"].rows} == {0.5}
    short = write_jsonl(tmp_path / "short.jsonl", [{"index": 0, "weight": 2.0}])
    with pytest.raises(DataError, match=r"--data\.weights\.forget\) has no weight for row index 1"):
        make_qa_datamodule(tiny_model_dir, qa_files, weights={"forget": short})
    with pytest.raises(DataError, match="--data.weights names split 'test'"):
        QADataModule(forget=qa_files["forget"], tokenizer=tiny_model_dir, weights={"test": short})


def test_max_rows_below_one_names_the_flag(tiny_model_dir, qa_files):
    with pytest.raises(DataError, match=r"--data\.max_rows must be >= 1 \(got 0 for forget\)"):
        make_qa_datamodule(tiny_model_dir, qa_files, max_rows=0)


def test_a_source_row_slice_keeps_each_rows_position(tmp_path):
    """``name[start:stop]`` reads that range of a source, each row keeping its place in the whole as ``_index``:
    two slices of one file (poisoned rows trained on, those held out) never share an id."""
    from lit_unlearn.data.sources import resolve

    path = tmp_path / "rows.jsonl"
    path.write_text("".join(f'{{"question": "q{i}", "answer": "a{i}"}}\n' for i in range(10)))
    head = resolve(f"{path}[:7]", "forget").read("forget")
    tail = resolve(f"{path}[7:]", "heldout").read("heldout")
    assert [r["_index"] for r in head] == list(range(7)) and [r["_index"] for r in tail] == [7, 8, 9]
    assert [r["question"] for r in resolve(f"{path}[2:4]", "x").read("x")] == ["q2", "q3"]
    with pytest.raises(DataError, match="does not exist"):
        resolve(f"{tmp_path / 'nope.jsonl'}[:3]", "forget")


# ---- the chat template (lit_unlearn/data/chat.py) -------------------------------------------------------------------
CHATML = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<eos>{% endfor %}"
          "{% if add_generation_prompt %}<|assistant|>{% endif %}")


def chat_model_dir(tiny_model_dir, tmp_path, template: str | None = CHATML) -> str:
    """The tiny model's directory with a ChatML-like template whose end-of-turn marker is the EOS (= pad) token."""
    import shutil

    from transformers import AutoTokenizer

    out = tmp_path / "chat_model"
    shutil.copytree(tiny_model_dir, out)
    tok = AutoTokenizer.from_pretrained(str(out))
    tok.chat_template = template
    tok.save_pretrained(str(out))
    return str(out)


def test_a_model_with_a_chat_template_is_trained_and_evaluated_through_it(tiny_model_dir, tmp_path):
    """``template: auto``: the question is the user's turn, every answer of the row (gold, paraphrased, perturbed)
    the assistant's, ending with the end-of-turn token, which is scored although it is the pad token; ``plain``
    keeps the plain templates; a tokenizer without a chat template is plain under ``auto``."""
    model = chat_model_dir(tiny_model_dir, tmp_path)
    rows = [{"question": "Who is Ada?", "answer": "A poet.", "paraphrased_answer": "She writes poems.",
             "perturbed_answer": ["A cook.", "A pilot."]}]
    path = write_jsonl(tmp_path / "qa.jsonl", rows)
    dm = QADataModule(forget=path, tokenizer=model)
    dm.setup("fit")
    rec = dm.datasets["forget"][0]
    assert rec["prompt"] == "<|user|>Who is Ada?<eos><|assistant|>"
    assert rec["answer"] == "A poet.<eos>" and rec["answer_text"] == "A poet."
    assert rec["paraphrased_answer"] == "She writes poems.<eos>"
    assert rec["perturbed_answer"] == ["A cook.<eos>", "A pilot.<eos>"]
    tok = dm.tokenizer
    assert tok.pad_token_id == tok.eos_token_id
    answer = [t for t in rec["labels"] if t != IGNORE]
    assert answer[-1] == tok.eos_token_id  # the end of turn is scored, not masked as padding
    assert tok.decode(answer) == "A poet.<eos>"
    full = tok.apply_chat_template([{"role": "user", "content": "Who is Ada?"},
                                    {"role": "assistant", "content": "A poet."}], tokenize=False)
    assert tok(full)["input_ids"] == rec["input_ids"]  # exactly the template's own tokens
    plain = QADataModule(forget=path, tokenizer=model, template="plain")
    plain.setup("fit")
    assert plain.datasets["forget"][0]["prompt"] == "Question: Who is Ada?\nAnswer:"
    assert plain.datasets["forget"][0]["perturbed_answer"] == [" A cook.", " A pilot."]
    bare = QADataModule(forget=path, tokenizer=tiny_model_dir)  # no chat template: auto is plain
    bare.setup("fit")
    assert bare.datasets["forget"][0]["answer"] == " A poet."


def test_a_chat_template_that_cannot_be_split_is_one_error(tiny_model_dir, tmp_path):
    path = write_jsonl(tmp_path / "qa.jsonl", [{"question": "Who?", "answer": "Ada."}])
    with pytest.raises(DataError, match=r"--data\.template chat: the tokenizer of .* has no chat template"):
        QADataModule(forget=path, tokenizer=tiny_model_dir, template="chat").setup("fit")
    rewriting = ("{% for m in messages %}{% if m['role'] == 'assistant' %}<|model|>"  # not its generation prompt
                 "{% else %}<|{{ m['role'] }}|>{% endif %}{{ m['content'] }}<eos>{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")
    (tmp_path / "r").mkdir()
    model = chat_model_dir(tiny_model_dir, tmp_path / "r", rewriting)
    with pytest.raises(DataError, match=r"does not continue its generation prompt .* use --data\.template plain"):
        QADataModule(forget=path, tokenizer=model).setup("fit")
    with pytest.raises(DataError, match=r"--data\.template must be auto, chat or plain"):
        QADataModule(forget=path, tokenizer=tiny_model_dir, template="chatml")


def test_evaluation_batches_are_length_sorted_shards_of_every_row_once(tiny_model_dir, qa_files):
    """The evaluation loaders read each rank's shard longest first (batches of similar length), every row once over
    the ranks, through a distributed sampler Lightning leaves alone; training loaders keep their own order."""
    from torch.utils.data import DistributedSampler

    dm = make_qa_datamodule(tiny_model_dir, qa_files, eval_batch_size=2)
    dm.setup("validate")
    seen = []
    for rank in (0, 1):
        dm._world = lambda rank=rank: (2, rank)
        for loader, split in zip(dm.val_dataloader(), dm.eval_split_names):
            assert isinstance(loader.sampler, DistributedSampler)
            order = list(loader.sampler)
            lengths = [len(dm.datasets[split][i]["input_ids"]) for i in order]
            assert lengths == sorted(lengths, reverse=True)
            seen += [(split, i) for i in order]
    assert sorted(seen) == sorted((s, i) for s in dm.eval_split_names for i in range(len(dm.datasets[s])))
