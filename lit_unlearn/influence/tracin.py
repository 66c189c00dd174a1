"""TracIn-style influence without a Hessian (RapidIn): I(i -> j) = <RG(g_i), RG(g_j)> for a train row i and a test row
j, and the top-k train rows per test row, computed over chunks so neither set has to fit in memory at once.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor


class TopK:
    """Running top-k (value, train index) per test row, merged chunk by chunk."""

    def __init__(self, n_test: int, k: int):
        self.k = k
        self.values = torch.full((n_test, 0), float("-inf"))
        self.index = torch.zeros((n_test, 0), dtype=torch.long)

    def add(self, scores: Tensor, train_index: Tensor) -> None:
        """``scores`` (n_test, n_chunk): influences of a chunk of train rows with global indices ``train_index``."""
        values = torch.cat([self.values, scores.float().cpu()], 1)
        index = torch.cat([self.index, train_index.cpu().expand(scores.size(0), -1)], 1)
        k = min(self.k, values.size(1))
        self.values, pick = values.topk(k, dim=1)
        self.index = index.gather(1, pick)


def top_influences(train_chunks: Iterable[tuple[Tensor, Tensor]], test: Tensor, k: int) -> TopK:
    """Top-``k`` influences per row of ``test`` (n_test, K) over ``train_chunks``: pairs of (global train indices,
    compressed gradients (n, K)), e.g. read chunk by chunk from disk."""
    top = TopK(test.size(0), k)
    for index, grads in train_chunks:
        top.add(test.float() @ grads.float().T, index)
    return top
