"""LoRA (Hu et al. 2021, arXiv 2106.09685) through PEFT.

    W x  ->  W x + (alpha / r) * B A dropout(x),   A in R^{r x d_in} (Kaiming init), B in R^{d_out x r} (zeros)

B = 0 at initialisation, so a fresh LoRA is the identity and ``disabled()`` is the model before training.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import torch
from torch import nn

from lit_unlearn.adapters.base import Adapter
from lit_unlearn.core.errors import AdapterError


class LoRA(Adapter):
    def __init__(
        self,
        r: int = 8,
        alpha: float = 16.0,
        dropout: float = 0.0,
        target_modules: list[str] | str = "all-linear",
        bias: str = "none",
    ):
        """
        Args:
            r: rank of the update B A.
            alpha: scaling numerator; the update is scaled by alpha / r.
            dropout: dropout on the LoRA input.
            target_modules: module names to adapt (e.g. ``[q_proj, v_proj]``), or ``all-linear`` for every linear
                layer but the output head.
            bias: which biases to train: ``none``, ``all`` or ``lora_only``.
        """
        if r < 1:
            raise AdapterError(f"LoRA r must be >= 1, got {r}")
        if not 0.0 <= dropout < 1.0:
            raise AdapterError(f"LoRA dropout must be in [0, 1), got {dropout}")
        self.r = r
        self.alpha = alpha
        self.dropout = dropout
        self.target_modules = target_modules
        self.bias = bias

    def config(self):
        from peft import LoraConfig

        return LoraConfig(r=self.r, lora_alpha=self.alpha, lora_dropout=self.dropout,
                          target_modules=self.target_modules, bias=self.bias, task_type="CAUSAL_LM")

    def apply(self, model: nn.Module) -> nn.Module:
        from peft import get_peft_model, prepare_model_for_kbit_training

        if getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False):
            # casts norms to fp32 and freezes the base; no gradient checkpointing unless asked for elsewhere
            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
        try:
            return get_peft_model(model, self.config())
        except ValueError as err:
            raise AdapterError(f"LoRA target_modules={self.target_modules!r} did not fit the model: {err}") from err

    def disabled(self, model: nn.Module) -> AbstractContextManager:
        return model.disable_adapter()

    def save(self, model: nn.Module, path: str | Path) -> None:
        model.save_pretrained(str(path))

    def load(self, model: nn.Module, path: str | Path) -> None:
        from peft import load_peft_weights, set_peft_model_state_dict

        path = Path(path)
        if not (path / "adapter_config.json").is_file():
            raise AdapterError(f"{path} is not a saved LoRA adapter (no adapter_config.json)")
        result = set_peft_model_state_dict(model, load_peft_weights(str(path), device="cpu"))
        missing = [k for k in result.missing_keys if "lora_" in k]
        if missing:
            raise AdapterError(f"adapter in {path} lacks {len(missing)} LoRA tensors, e.g. {missing[0]}")

    def merge(self, model: nn.Module) -> nn.Module:
        return model.merge_and_unload()

    @contextmanager
    def negated(self, model: nn.Module, scale: float = 1.0):
        """Within the block the adapter's update is -scale * delta (a negated task vector, Ilharco et al. 2023):
        every ``lora_B`` is multiplied by -scale, and the exact weights are put back on exit."""
        saved = []
        with torch.no_grad():
            for name, p in model.named_parameters():
                if ".lora_B." in name:
                    saved.append((p, p.detach().clone()))
                    p.mul_(-scale)
        if not saved:
            raise AdapterError("negated(): the model has no LoRA B matrices")
        try:
            yield model
        finally:
            with torch.no_grad():
                for p, original in saved:
                    p.copy_(original)


def merge_saved_adapter(model: nn.Module, path: str | Path) -> nn.Module:
    """Fold a saved PEFT adapter (e.g. the LoRA of a learn stage) into ``model`` and return the plain model."""
    from peft import PeftModel

    path = Path(path)
    if not (path / "adapter_config.json").is_file():
        raise AdapterError(f"init_adapter {path} is not a saved adapter directory (no adapter_config.json)")
    return PeftModel.from_pretrained(model, str(path)).merge_and_unload()
