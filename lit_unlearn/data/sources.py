"""Reading rows from a local file or from a Hugging Face hub dataset id (through the local mirror when one is set).

A source is one string:

- a local file: ``.jsonl``, ``.json`` (a list of objects), ``.csv``, ``.tsv`` or ``.parquet``. CSV, TSV and
  Parquet are read with the ``datasets`` library (pandas' quoting, BOM and type handling); JSON and JSONL are parsed
  here, line by line, because ``datasets`` accepts a non-object line silently and merges the fields of all rows
  (a missing field becomes None), so an error could no longer name the line and field to fix;
- a hub dataset: ``owner/name``, optionally ``owner/name:config`` and ``@split`` (default split ``train``), e.g.
  ``locuslab/TOFU:forget10@train`` or ``karuna-bhaila/Unlearning_SST2v3@train_forget``. With ``$LIT_UNLEARN_DATA``
  set, a name the catalog (:mod:`lit_unlearn.data.catalog`) knows is read from the mirror's file; otherwise
  ``datasets.load_dataset`` fetches it (once, in the data module's ``prepare_data``).

Either form may end in a row slice ``[start:stop]`` (Python's, as ``datasets``' split slicing: ``@train[:700]``,
``rows.jsonl[700:]``): the rows of that range only, each keeping its position in the whole source as ``_index``, so
two slices of one source never share an id (e.g. the poisoned rows a model is trained on and those held out).

Every row comes back with ``_where`` (a ``file:line`` or ``name[i]`` location for error messages) and ``_index``,
its 0-based position in the source: the stable id of a row that carries none of its own.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from lit_unlearn.core.errors import DataError
from lit_unlearn.data.catalog import MIRROR_ENV, HubName, Rule, mirror_file

_HUB = re.compile(r"^(?P<repo>[\w.-]+/[\w.-]+)(?::(?P<config>[\w.-]+))?(?:@(?P<split>[\w.-][\w .-]*))?$")
LOCAL_SUFFIXES = (".jsonl", ".json", ".csv", ".tsv", ".parquet")
_SLICE = re.compile(r"^(?P<name>.+)\[(?P<start>-?\d*):(?P<stop>-?\d*)\]$")


@dataclass(frozen=True)
class Source:
    """A resolved source: a local ``path`` (a file, or a hub dataset's mirror file), or a ``hub`` name to fetch."""

    name: str
    path: Path | None = None
    hub: HubName | None = None
    rule: Rule | None = None
    rows: tuple[int | None, int | None] = (None, None)  # a row slice [start:stop] of the source

    def prepare(self) -> None:
        """Fetch a hub dataset into the ``datasets`` cache (no-op for files): run once, before every rank reads."""
        if self.path is None:
            _load_hub(self.hub, self.name)

    def read(self, split: str) -> list[dict]:
        """All rows, each with ``_where`` and ``_index``; ``split`` names the config field in errors."""
        if self.path is None:
            ds = _load_hub(self.hub, split)
            return [{**r, "_where": f"{self.hub}[{i}]", "_index": i} for i, r in enumerate(ds)][slice(*self.rows)]
        own = self.rule.reader(self.path, split) if self.rule is not None and self.rule.reader else None
        rows = own if own is not None else _read_local(self.path, split)
        if self.rule is not None and self.rule.convert is not None:
            rows = [self.rule.convert(dict(r)) for r in rows]
        return rows[slice(*self.rows)]


def parse_hub(name: str) -> HubName | None:
    m = _HUB.match(name)
    return HubName(m["repo"], m["config"], m["split"] or "train") if m else None


def resolve(name: str, split: str) -> Source:
    """Turn a configured source string into a :class:`Source` (checks files and the mirror; fetches nothing)."""
    cut = _SLICE.match(name)
    if cut is not None:
        start, stop = (int(cut[k]) if cut[k] else None for k in ("start", "stop"))
        source = resolve(cut["name"], split)
        return Source(name, path=source.path, hub=source.hub, rule=source.rule, rows=(start, stop))
    path = Path(name).expanduser()
    if path.suffix in LOCAL_SUFFIXES or path.exists() or name.startswith((".", "/", "~")):
        if path.is_dir():
            raise DataError(f"{split}: {path} is a directory; give a data file ({', '.join(LOCAL_SUFFIXES)}) "
                            f"(--data.{split})")
        if not path.is_file():
            raise DataError(f"{split}: file {path} does not exist (check --data.{split} or its config entry)")
        return Source(name, path=path)
    hub = parse_hub(name)
    if hub is None:
        raise DataError(f"{split}: {name!r} is neither an existing file nor a hub id like owner/name[:config][@split]")
    mirrored, rule, _ = mirror_file(hub)
    if mirrored is not None:
        return Source(name, path=mirrored, hub=hub, rule=rule)
    return Source(name, hub=hub)


def read_rows(name: str, split: str) -> list[dict]:
    """All rows of the source ``name`` (see the module docstring)."""
    return resolve(name, split).read(split)


def _load_hub(hub: HubName, split: str):
    import datasets

    try:
        return datasets.load_dataset(hub.repo, hub.config, split=hub.split)
    except Exception as err:  # network, missing split, missing config: all end here
        _, _, why = mirror_file(hub)
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DataError(f"{split}: could not load hub dataset {hub.repo} (config={hub.config}, split={hub.split}): "
                        f"{first}; not in the local mirror either ({why}); set ${MIRROR_ENV} to a mirror folder "
                        "(docs/data.md) or check --data." + split) from err


# ---- local files --------------------------------------------------------------------------------------------------
def _read_local(path: Path, split: str) -> list[dict]:
    if path.suffix == ".jsonl":
        return _read_jsonl(path, split)
    if path.suffix == ".json":
        return [{**obj, "_where": f"{path}[{i}]", "_index": i} for i, obj in enumerate(_read_json_list(path, split))]
    if path.suffix not in LOCAL_SUFFIXES:
        raise DataError(f"{split}: {path} has an unsupported type; use one of {', '.join(LOCAL_SUFFIXES)}")
    import datasets

    kind = "parquet" if path.suffix == ".parquet" else "csv"
    kwargs = {}
    if kind == "csv":  # text stays text: no "NA" / "null" -> missing; ""-fields stay ""
        kwargs = {"delimiter": "\t" if path.suffix == ".tsv" else ",", "keep_default_na": False}
        if not _text(path, split).strip():  # (not UTF-8: says where, before pandas says it less clearly)
            return []
    bars = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        ds = datasets.load_dataset(kind, data_files=str(path), split="train", **kwargs)
    except Exception as err:
        _reader_error(path, split, err)
    finally:
        if bars:
            datasets.enable_progress_bars()
    rows = ds.to_list()
    if kind == "csv":  # header on line 1; rows without embedded newlines
        return [{**r, "_where": f"{path}:{i + 2}", "_index": i} for i, r in enumerate(rows)]
    return [{**r, "_where": f"{path}[{i}]", "_index": i} for i, r in enumerate(rows)]


def _read_jsonl(path: Path, split: str) -> list[dict]:
    rows: list[dict] = []
    for n, line in enumerate(_text(path, split).splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{split}: {path} line {n} is not valid JSON: {err.msg}") from None
        if not isinstance(obj, dict):
            raise DataError(f"{split}: {path} line {n} is not a JSON object")
        rows.append({**obj, "_where": f"{path}:{n}", "_index": len(rows)})
    return rows


def _text(path: Path, split: str) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[:err.start].count(b"\n") + 1
        raise DataError(f"{split}: {path} line {line} is not UTF-8 (byte 0x{data[err.start]:02x}); re-save the file "
                        "as UTF-8 (e.g. iconv -f latin1 -t utf-8)") from None


def _read_json_list(path: Path, split: str) -> list[dict]:
    """A ``.json`` file: a list of objects."""
    try:
        data = json.loads(_text(path, split))
    except json.JSONDecodeError as err:
        raise DataError(f"{split}: {path} is not valid JSON: {err.msg} (line {err.lineno})") from None
    if not isinstance(data, list):
        raise DataError(f"{split}: {path} must hold a JSON list of objects")
    for i, obj in enumerate(data):
        if not isinstance(obj, dict):
            raise DataError(f"{split}: {path}[{i}] is not a JSON object (a .json file holds a list of objects)")
    return data


def _reader_error(path: Path, split: str, err: Exception):
    """``datasets`` could not read ``path``: one line naming the file and the reader's reason."""
    cause = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
    if err.__cause__ is not None and str(err.__cause__).strip():
        cause = str(err.__cause__).strip().splitlines()[0]
    raise DataError(f"{split}: could not read {path}: {cause}") from err


def field(row: dict, name: str, split: str, flag: str) -> str:
    """``row[name]`` as a string, or an error naming the location, the field and the flag that selects it."""
    if name not in row:
        fields = ", ".join(k for k in row if not k.startswith("_"))
        raise DataError(f"{split}: {row['_where']} has no field {name!r} (fields: {fields}); set --data.{flag}")
    value = row[name]
    if value is None:  # absent from this row (``datasets`` fills a field other rows have with None) or null
        fields = ", ".join(k for k, v in row.items() if not k.startswith("_") and v is not None)
        raise DataError(f"{split}: {row['_where']} has no value for field {name!r} (fields with values: {fields}); "
                        f"set --data.{flag}")
    return str(value)
