"""Forget/retain mixing.

Two ways to pair forget and retain data in a training step, both giving the step ``{"forget": ..., "retain": ...}``:

- ``CombinedLoader`` modes (``max_size_cycle``, ``min_size``, ``max_size``): two loaders, each with a seeded
  :class:`torch.utils.data.DistributedSampler` (epoch-aware through ``set_epoch``, disjoint across ranks).
- ``ratio``: one loader over ``ConcatDataset([forget, retain])`` whose :class:`RatioSampler` puts a fixed
  retain:forget ratio (e.g. 3:1) in every batch; the collate function splits each batch by role.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch.utils.data import DistributedSampler


class RatioSampler(DistributedSampler):
    """Seeded, epoch-aware sampler that fills each per-rank batch with ``n_forget`` then ``n_retain`` indices.

    Indices refer to ``ConcatDataset([forget, retain])``: forget rows are ``0..len_forget-1`` and retain rows
    follow. Every rank draws the same global stream from ``seed + epoch`` and keeps its own slice of each global
    batch, so ranks never overlap within a pass over the data. Each side's stream is a sequence of permutations
    (re-shuffled when exhausted): rows are drawn uniformly within their side, and per-row weights (influence weights)
    never change how often a row is drawn - they act on its loss only, as in RapidUn's original, whose sampler
    balances the two sides alone (eyerf/RapidUn ``src/rapidun/models/trainer.py:256-269``).

    An epoch is one pass over the forget set: ``ceil(len_forget / (n_forget * num_replicas))`` batches.

    It subclasses ``DistributedSampler`` so Lightning leaves it in place under DDP instead of wrapping it.
    """

    def __init__(
        self,
        len_forget: int,
        len_retain: int,
        batch_size: int,
        retain_ratio: float = 3.0,
        num_replicas: int = 1,
        rank: int = 0,
        seed: int = 0,
    ):
        if batch_size < 2:
            raise ValueError(f"ratio mixing needs batch_size >= 2 to hold forget and retain rows, got {batch_size}")
        if retain_ratio <= 0:
            raise ValueError(f"retain_ratio must be > 0, got {retain_ratio}")
        self.len_forget, self.len_retain = len_forget, len_retain
        self.batch_size = batch_size
        self.n_forget = min(batch_size - 1, max(1, round(batch_size / (1.0 + retain_ratio))))
        self.n_retain = batch_size - self.n_forget
        self.num_replicas, self.rank, self.seed, self.epoch = num_replicas, rank, seed, 0
        self.num_batches = math.ceil(len_forget / (self.n_forget * num_replicas))

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_batches * self.batch_size

    @staticmethod
    def _stream(n: int, count: int, g: torch.Generator) -> torch.Tensor:
        reps = math.ceil(count / n)
        return torch.cat([torch.randperm(n, generator=g) for _ in range(reps)])[:count]

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        steps, world = self.num_batches, self.num_replicas
        forget = self._stream(self.len_forget, steps * world * self.n_forget, g)
        retain = self._stream(self.len_retain, steps * world * self.n_retain, g)
        forget = forget.view(steps, world, self.n_forget)[:, self.rank]
        retain = retain.view(steps, world, self.n_retain)[:, self.rank] + self.len_forget
        return iter(torch.cat([forget, retain], dim=1).reshape(-1).tolist())
