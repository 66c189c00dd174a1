"""Datasets by hub id: shipped configs name them as a user with network would, and the local mirror
(``$LIT_UNLEARN_DATA`` + the catalog) serves them offline; a name neither has gets one line saying what was tried."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import MIRROR, REPO_ROOT, needs_mirror
from lit_unlearn.cli import UnlearnCLI, cli_main
from lit_unlearn.core.errors import DataError
from lit_unlearn.data import sources
from lit_unlearn.data.catalog import MIRROR_ENV
from test_cli import CONFIGS, config_command

SHIPPED = [c for c in CONFIGS if not c.parent.name == "demo"]  # the demo writes its own data files
# hub datasets the catalog knows but this workspace's mirror does not hold: a shipped config may name them (users
# read them from the hub); here they must resolve to that hub id, and test_muse.py
# and test_wmdp.py read their fields from rows written in the hub's layout
NOT_MIRRORED = {"muse-bench/MUSE-News": "muse", "muse-bench/MUSE-Books": "muse", "cais/wmdp": "wmdp",
                "cais/wmdp-corpora": "wmdp", "Salesforce/wikitext": "wikitext"}  # repo -> its mirror folder


@needs_mirror
@pytest.mark.parametrize("config", SHIPPED, ids=[str(p.relative_to(REPO_ROOT / "configs")) for p in SHIPPED])
def test_every_shipped_config_names_hub_ids_that_the_mirror_serves(config, monkeypatch):
    monkeypatch.chdir(REPO_ROOT)
    monkeypatch.setattr(UnlearnCLI, "_run_subcommand", lambda self, subcommand: None)
    dm = cli_main(config_command(config)).datamodule
    assert dm.sources
    for split, names in dm.sources.items():
        for name in [names] if isinstance(names, str) else names:  # a split may read several sources
            cut = sources._SLICE.match(name)  # a row slice [start:stop] of a hub id
            hub = cut["name"] if cut else name
            assert sources.parse_hub(hub) is not None and not Path(hub).exists(), f"{split}: {name} is not a hub id"
            source = sources.resolve(name, split)
            if source.hub.repo in NOT_MIRRORED and not (MIRROR / NOT_MIRRORED[source.hub.repo]).exists():
                assert source.path is None and source.hub.config and source.hub.split, name
                continue
            assert source.path is not None and source.path.is_relative_to(MIRROR), f"{name} is not served by the mirror"
            rows = source.read(split)
            assert rows and rows[0]["_index"] == (int(cut["start"] or 0) if cut else 0)
            record = dm.record({**rows[0], "_source": name}, split)  # the rows have the fields the module reads
            assert record["answer"].strip()
            assert record["prompt"] or split in ("forget", "retain")  # a corpus row is scored whole: no prompt


def test_a_catalogued_name_reads_the_mirror_file(tmp_path, monkeypatch):
    (tmp_path / "tofu").mkdir()
    (tmp_path / "tofu" / "forget01.jsonl").write_text(json.dumps({"question": "Q", "answer": "A"}) + "\n")
    (tmp_path / "mmlu" / "test").mkdir(parents=True)
    (tmp_path / "mmlu" / "test" / "anatomy_test.csv").write_text("question,choice0,choice1,choice2,choice3,answer\n"
                                                                 "Q?,a,b,c,d,2\n")
    monkeypatch.setenv(MIRROR_ENV, str(tmp_path))
    monkeypatch.setattr(sources, "_load_hub", lambda *a: pytest.fail("the hub was contacted for a mirrored name"))
    rows = sources.read_rows("locuslab/TOFU:forget01@train", "forget")
    assert rows == [{"question": "Q", "answer": "A", "_where": f"{tmp_path / 'tofu' / 'forget01.jsonl'}:1",
                     "_index": 0}]
    mmlu = sources.read_rows("cais/mmlu:anatomy@test", "forget")  # the mirror's CSV in the hub's fields
    assert mmlu[0]["choices"] == ["a", "b", "c", "d"] and mmlu[0]["answer"] == 2


@pytest.mark.parametrize("mirror,why", [
    (None, f"${MIRROR_ENV} is not set"),
    ("empty", "the mirror catalog has no entry for owner/unknown@train"),
])
def test_a_name_neither_the_mirror_nor_the_hub_has_is_one_line(mirror, why, tmp_path, monkeypatch):
    if mirror is None:
        monkeypatch.delenv(MIRROR_ENV, raising=False)
    else:
        monkeypatch.setenv(MIRROR_ENV, str(tmp_path))
    with pytest.raises(DataError) as err:  # HF_DATASETS_OFFLINE=1: the hub is not reachable in tests
        sources.resolve("owner/unknown", "forget").read("forget")
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith("forget: could not load hub dataset owner/unknown (config=None, split=train)")
    assert why in msg and MIRROR_ENV in msg and "--data.forget" in msg


def test_a_catalogued_name_whose_mirror_file_is_missing_says_so(tmp_path, monkeypatch):
    monkeypatch.setenv(MIRROR_ENV, str(tmp_path))
    with pytest.raises(DataError, match=r"its mirror file .*tofu/forget05\.jsonl does not exist"):
        sources.read_rows("locuslab/TOFU:forget05@train", "retain")


def test_hub_datasets_are_fetched_in_prepare_data_once(tiny_model_dir, monkeypatch):
    from lit_unlearn.data import QADataModule

    calls = []

    def fake_hub(hub, split):
        calls.append(str(hub))
        return [{"question": "Q", "answer": "A"}]

    monkeypatch.delenv(MIRROR_ENV, raising=False)
    monkeypatch.setattr(sources, "_load_hub", fake_hub)
    dm = QADataModule(forget="owner/set@forget", retain="owner/set@retain", tokenizer=tiny_model_dir)
    assert calls == []  # building the data module reads nothing
    dm.prepare_data()
    assert calls == ["owner/set@forget", "owner/set@retain"]
    dm.setup("fit")  # each rank then reads the (cached) copy
    assert len(dm.datasets["forget"]) == 1 and dm.datasets["forget"].rows[0]["id"] == "0"
