"""A saved adapter directory given as ``init_adapter``: folded into the base (LoRA) or stacked frozen (virtual tokens).

A LoRA (a PEFT directory) is merged: the base's weights change and no adapter remains. A ``Prefix``,
``SoftPrompt`` or ``LoReFT`` cannot be folded into weights; it is attached frozen under the adapter applied next, so "adapter
disabled" (the reference model of NPO / KL) is the model with it, e.g. a SPUL prompt that a relearning attack then
trains a LoRA against.
"""

from __future__ import annotations

import json
from pathlib import Path

from torch import nn

from lit_unlearn.adapters.lora import merge_saved_adapter
from lit_unlearn.adapters.reft import LoReFT
from lit_unlearn.adapters.virtual import CONFIG, Prefix, SoftPrompt

STACKED = {"Prefix": Prefix, "SoftPrompt": SoftPrompt, "LoReFT": LoReFT}
#: the hyper-parameters each stacked kind is rebuilt from (saved in its adapter_config.json)
ARGS = {"Prefix": ("length",), "SoftPrompt": ("length", "encoder_hidden"),
        "LoReFT": ("layers", "rank", "position", "gated", "gate_hidden", "fraction")}


def saved_adapter_type(path: str | Path) -> str:
    """``Prefix``, ``SoftPrompt``, ``LoReFT`` or ``LoRA`` (any PEFT directory) for a saved adapter directory."""
    file = Path(path) / CONFIG
    if file.is_file():
        try:
            kind = json.loads(file.read_text()).get("adapter_type")
        except json.JSONDecodeError:
            kind = None
        if kind in STACKED:
            return kind
    return "LoRA"


def attach_saved_adapter(model: nn.Module, path: str | Path) -> nn.Module:
    """Merge (LoRA) or stack frozen (Prefix, SoftPrompt) the adapter saved in ``path``; returns the model."""
    kind = saved_adapter_type(path)
    if kind == "LoRA":
        return merge_saved_adapter(model, path)
    config = json.loads((Path(path) / CONFIG).read_text())
    return STACKED[kind](**{k: config[k] for k in ARGS[kind] if k in config}).stack(model, path)
