"""Reference values computed once per row: the model before unlearning never changes, so neither do they.

With ``reference: cached`` a method asks for each forget row's reference NLL_seq through :class:`ReferenceCache`;
rows are keyed on their stable ``id`` (the same row in any epoch, on any rank, after a resume), and only rows not yet
seen go through the reference forward.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from lit_unlearn.core.tokens import row_ids


class ReferenceCache:
    """Per-row reference values keyed on row id."""

    def __init__(self) -> None:
        self.values: dict[str, float] = {}
        #: per-row tensors (e.g. the reference log-probabilities at a row's answer positions); not checkpointed
        self.tensors: dict[str, Tensor] = {}

    def __len__(self) -> int:
        return len(self.values)

    def lookup(self, batch: dict, compute: Callable[[dict], Tensor]) -> Tensor:
        """(B,) values of ``batch``'s rows; ``compute(sub_batch)`` gives them for the rows not cached yet."""
        ids = row_ids(batch)
        todo = [i for i, k in enumerate(ids) if k not in self.values]
        if todo:
            for i, value in zip(todo, compute(_rows(batch, todo)).tolist()):
                self.values[ids[i]] = value
        return torch.tensor([self.values[k] for k in ids], device=batch["input_ids"].device)

    def lookup_rows(self, batch: dict, compute: Callable[[dict], list[Tensor]]) -> Tensor:
        """The per-row tensors of ``batch``'s rows concatenated in row order (``compute(sub_batch)`` gives a list,
        one tensor per row, for the rows not cached yet)."""
        ids = row_ids(batch)
        todo = [i for i, k in enumerate(ids) if k not in self.tensors]
        if todo:
            for i, value in zip(todo, compute(_rows(batch, todo))):
                self.tensors[ids[i]] = value
        return torch.cat([self.tensors[k] for k in ids])


def _rows(batch: dict, keep: list[int]) -> dict:
    return {k: (v[keep] if isinstance(v, Tensor) else [v[i] for i in keep] if isinstance(v, list) else v)
            for k, v in batch.items()}
