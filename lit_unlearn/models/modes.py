"""Switching a model to evaluation mode for one block, and back to exactly the modes it had."""

from __future__ import annotations

from contextlib import contextmanager

from torch import nn


@contextmanager
def eval_mode(model: nn.Module):
    """Dropout off inside the block; afterwards every module gets back its *own* train/eval mode (``model.train()``
    would set them all alike, e.g. turning on a frozen base's dropout that was deliberately off)."""
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        yield model
    finally:
        for m, training in modes.items():
            m.training = training
