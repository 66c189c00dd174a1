"""The forget/retain DataModule every benchmark builds on.

A concrete benchmark says how to turn one raw row into ``(prompt, answer)`` (:meth:`format_row`); this base
reads the sources (local file or hub id), tokenizes with answer-only labels, checks the data, and builds the
training loader (forget/retain mixing, DDP sharding) and the evaluation loaders (one per split).

Splits: ``forget`` and ``retain`` are trained on (and evaluated); ``eval_splits`` are evaluated only
(e.g. ``test_forget``). Every batch names its split in ``batch["split"]``.
"""

from __future__ import annotations

import random
from typing import Literal

import lightning as L
from lightning.pytorch.utilities import CombinedLoader
from torch.utils.data import ConcatDataset, DataLoader, Dataset, DistributedSampler

from lit_unlearn.data.mixing import RatioSampler
from lit_unlearn.data.sources import read_rows
from lit_unlearn.data.tokenize import DataError, collate, encode
from lit_unlearn.models.loading import DEFAULT_MODEL, load_tokenizer

Mixing = Literal["max_size_cycle", "min_size", "max_size", "ratio"]


class RowsDataset(Dataset):
    """Encoded rows (``input_ids``, ``labels``, ``index``, ``prompt``, ``answer``, optional ``weight``)."""

    def __init__(self, rows: list[dict], role: str):
        self.rows, self.role = rows, role

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        return self.rows[i]


class ResumableLoader(DataLoader):
    """A training DataLoader that resumes in the middle of an epoch (Lightning's ``state_dict`` protocol).

    Its state is how many batches of the current epoch the training loop has run, read from the trainer at save
    time (a batch Lightning pre-fetched but did not train on is not counted). After ``load_state_dict`` the next
    pass skips that many batches (modulo its length, for a loader that ``max_size_cycle`` restarted). Samplers are
    seeded by epoch, so the skipped batches are exactly the ones already trained on.
    """

    def __init__(self, *args, batches_done=None, **kwargs):
        super().__init__(*args, **kwargs)
        self._batches_done = batches_done
        self._skip = 0

    def state_dict(self) -> dict:
        return {"batches_done": int(self._batches_done()) if self._batches_done is not None else 0}

    def load_state_dict(self, state: dict) -> None:
        self._skip = int(state.get("batches_done", 0))

    def __iter__(self):
        return _SkipFirst(super().__iter__(), self)


class _SkipFirst:
    """Iterator that drops the loader's pending ``_skip`` batches at its first ``next`` (Lightning calls ``iter``
    once only to check a loader is iterable; that call must not use up the skip)."""

    def __init__(self, it, loader: ResumableLoader):
        self.it, self.loader = it, loader

    def __iter__(self):
        return self

    def __next__(self):
        if self.loader._skip:
            skip, self.loader._skip = self.loader._skip % max(1, len(self.loader)), 0
            for _ in range(skip):
                next(self.it)
        return next(self.it)


class _Collate:
    """Picklable collate function (DataLoader workers); ``split_by_role`` turns a mixed batch into forget/retain."""

    def __init__(self, pad_id: int, split: str | None = None, split_by_role: bool = False):
        self.pad_id, self.split, self.split_by_role = pad_id, split, split_by_role

    def __call__(self, rows: list[dict]) -> dict:
        if not self.split_by_role:
            return collate(rows, self.pad_id, self.split)
        out = {}
        for role in ("forget", "retain"):
            part = [r for r in rows if r["role"] == role]
            if part:
                out[role] = collate(part, self.pad_id, role)
        return out


class ForgetRetainDataModule(L.LightningDataModule):
    """Base forget/retain DataModule; subclasses implement :meth:`format_row`."""

    def __init__(
        self,
        forget: str,
        retain: str | None = None,
        eval_splits: dict[str, str] | None = None,
        tokenizer: str = DEFAULT_MODEL,
        max_length: int = 256,
        batch_size: int = 8,
        eval_batch_size: int = 32,
        mixing: Mixing = "max_size_cycle",
        retain_ratio: float = 3.0,
        max_rows: int | dict[str, int] | None = None,
        too_long: Literal["error", "skip"] = "error",
        seed: int = 0,
        num_workers: int = 0,
    ):
        """
        Args:
            forget: the forget set: a local file (.jsonl/.json/.csv/.tsv/.parquet) or a hub id owner/name[:config][@split].
            retain: the retain set (same forms); None trains on forget data alone.
            eval_splits: extra evaluation-only splits, name -> source (e.g. ``test_forget: path.csv``).
            tokenizer: model name whose tokenizer is used (linked from ``model.model`` by the CLI).
            max_length: longest prompt+answer in tokens (linked to the method's ``max_length``).
            batch_size: training rows per split per step (``ratio`` mode: forget + retain rows per step).
            eval_batch_size: rows per evaluation batch.
            mixing: how forget and retain batches are paired: a CombinedLoader mode, or ``ratio``.
            retain_ratio: retain:forget rows per batch in ``ratio`` mode (3.0 means 3:1).
            max_rows: keep at most this many rows per split (an int for all splits, or split -> int); a seeded
                random subset in file order. For cheap CPU runs on large sets such as SST-2 retain.
            too_long: a row longer than ``max_length`` is an ``error`` (default) or is skipped with a warning.
            seed: seeds shuffling, mixing and ``max_rows`` subsets.
            num_workers: DataLoader worker processes.
        """
        super().__init__()
        if max_length < 2:
            raise DataError(f"--data.max_length must be >= 2, got {max_length}")
        if batch_size < 1 or eval_batch_size < 1:
            raise DataError("--data.batch_size and --data.eval_batch_size must be >= 1")
        self.sources = {"forget": forget, **({"retain": retain} if retain else {}), **(eval_splits or {})}
        self.tokenizer_name = tokenizer
        self.max_length = max_length
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.mixing, self.retain_ratio = mixing, retain_ratio
        self.max_rows, self.too_long = max_rows, too_long
        self.seed, self.num_workers = seed, num_workers
        self.tokenizer = None
        self.datasets: dict[str, RowsDataset] = {}

    # ---- what a benchmark defines ---------------------------------------------------------------------------
    def format_row(self, row: dict, role: str) -> tuple[str, str]:
        """Return ``(prompt, answer)`` for one raw row; the answer is scored, the prompt only conditions it."""
        raise NotImplementedError

    # ---- loading ------------------------------------------------------------------------------------------
    @property
    def split_names(self) -> list[str]:
        return list(self.sources)

    def _limit(self, role: str) -> int | None:
        if isinstance(self.max_rows, dict):
            return self.max_rows.get(role)
        return self.max_rows

    def load_split(self, role: str) -> RowsDataset:
        source = self.sources[role]
        raw = read_rows(source, role)
        if not raw:
            raise DataError(f"{role}: split {source} is empty")
        limit = self._limit(role)
        if limit is not None and limit < len(raw):
            keep = sorted(random.Random(f"{self.seed}:{role}").sample(range(len(raw)), limit))
            raw = [raw[i] for i in keep]
        rows, skipped = [], 0
        for i, r in enumerate(raw):
            prompt, answer = self.format_row(r, role)
            enc = encode(self.tokenizer, prompt, answer)
            if enc["n_answer"] == 0:
                raise DataError(f"{role}: {r['_where']} has an empty answer after tokenization")
            if len(enc["input_ids"]) > self.max_length:
                if self.too_long == "skip":
                    skipped += 1
                    continue
                raise DataError(
                    f"{role}: {r['_where']} is {len(enc['input_ids'])} tokens long, over max_length={self.max_length}"
                    " (raise --data.max_length or set --data.too_long skip)"
                )
            enc.update(index=len(rows), prompt=prompt, answer=answer, role=role)
            if "weight" in r:
                enc["weight"] = float(r["weight"])
            rows.append(enc)
        if skipped:
            print(f"[lit_unlearn] {role}: skipped {skipped} rows longer than max_length={self.max_length}")
        if not rows:
            raise DataError(f"{role}: no rows of {source} fit in max_length={self.max_length}")
        return RowsDataset(rows, role)

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        if self.tokenizer is None:
            self.tokenizer = load_tokenizer(self.tokenizer_name)
        self.datasets = {role: self.load_split(role) for role in self.sources}

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
        roles = [r for r in ("forget", "retain") if r in self.datasets]
        if self.mixing == "ratio":
            if "retain" not in self.datasets:
                raise DataError("--data.mixing ratio needs a retain set (--data.retain)")
            f, r = self.datasets["forget"], self.datasets["retain"]
            sampler = RatioSampler(
                len(f), len(r), self.batch_size, self.retain_ratio, world, rank, self.seed,
                forget_weights=[x.get("weight", 1.0) for x in f.rows] if any("weight" in x for x in f.rows) else None,
                retain_weights=[x.get("weight", 1.0) for x in r.rows] if any("weight" in x for x in r.rows) else None,
            )
            return self._loader(ConcatDataset([f, r]), sampler, self.batch_size, _Collate(pad, split_by_role=True),
                                train=True)
        loaders = {}
        for role in roles:
            ds = self.datasets[role]
            sampler = DistributedSampler(ds, num_replicas=world, rank=rank, shuffle=True, seed=self.seed)
            loaders[role] = self._loader(ds, sampler, self.batch_size, _Collate(pad, role), train=True)
        return CombinedLoader(loaders, mode=self.mixing)

    def val_dataloader(self):
        from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler

        world, rank = self._world()
        loaders = []
        for name, ds in self.datasets.items():
            # no padding duplicates across ranks: every row is evaluated exactly once
            sampler = UnrepeatedDistributedSampler(ds, num_replicas=world, rank=rank, shuffle=False)
            loaders.append(self._loader(ds, sampler, self.eval_batch_size, _Collate(self.tokenizer.pad_token_id, name)))
        return loaders

    def test_dataloader(self):
        return self.val_dataloader()
