"""The forget/retain DataModule every benchmark builds on.

A concrete benchmark says how one raw row becomes a **record** (:meth:`ForgetRetainDataModule.record`): a dict
with the ``prompt``, the scored ``answer`` and whatever else the benchmark's evaluators need (a label, paraphrased
and perturbed answers, choices, ...). This base adds to each record its stable ``id`` and ``index`` (taken from the
source, kept through ``max_rows``, length filtering and DDP sharding), its ``split`` and an optional ``weight``,
tokenizes it with answer-only labels, and builds the training loader (forget/retain mixing, DDP sharding) and the
evaluation loaders (one per split). Every batch names its split in ``batch["split"]``.

Splits: ``forget`` and ``retain`` are trained on (and evaluated); ``eval_splits`` are evaluated only (e.g.
``test_forget``). Each split runs the evaluators :meth:`ForgetRetainDataModule.evaluators_for` names.
"""

from __future__ import annotations

import random
from typing import ClassVar, Literal

import lightning as L
from lightning.pytorch.utilities import CombinedLoader
from torch.utils.data import ConcatDataset, DataLoader, Dataset, DistributedSampler

from lit_unlearn.core.errors import DataError
from lit_unlearn.core.tokens import IGNORE, collate, encode
from lit_unlearn.data.loaders import LengthSortedShard, ResumableLoader
from lit_unlearn.data.mixing import RatioSampler
from lit_unlearn.data.sources import resolve
from lit_unlearn.eval import Aggregate, Evaluator
from lit_unlearn.eval.specs import build as build_evaluator
from lit_unlearn.eval.specs import check_shared
from lit_unlearn.models.loading import DEFAULT_MODEL, load_tokenizer

Mixing = Literal["max_size_cycle", "min_size", "max_size", "ratio"]
TRAIN_SPLITS = ("forget", "retain")


class RowsDataset(Dataset):
    """Encoded records of one split (``input_ids``, ``labels``, ``id``, ``index``, ``prompt``, ``answer``, ...)."""

    def __init__(self, rows: list[dict], split: str):
        self.rows, self.split = rows, split

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        return self.rows[i]


class _Collate:
    """Picklable collate function (DataLoader workers); ``by_split`` turns a mixed batch into forget/retain."""

    def __init__(self, pad_id: int, split: str | None = None, by_split: bool = False):
        self.pad_id, self.split, self.by_split = pad_id, split, by_split

    def __call__(self, rows: list[dict]) -> dict:
        if not self.by_split:
            return collate(rows, self.pad_id, self.split)
        out = {}
        for split in TRAIN_SPLITS:
            part = [r for r in rows if r["split"] == split]
            if part:
                out[split] = collate(part, self.pad_id, split)
        return out


class ForgetRetainDataModule(L.LightningDataModule):
    """Base forget/retain DataModule; subclasses implement :meth:`record`."""

    #: evaluators every split runs unless ``evaluators`` says otherwise (names of :data:`lit_unlearn.eval.EVALUATORS`)
    default_evaluators: ClassVar[tuple[str, ...]] = ("answer",)
    #: the kinds of rows every split holds (:mod:`lit_unlearn.eval.specs`); :meth:`kinds_of` may say per split
    row_kinds: ClassVar[tuple[str, ...]] = ("text",)
    #: the (forget, retain) splits of the trade-off scalar ``val/gap``
    tradeoff_splits: ClassVar[tuple[str, str]] = ("forget", "retain")

    def __init__(
        self,
        forget: str | list[str] | None = None,
        retain: str | list[str] | None = None,
        eval_splits: dict[str, str | list[str]] | None = None,
        tokenizer: str = DEFAULT_MODEL,
        max_length: int = 256,
        batch_size: int = 8,
        eval_batch_size: int = 32,
        mixing: Mixing = "max_size_cycle",
        retain_ratio: float = 3.0,
        max_rows: int | dict[str, int] | None = None,
        too_long: Literal["error", "skip"] = "error",
        id_field: str | None = None,
        weights: dict[str, str] | None = None,
        token_masks: dict[str, str] | None = None,
        evaluators: dict[str, list[str | dict]] | None = None,
        evaluator_args: dict[str, dict] | None = None,
        train_splits: list[str] | None = None,
        seed: int = 0,
        num_workers: int = 0,
    ):
        """
        Args:
            forget: the forget set (required): a local file (.jsonl/.json/.csv/.tsv/.parquet) or a hub id
                owner/name[:config][@split], read from the local mirror when ``$LIT_UNLEARN_DATA`` is set.
            retain: the retain set (same forms); None trains on forget data alone. Any split may also be a list of
                sources, read one after the other as one split.
            eval_splits: extra evaluation-only splits, name -> source (e.g. ``test_forget: owner/name@test_forget``).
            tokenizer: model name whose tokenizer is used (linked from ``model.model`` by the CLI).
            max_length: longest prompt+answer in tokens (linked to the method's ``max_length``).
            batch_size: training rows per split per step (``ratio`` mode: forget + retain rows per step).
            eval_batch_size: rows per evaluation batch.
            mixing: how forget and retain batches are paired: a CombinedLoader mode, or ``ratio``.
            retain_ratio: retain:forget rows per batch in ``ratio`` mode (3.0 means 3:1).
            max_rows: keep at most this many rows per split (an int for all splits, or split -> int); a seeded
                random subset in source order. For cheap CPU runs on large sets such as SST-2 retain.
            too_long: a row longer than ``max_length`` is an ``error`` (default) or is skipped with a warning.
            id_field: the source field holding each row's id; null: the row's 0-based position in its source.
            weights: per-row weights, split -> a file of ``{"id" or "index", "weight"}`` rows (e.g. influence
                weights), joined on the rows' ids; every row of the split needs one. Overrides a ``weight`` field.
            token_masks: per-token selections, split -> a file of ``{"id", "tokens": [positions]}`` rows (positions
                in the row's tokenized prompt + answer, e.g. from the TokenScores stage); each row of the split gets a
                ``token_mask`` (TNPO reads it); every row needs one and every position must be an answer token.
            evaluators: the evaluators of a split, split -> a list of names (``answer``, ``label``, ...) or
                ``{class_path: MIAEvaluator, init_args: {k: 0.4}}`` entries; other splits run the data module's
                defaults; an empty list leaves a split out of evaluation (lit_unlearn/eval/specs.py).
            evaluator_args: arguments of every evaluator of a name, name -> ``{argument: value}`` (e.g.
                ``{tofu: {max_new_tokens: 48}}``), below an entry's own ``init_args``.
            train_splits: the splits trained on, among ``forget`` and ``retain`` (default both; ``[retain]``
                trains a retain-only model).
            seed: seeds shuffling, mixing and ``max_rows`` subsets (a subset depends on the source and the limit,
                so two splits reading one source with one limit hold the same rows).
            num_workers: DataLoader worker processes.
        """
        super().__init__()
        if not forget:
            raise DataError("--data.forget is required: the forget set's file or hub id")
        if max_length < 2:
            raise DataError(f"--data.max_length must be >= 2, got {max_length}")
        if batch_size < 1 or eval_batch_size < 1:
            raise DataError("--data.batch_size and --data.eval_batch_size must be >= 1")
        self.sources = {"forget": forget, **({"retain": retain} if retain else {}), **(eval_splits or {})}
        check_shared(evaluator_args)
        for split, specs in (evaluators or {}).items():
            if split not in self.sources:
                raise DataError(f"--data.evaluators names split {split!r}, which is not one of: "
                                f"{', '.join(self.sources)}")
            if not isinstance(specs, (list, tuple)):
                raise DataError(f"--data.evaluators.{split} must be a list of evaluators, got {specs!r}")
            for i, spec in enumerate(specs):  # every name and argument checked now, before any model is loaded
                build_evaluator(spec, f"--data.evaluators.{split}[{i}]", evaluator_args)
        configured = tuple(s for s in TRAIN_SPLITS if s in self.sources)
        self.train_splits = tuple(train_splits) if train_splits is not None else configured
        bad = [s for s in self.train_splits if s not in configured]
        if bad or not self.train_splits:
            raise DataError(f"--data.train_splits: {bad[0] if bad else 'nothing'!r} cannot be trained on; choose "
                            f"among the configured {', '.join(s for s in TRAIN_SPLITS if s in self.sources)}")
        for split in token_masks or {}:
            if split not in self.sources:
                raise DataError(f"--data.token_masks names split {split!r}, which is not one of: "
                                f"{', '.join(self.sources)}")
        for split in weights or {}:
            if split not in self.sources:
                raise DataError(f"--data.weights names split {split!r}, which is not one of: {', '.join(self.sources)}")
        self.tokenizer_name = tokenizer
        self.max_length = max_length
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.mixing, self.retain_ratio = mixing, retain_ratio
        self.max_rows, self.too_long = max_rows, too_long
        self.id_field, self.weights, self.evaluator_specs = id_field, dict(weights or {}), dict(evaluators or {})
        self.evaluator_args = dict(evaluator_args or {})
        self.token_masks = dict(token_masks or {})
        self.seed, self.num_workers = seed, num_workers
        self.tokenizer = None
        self.datasets: dict[str, RowsDataset] = {}

    # ---- what a benchmark defines ---------------------------------------------------------------------------
    def record(self, row: dict, split: str) -> dict:
        """The record of one raw row: ``prompt`` (conditions) and ``answer`` (scored), plus the benchmark's fields."""
        raise NotImplementedError

    def default_evaluators_of(self, split: str) -> list[str | dict]:
        """The evaluators ``split`` runs unless ``evaluators`` names its own. Default: ``default_evaluators``."""
        return list(self.default_evaluators)

    def kinds_of(self, split: str) -> tuple[str, ...]:
        """The kinds of rows ``split`` holds (what evaluators may score it). Default: ``row_kinds``."""
        return self.row_kinds

    def evaluators_for(self, split: str) -> list[Evaluator]:
        """Fresh evaluators for ``split``: the ``evaluators`` entry of that split, else
        :meth:`default_evaluators_of`; each built with ``evaluator_args`` and its entry's ``init_args`` and bound to
        this data module. An evaluator of rows the split does not hold is refused."""
        specs = self.evaluator_specs.get(split)
        specs = self.default_evaluators_of(split) if specs is None else specs
        out = []
        for i, spec in enumerate(specs):
            ev = build_evaluator(spec, f"--data.evaluators.{split}[{i}]", self.evaluator_args)
            if not set(ev.kinds) & set(self.kinds_of(split)):
                raise DataError(f"--data.evaluators.{split}: evaluator {ev.name!r} scores {'/'.join(ev.kinds)} rows, "
                                f"but split {split!r} of {type(self).__name__} holds {'/'.join(self.kinds_of(split))} "
                                "rows")
            ev.bind(self, split)
            out.append(ev)
        return out

    def aggregates(self) -> list[Aggregate]:
        """Metrics over several splits (e.g. TOFU's model utility), computed after the splits' evaluators."""
        return []

    @property
    def eval_split_names(self) -> list[str]:
        """The splits evaluated: those with at least one evaluator."""
        return [s for s in self.sources if self.evaluators_for(s)]

    # ---- loading ------------------------------------------------------------------------------------------
    @property
    def split_names(self) -> list[str]:
        return list(self.sources)

    def _limit(self, split: str) -> int | None:
        limit = self.max_rows.get(split) if isinstance(self.max_rows, dict) else self.max_rows
        if limit is not None and limit < 1:
            raise DataError(f"--data.max_rows must be >= 1 (got {limit} for {split})")
        return limit

    def prepare_data(self) -> None:
        """Fetch hub datasets into the ``datasets`` cache once (Lightning runs this on one process per node)."""
        for split in self.sources:
            for name in self._names(split):
                resolve(name, split).prepare()
        for split, name in self.weights.items():
            resolve(name, f"weights.{split}").prepare()

    def _names(self, split: str) -> list[str]:
        names = self.sources[split]
        return [names] if isinstance(names, str) else list(names)

    def read_rows(self, split: str) -> list[dict]:
        """The raw rows of ``split``: its source, or its sources one after the other (``_index`` counts on across
        them, so the ids stay unique and stable for one list of sources; ``_source`` names each row's source)."""
        raw: list[dict] = []
        for name in self._names(split):
            part = resolve(name, split).read(split)
            if not part:
                raise DataError(f"{split}: split {name} is empty")
            offset = len(raw)
            raw += [{**r, "_index": offset + r["_index"], "_source": name} for r in part]
        return raw

    def load_split(self, split: str) -> RowsDataset:
        name = "+".join(self._names(split))
        raw = self.read_rows(split)
        limit = self._limit(split)
        if limit is not None and limit < len(raw):
            keep = sorted(random.Random(f"{self.seed}:{name}").sample(range(len(raw)), limit))
            raw = [raw[i] for i in keep]
        weights = self._read_weights(split) if split in self.weights else None
        masks = self._read_token_masks(split) if split in self.token_masks else None
        rows, skipped, ids = [], 0, set()
        for r in raw:
            rec = self.record(r, split)
            enc = encode(self.tokenizer, rec["prompt"], rec["answer"])
            if enc["n_answer"] == 0 or not rec["answer"].strip():
                raise DataError(f"{split}: {r['_where']} has an empty answer after tokenization")
            if len(enc["input_ids"]) > self.max_length:
                if self.too_long == "skip":
                    skipped += 1
                    continue
                raise DataError(
                    f"{split}: {r['_where']} is {len(enc['input_ids'])} tokens long, over max_length={self.max_length}"
                    " (raise --data.max_length or set --data.too_long skip)"
                )
            rid = self._row_id(r, split)
            if rid in ids:
                raise DataError(f"{split}: {r['_where']} repeats the id {rid!r} of an earlier row (--data.id_field)")
            ids.add(rid)
            rec.update(id=rid, index=r["_index"], split=split)
            if weights is not None:
                key, table = weights
                k = rid if key == "id" else r["_index"]
                if k not in table:
                    raise DataError(f"{split}: the weights file (--data.weights.{split}) has no weight for row {key} "
                                    f"{k!r}")
                rec["weight"] = table[k]
            elif "weight" in r:
                rec["weight"] = float(r["weight"])
            if masks is not None:
                rec["token_mask"] = self._token_mask(split, masks, rid, enc)
            rows.append({**rec, **enc})
        if weights is not None and limit is None and not skipped:
            key, table = weights
            seen = {r["id"] if key == "id" else r["index"] for r in rows}
            stray = [k for k in table if k not in seen]
            if stray:
                raise DataError(f"{split}: the weights file {self.weights[split]} (--data.weights.{split}) has a "
                                f"weight for {key} {stray[0]!r}, which is not a row of the split: it was computed "
                                "for another set")
        if skipped:
            print(f"[lit_unlearn] {split}: skipped {skipped} rows longer than max_length={self.max_length}")
        if not rows:
            raise DataError(f"{split}: no rows of {name} fit in max_length={self.max_length}")
        return RowsDataset(rows, split)

    def _row_id(self, row: dict, split: str) -> str:
        if self.id_field is None:
            return str(row["_index"])
        value = row.get(self.id_field)
        if value is None:
            raise DataError(f"{split}: {row['_where']} has no id field {self.id_field!r} (--data.id_field)")
        return str(value)

    def _read_weights(self, split: str) -> tuple[str, dict]:
        """``("id", {id: w})`` or ``("index", {index: w})`` from the split's weights file."""
        where = f"weights.{split}"
        rows = resolve(self.weights[split], where).read(where)
        key = "id" if rows and "id" in rows[0] else "index"
        table = {}
        for r in rows:
            if r.get(key) is None or r.get("weight") is None:
                raise DataError(f"{where}: {r['_where']} needs {key!r} and 'weight' fields (--data.weights.{split})")
            table[str(r[key]) if key == "id" else int(r[key])] = float(r["weight"])
        return key, table

    def _read_token_masks(self, split: str) -> dict[str, list[int]]:
        where = f"token_masks.{split}"
        table = {}
        for r in resolve(self.token_masks[split], where).read(where):
            if r.get("id") is None or not isinstance(r.get("tokens"), list):
                raise DataError(f"{where}: {r['_where']} needs 'id' and a 'tokens' list (--data.token_masks.{split})")
            table[str(r["id"])] = [int(t) for t in r["tokens"]]
        return table

    def _token_mask(self, split: str, table: dict[str, list[int]], rid: str, enc: dict) -> list[int]:
        if rid not in table:
            raise DataError(f"{split}: the token-mask file (--data.token_masks.{split}) has no row id {rid!r}")
        mask = [0] * len(enc["input_ids"])
        for t in table[rid]:
            if not 0 <= t < len(mask) or enc["labels"][t] == IGNORE:
                raise DataError(f"{split}: the token-mask file (--data.token_masks.{split}) selects position {t} of "
                                f"row {rid!r}, which is not one of its answer tokens (was it made with another "
                                "tokenizer or template?)")
            mask[t] = 1
        return mask

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        for split in self.sources:  # every evaluator on rows its split holds, before any row is read
            self.evaluators_for(split)
        if self.tokenizer is None:
            self.tokenizer = load_tokenizer(self.tokenizer_name)
        self.datasets = {split: self.load_split(split) for split in self.sources}

    # ---- loaders ------------------------------------------------------------------------------------------
    def _world(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)  # LightningDataModule.trainer (it has no `_trainer`)
        if trainer is None:
            return 1, 0
        return trainer.world_size, trainer.global_rank

    def _loader(self, dataset, sampler, batch_size, collate_fn, train: bool = False) -> DataLoader:
        kwargs = dict(batch_size=batch_size, sampler=sampler, collate_fn=collate_fn, num_workers=self.num_workers,
                      persistent_workers=self.num_workers > 0)
        if train:
            return ResumableLoader(dataset, batches_done=self._batches_done, **kwargs)
        return DataLoader(dataset, **kwargs)

    def _batches_done(self) -> int:
        """Batches of the current epoch the training loop has run (0 without a trainer)."""
        trainer = getattr(self, "trainer", None)
        return trainer.fit_loop.epoch_loop.batch_progress.current.ready if trainer is not None else 0

    def train_dataloader(self):
        world, rank = self._world()
        pad = self.tokenizer.pad_token_id
        if self.mixing == "ratio":
            if set(self.train_splits) != set(TRAIN_SPLITS):
                raise DataError("--data.mixing ratio needs a retain set (--data.retain) and both splits trained on")
            f, r = self.datasets["forget"], self.datasets["retain"]
            # row weights act on the loss (the batch's ``weight``), not on how often a row is drawn
            sampler = RatioSampler(len(f), len(r), self.batch_size, self.retain_ratio, world, rank, self.seed)
            return self._loader(ConcatDataset([f, r]), sampler, self.batch_size, _Collate(pad, by_split=True),
                                train=True)
        loaders = {}
        for split in (s for s in self.train_splits if s in self.datasets):
            ds = self.datasets[split]
            sampler = DistributedSampler(ds, num_replicas=world, rank=rank, shuffle=True, seed=self.seed)
            loaders[split] = self._loader(ds, sampler, self.batch_size, _Collate(pad, split), train=True)
        return CombinedLoader(loaders, mode=self.mixing)

    def val_dataloader(self):
        """Each evaluated split, every row once, sharded across ranks, in length-sorted batches."""
        return self._each_row_once(self.eval_split_names, by_length=True)

    def predict_dataloader(self):
        """The trained splits (forget, then retain), every row once, sharded across ranks: what a per-row stage
        (``train.py predict``, e.g. the influence stage) reads."""
        return self._each_row_once([s for s in TRAIN_SPLITS if s in self.datasets])

    def _each_row_once(self, splits: list[str], by_length: bool = False):
        from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler

        world, rank = self._world()
        loaders = []
        for name in splits:
            ds = self.datasets[name]
            # no padding duplicates across ranks: every row is evaluated exactly once
            sampler = LengthSortedShard(ds, world, rank) if by_length else \
                UnrepeatedDistributedSampler(ds, num_replicas=world, rank=rank, shuffle=False)
            loaders.append(self._loader(ds, sampler, self.eval_batch_size, _Collate(self.tokenizer.pad_token_id, name)))
        return loaders

    def test_dataloader(self):
        return self.val_dataloader()
