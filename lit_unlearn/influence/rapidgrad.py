"""RapidGrad (RapidIn, arXiv 2405.11724): compress a gradient of D dimensions to K while keeping inner products.

    pad g to M, a multiple of ``pad_multiple`` (2^24), with zeros
    shuffle: 2 * lambda (lambda = 20) seeded permutations, alternating row and column shuffles of g viewed as a
             (M / c, c) matrix, c = sqrt-ish column count
    flip:    multiply by a fixed seeded +-1 vector
    pool:    sum consecutive blocks of M / K entries -> K values

Permutations and sign flips preserve inner products exactly; pooling keeps them in expectation (the cross terms
s_i s_j a_i b_j of a block have zero mean over the random signs), with an error of order |a||b| / sqrt(K)
(tests/test_influence.py checks a bound on random vectors). The 2*lambda shuffles compose into one permutation,
computed once per (M, seed): applying it is one gather per gradient, the same result as applying them in turn.
Every gradient compressed by one ``RapidGrad`` (same D, K, seed) goes through the same transform, which is what
makes their inner products comparable.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from lit_unlearn.core.errors import ConfigError


class RapidGrad:
    def __init__(self, dim: int, k: int = 65536, shuffles: int = 20, seed: int = 0, pad_multiple: int = 2**24):
        """
        Args:
            dim: D, the length of the gradients to compress.
            k: K, the compressed length (a power of two dividing the padded length).
            shuffles: lambda; 2 * lambda alternating row / column shuffles.
            seed: seeds the permutations and the signs.
            pad_multiple: M is the smallest multiple of this >= D (RapidIn: 2^24).
        """
        if k < 1 or k & (k - 1):
            raise ConfigError(f"RapidGrad K must be a power of two, got {k}")
        self.dim, self.k, self.shuffles, self.seed = dim, k, shuffles, seed
        self.padded = max(1, math.ceil(dim / pad_multiple)) * pad_multiple
        if self.padded % k:
            raise ConfigError(f"RapidGrad K={k} does not divide the padded length {self.padded}")
        g = torch.Generator().manual_seed(seed)
        cols = 2 ** (int(math.log2(self.padded)) // 2)
        rows = self.padded // cols
        order = torch.arange(self.padded)
        for s in range(2 * shuffles):
            view = order.view(rows, cols)
            if s % 2 == 0:
                view = view[torch.randperm(rows, generator=g)]
            else:
                view = view[:, torch.randperm(cols, generator=g)]
            order = view.reshape(-1)
        self.order = order
        self.signs = torch.randint(0, 2, (self.padded,), generator=g).float() * 2 - 1

    def __call__(self, grads: Tensor) -> Tensor:
        """(N, D) -> (N, K) float32 (a (D,) vector gives (K,))."""
        single = grads.dim() == 1
        x = grads.reshape(1, -1) if single else grads
        if x.size(1) != self.dim:
            raise ConfigError(f"RapidGrad was built for D={self.dim}, got gradients of {x.size(1)}")
        x = torch.nn.functional.pad(x.float(), (0, self.padded - self.dim))
        x = x[:, self.order.to(x.device)] * self.signs.to(x.device)
        out = x.view(x.size(0), self.k, -1).sum(-1)
        return out[0] if single else out
