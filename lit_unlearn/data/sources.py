"""Reading rows from a local file or directory, or from a Hugging Face hub dataset id.

A source is one string:

- a local file: ``.jsonl``, ``.json`` (a list of objects), ``.csv``, ``.tsv`` or ``.parquet``;
- a hub dataset: ``owner/name``, optionally ``owner/name:config`` and ``@split`` (default split ``train``),
  e.g. ``locuslab/TOFU:forget10@train`` or ``karuna-bhaila/Unlearning_SST2v3@train_forget``.

Every row comes back with ``_where``, a ``file:line`` location used in error messages.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

from lit_unlearn.data.tokenize import DataError

_HUB = re.compile(r"^(?P<repo>[\w.-]+/[\w.-]+)(?::(?P<config>[\w.-]+))?(?:@(?P<split>[\w.-]+))?$")
LOCAL_SUFFIXES = (".jsonl", ".json", ".csv", ".tsv", ".parquet")


def read_rows(source: str, role: str) -> list[dict]:
    """All rows of ``source`` as dicts; ``role`` (e.g. ``forget``) names the config field in errors."""
    path = Path(source).expanduser()
    if path.suffix in LOCAL_SUFFIXES or path.exists() or source.startswith((".", "/", "~")):
        if not path.is_file():
            raise DataError(f"{role}: file {path} does not exist (check --data.{role} or its config entry)")
        return _read_local(path, role)
    m = _HUB.match(source)
    if not m:
        raise DataError(f"{role}: {source!r} is neither an existing file nor a hub id like owner/name[:config][@split]")
    return _read_hub(m["repo"], m["config"], m["split"] or "train", role)


def _read_local(path: Path, role: str) -> list[dict]:
    rows: list[dict] = []
    if path.suffix == ".jsonl":
        with path.open(encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as err:
                    raise DataError(f"{role}: {path} line {n} is not valid JSON: {err.msg}") from None
                if not isinstance(obj, dict):
                    raise DataError(f"{role}: {path} line {n} is not a JSON object")
                rows.append({**obj, "_where": f"{path}:{n}"})
    elif path.suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise DataError(f"{role}: {path} is not valid JSON: {err.msg} (line {err.lineno})") from None
        if not isinstance(data, list):
            raise DataError(f"{role}: {path} must hold a JSON list of objects")
        rows = [{**obj, "_where": f"{path}[{i}]"} for i, obj in enumerate(data)]
    elif path.suffix in (".csv", ".tsv"):
        with path.open(encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f, delimiter="\t" if path.suffix == ".tsv" else ",")
            rows = [{**r, "_where": f"{path}:{n + 2}"} for n, r in enumerate(reader)]
    elif path.suffix == ".parquet":
        import datasets

        ds = datasets.load_dataset("parquet", data_files=str(path), split="train")
        rows = [{**r, "_where": f"{path}[{i}]"} for i, r in enumerate(ds)]
    else:
        raise DataError(f"{role}: {path} has an unsupported type; use one of {', '.join(LOCAL_SUFFIXES)}")
    return rows


def _read_hub(repo: str, config: str | None, split: str, role: str) -> list[dict]:
    import datasets

    try:
        ds = datasets.load_dataset(repo, config, split=split)
    except Exception as err:  # network, missing split, missing config: all end here
        raise DataError(f"{role}: could not load hub dataset {repo} (config={config}, split={split}): {err}") from err
    return [{**r, "_where": f"{repo}@{split}[{i}]"} for i, r in enumerate(ds)]


def field(row: dict, name: str, role: str, flag: str) -> str:
    """``row[name]`` as a string, or an error naming the location, the field and the flag that selects it."""
    if name not in row:
        fields = ", ".join(k for k in row if not k.startswith("_"))
        raise DataError(f"{role}: {row['_where']} has no field {name!r} (fields: {fields}); set --data.{flag}")
    value = row[name]
    if value is None:
        raise DataError(f"{role}: {row['_where']} field {name!r} is empty")
    return str(value)
