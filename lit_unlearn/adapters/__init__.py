"""Adapters: one small typed class each, all implementing :class:`Adapter`."""

from lit_unlearn.adapters.base import Adapter
from lit_unlearn.adapters.lora import AdapterError, LoRA, merge_saved_adapter

__all__ = ["Adapter", "AdapterError", "LoRA", "merge_saved_adapter"]
