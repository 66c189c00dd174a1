"""The local mirror: known hub datasets as files in one folder, for machines without hub access.

Configs name datasets as a user with network would, by hub id (``locuslab/TOFU:forget10@train``). Where the
environment variable ``LIT_UNLEARN_DATA`` names a folder, a hub id that this catalog knows is read from the file it
maps to in that folder instead of from the hub; a name the catalog does not know, or whose file is missing, goes to
the hub as usual. The folder layout (one sub-folder per dataset) is documented in ``docs/data.md``.

A rule may also convert the mirror's rows to the hub's field names, so a data module sees the same rows either way.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

#: environment variable naming the mirror folder
MIRROR_ENV = "LIT_UNLEARN_DATA"

TOFU_CONFIGS = (
    "full", "forget01", "forget05", "forget10", "retain90", "retain95", "retain99", "holdout01", "holdout05",
    "holdout10", "forget01_perturbed", "forget05_perturbed", "forget10_perturbed", "retain_perturbed",
    "real_authors", "real_authors_perturbed", "world_facts", "world_facts_perturbed",
)
UNLEARN_SPLITS = ("train_forget", "train_retain", "test_forget", "test_retain")


@dataclass(frozen=True)
class HubName:
    """A hub dataset as ``repo[:config][@split]`` (split ``train`` when not given)."""

    repo: str
    config: str | None
    split: str

    def __str__(self) -> str:
        return self.repo + (f":{self.config}" if self.config else "") + f"@{self.split}"


@dataclass(frozen=True)
class Rule:
    """Where one hub repository's splits live in the mirror: ``path(config, split)`` -> a relative file or None."""

    repo: str
    path: Callable[[str | None, str], str | None]
    convert: Callable[[dict], dict] | None = None
    #: reads the rows itself from the mapped file (a format the generic reader does not know); None: by suffix
    reader: Callable[[Path, str], list[dict]] | None = None


def _mmlu_row(row: dict) -> dict:
    """MMLU's CSV files (``question,choice0..choice3,answer``) in ``cais/mmlu``'s fields (``choices`` list)."""
    choices = [row.pop(f"choice{i}") for i in range(4) if f"choice{i}" in row]
    return {**row, "choices": [str(c) for c in choices], "answer": int(row["answer"])}


def _yelp_file(c: str | None, s: str) -> str | None:
    """Yelp polarity: the forget splits are in ``yelp_unlearn/``; the full retain side is not in the mirror, so its
    splits map to the Yelp review *sentences* of Shen et al. 2017 (``yelp_sentences/``, dev -> train_retain,
    test -> test_retain), a Yelp-domain proxy that :func:`_read_yelp_sentences` reads (and says so)."""
    if c not in (None, "default"):
        return None
    if s in ("train_forget", "test_forget"):
        return f"yelp_unlearn/{s}.csv"
    return {"train_retain": "yelp_sentences/sentiment.dev.0", "test_retain": "yelp_sentences/sentiment.test.0"}.get(s)


def _read_yelp_sentences(negative: Path, split: str) -> list[dict]:
    """``sentiment.<part>.0`` (negative) and ``.1`` (positive), one sentence per line, as ``text,label,label_text``
    rows: all negative lines, then all positive ones."""
    print(f"[lit_unlearn] {split}: Yelp polarity's retain side is not in the local mirror; reading the Yelp review "
          f"sentences of Shen et al. 2017 ({negative.parent.name}/) as its proxy (docs/data.md)")
    rows = []
    for label, word in ((0, "negative"), (1, "positive")):
        path = negative.with_suffix(f".{label}")
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                rows.append({"text": line.strip(), "label": label, "label_text": word, "_where": f"{path}:{n}",
                             "_index": len(rows)})
    return rows


CATALOG: dict[str, Rule] = {r.repo: r for r in (
    Rule("locuslab/TOFU", lambda c, s: f"tofu/{c}.jsonl" if c in TOFU_CONFIGS and s == "train" else None),
    Rule("karuna-bhaila/Unlearning_SST2v3",
         lambda c, s: f"sst2_unlearn/v3_{s}.csv" if c in (None, "default") and s in UNLEARN_SPLITS else None),
    Rule("karuna-bhaila/Unlearning_Yelp_Polarity", _yelp_file,
         reader=lambda path, split: _read_yelp_sentences(path, split) if path.suffix == ".0" else None),
    Rule("cais/mmlu", lambda c, s: f"mmlu/{s}/{c}_{s}.csv" if c and s in ("test", "dev") else None,
         convert=_mmlu_row),
    # the Deeb & Roger files (GitHub aghyad-deeb/unlearning_evaluation, data/<config>/<split>.jsonl): config = the
    # data set (random_bd, wmdp-deduped, ...), split = the file's stem (split_0, corpus_split_0, whp_corpus_split_0)
    Rule("aghyad-deeb/unlearning_evaluation", lambda c, s: f"deeb_roger/{c}/{s}.jsonl" if c else None),
    # the RapidUn backdoor data (GitHub eyerf/RapidUn, data/<config>/<split>.jsonl): config = the folder
    # (unlearn_packs, dolly_triggers_out), split = the file's stem (forget_set, retain_set, train_poisoned, ...); no
    # config: data/keywords_scored_top1000.tsv, the words of the poisoned responses (eyerf/RapidUn@keywords_scored_top1000)
    # MUSE (muse-bench/MUSE-News, muse-bench/MUSE-Books): muse/<news|books>/<config>/<split>.jsonl, the hub's fields
    Rule("muse-bench/MUSE-News", lambda c, s: f"muse/news/{c}/{s}.jsonl" if c else None),
    Rule("muse-bench/MUSE-Books", lambda c, s: f"muse/books/{c}/{s}.jsonl" if c else None),
    # WMDP (cais/wmdp: wmdp-bio / wmdp-chem / wmdp-cyber @test; cais/wmdp-corpora: bio-retain-corpus,
    # cyber-forget-corpus, cyber-retain-corpus @train; the gated cais/wmdp-bio-forget-corpus@train) and wikitext
    # (Salesforce/wikitext:<config>@<split>, RMU's retain corpus): wmdp/<config>.jsonl, wmdp/corpora/<config>.jsonl,
    # wikitext/<config>/<split>.jsonl, in the hub's fields
    Rule("cais/wmdp", lambda c, s: f"wmdp/{c}.jsonl" if c in ("wmdp-bio", "wmdp-chem", "wmdp-cyber") and s == "test"
         else None),
    Rule("cais/wmdp-corpora", lambda c, s: f"wmdp/corpora/{c}.jsonl" if c and s == "train" else None),
    Rule("cais/wmdp-bio-forget-corpus",
         lambda c, s: "wmdp/corpora/bio-forget-corpus.jsonl" if c in (None, "default") and s == "train" else None),
    Rule("Salesforce/wikitext", lambda c, s: f"wikitext/{c}/{s}.jsonl" if c else None),
    Rule("eyerf/RapidUn", lambda c, s: f"rapidun/{c}/{s}.jsonl" if c in ("unlearn_packs", "dolly_triggers_out")
         else f"rapidun/{s}.tsv" if c is None and s == "keywords_scored_top1000" else None),
)}


def mirror_root() -> Path | None:
    """The mirror folder from ``$LIT_UNLEARN_DATA``, or None when it is not set."""
    root = os.environ.get(MIRROR_ENV)
    return Path(root).expanduser() if root else None


def mirror_file(name: HubName) -> tuple[Path | None, Rule | None, str]:
    """``(file, rule, why)``: the mirror file of ``name`` if it is there, else None and why it is not."""
    root = mirror_root()
    if root is None:
        return None, None, f"${MIRROR_ENV} is not set"
    rule = CATALOG.get(name.repo)
    rel = rule.path(name.config, name.split) if rule else None
    if rel is None:
        return None, None, f"the mirror catalog has no entry for {name}"
    path = root / rel
    if not path.is_file():
        return None, None, f"its mirror file {path} does not exist"
    return path, rule, ""
