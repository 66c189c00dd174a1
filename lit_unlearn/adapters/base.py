"""The adapter contract: how a parameter-efficient adapter attaches to, and detaches from, a frozen base LM.

LoRA implements it now; prefix tuning, soft prompts and ReFT interventions implement the same five operations.
An adapter object holds only its hyper-parameters; the state lives in the model it was applied to.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path

from torch import nn


class Adapter(ABC):
    """Base class of every adapter.

    Contract (all five are tested for every adapter in ``tests/test_adapters.py``):

    - ``apply(model) -> model``: freeze the base and attach the adapter; returns the model to train.
    - ``disabled(model)``: a context in which the model computes exactly the base model (the reference model
      of NPO/KL methods, with no copy of the weights).
    - ``trainable_parameters(model)``: the adapter's parameters, and nothing of the base.
    - ``save(model, path)`` / ``load(model, path)``: the adapter alone, to and from a directory.
    - ``merge(model) -> model``: fold the adapter into the base for export (a plain ``PreTrainedModel``).

    ``starts_as_identity`` says whether a freshly applied adapter leaves the model's outputs unchanged
    (LoRA with B = 0 does); only then is "adapter disabled" the same model as "before unlearning".

    ``forward_kwargs(batch)`` lets an adapter change how the model is called (extra ``past_key_values`` for a
    prefix, intervention positions for ReFT) without the data modules knowing; the default adds nothing.
    """

    starts_as_identity: bool = True

    @abstractmethod
    def apply(self, model: nn.Module) -> nn.Module: ...

    @abstractmethod
    def disabled(self, model: nn.Module) -> AbstractContextManager: ...

    def trainable_parameters(self, model: nn.Module) -> Iterator[tuple[str, nn.Parameter]]:
        return ((n, p) for n, p in model.named_parameters() if p.requires_grad)

    @abstractmethod
    def save(self, model: nn.Module, path: str | Path) -> None: ...

    @abstractmethod
    def load(self, model: nn.Module, path: str | Path) -> None: ...

    @abstractmethod
    def merge(self, model: nn.Module) -> nn.Module: ...

    def forward_kwargs(self, batch: dict) -> dict:
        return {}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({args})"

