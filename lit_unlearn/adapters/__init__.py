"""Adapters: one small typed class each, all implementing :class:`Adapter`.

``ADAPTERS`` (class name -> class) is derived from the classes defined in this package: importing a new adapter's
module here registers it for ``class_path: <Name>`` and for the contract tests.
"""

from lit_unlearn.adapters.base import Adapter
from lit_unlearn.adapters.lora import LoRA, merge_saved_adapter
from lit_unlearn.adapters.reft import LoReFT
from lit_unlearn.adapters.saved import attach_saved_adapter, saved_adapter_type
from lit_unlearn.adapters.virtual import Prefix, SoftPrompt
from lit_unlearn.core.errors import AdapterError
from lit_unlearn.core.registry import subclasses_in

ADAPTERS: dict[str, type[Adapter]] = subclasses_in(Adapter, __name__)

__all__ = ["ADAPTERS", "Adapter", "AdapterError", "LoRA", "LoReFT", "Prefix", "SoftPrompt", "attach_saved_adapter",
           "merge_saved_adapter", "saved_adapter_type"]
