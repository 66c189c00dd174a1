"""A training DataLoader that resumes in the middle of an epoch; the length-sorted shards evaluation reads."""

from __future__ import annotations

from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DataLoader


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


class LengthSortedShard(UnrepeatedDistributedSampler):
    """Every row of this rank's shard once (rows ``rank``, ``rank + world``, ...: no row on two ranks, none
    repeated), longest first, so an evaluation batch holds rows of similar length and pads little; the longest
    batch comes first, so a batch size that does not fit fails at once, not at the end. Evaluators sort their
    rows by index before summarizing, so the order changes no number beyond float rounding. A distributed
    sampler, so Lightning does not shard it a second time under DDP."""

    def __init__(self, dataset, world: int = 1, rank: int = 0):
        super().__init__(dataset, num_replicas=world, rank=rank, shuffle=False)

    def __iter__(self):
        return iter(sorted(super().__iter__(), key=lambda i: -len(self.dataset[i]["input_ids"])))
