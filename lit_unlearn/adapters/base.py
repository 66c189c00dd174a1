"""The adapter contract: how a parameter-efficient adapter attaches to, and detaches from, a frozen base LM.

LoRA (through PEFT), Prefix and SoftPrompt (virtual tokens) and LoReFT (interventions) implement it. An adapter
object holds only its hyper-parameters; the state lives in the model it was applied to. A saved adapter given as
``init_adapter`` is merged into the base (LoRA) or stacked frozen under the next one (the others;
``lit_unlearn.adapters.saved``). Every method x adapter pair a method accepts runs the method contract tests.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import ClassVar

from torch import nn


class Adapter(ABC):
    """Base class of every adapter.

    Contract (``tests/test_adapter_contract.py`` checks it for every class in ``ADAPTERS`` and each of its
    ``variants``; the adapter-specific tests are in ``tests/test_adapters.py`` (LoRA), ``tests/test_classification.py``
    (Prefix / SoftPrompt) and ``tests/test_reft.py`` (LoReFT)):

    - ``apply(model) -> model``: freeze the base and attach the adapter; returns the model to train.
    - ``disabled(model)``: a context in which the model computes exactly the base model (the reference model
      of NPO/KL methods, with no copy of the weights).
    - ``trainable_parameters(model)``: the adapter's parameters, and nothing of the base.
    - ``save(model, path)`` / ``load(model, path)``: the adapter alone, to and from a directory.
    - ``merge(model) -> model``: fold the adapter into the base for export (a plain ``PreTrainedModel``); an
      adapter that cannot be folded into weights (a prefix, a prompt, an intervention) raises ``AdapterError``.

    ``starts_as_identity`` says whether a freshly applied adapter leaves the model's outputs unchanged
    (LoRA with B = 0 does); only then is "adapter disabled" the same model as "before unlearning".

    ``forward_kwargs(batch)`` sees every batch the method gives the model (the fused forget + retain batch with all
    its keys) and returns call arguments to add or override; the default adds nothing. The virtual-token and ReFT
    adapters act through hooks inside the model instead (LoReFT reads the prompt boundary from the batch here),
    and the model's outputs stay aligned with ``input_ids``.

    Capabilities, declared on the class (they decide which contract checks apply): ``starts_as_identity``,
    ``mergeable`` (``merge`` folds the adapter into the base's weights; False: ``merge`` raises ``AdapterError``)
    and ``variants``, named constructor arguments that change what the adapter computes (LoReFT's gate), each
    held to the contract beside the default configuration.
    """

    starts_as_identity: ClassVar[bool] = True
    mergeable: ClassVar[bool] = True
    variants: ClassVar[dict[str, dict]] = {}

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

