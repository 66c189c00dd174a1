"""What a method's run keeps: its trainable tensors in checkpoints, its adapter and merged model as exports.

A checkpoint holds the trainable tensors only (the adapter; every parameter for full fine-tuning), plus the run's
id, its evaluation history, what the method measured and the reference cache, so a resumed run continues as the
uninterrupted one would; the base is reloaded from ``model``. A checkpoint that lacks some of the model's trainable
tensors is refused (``strict_loading`` is off because the base is not in it, so a mismatch would load nothing).
"""

from __future__ import annotations

from torch import nn

from lit_unlearn.core.errors import MethodError
from lit_unlearn.models.assembly import assemble, export_merged


class TrainedWeights:
    """Checkpoint and export hooks of :class:`~lit_unlearn.methods.base.UnlearningMethod` (module docstring)."""

    def trainable(self) -> list[tuple[str, nn.Parameter]]:
        """``(state-dict name, parameter)`` of what this run trains: the adapter's parameters, found through the
        adapter (``Adapter.trainable_parameters``), or every parameter without one."""
        if self.adapter is None or self.lm is None:
            return [(n, p) for n, p in self.named_parameters() if p.requires_grad]
        return [(f"lm.{n}", p) for n, p in self.adapter.trainable_parameters(self.lm)]

    def trainable_names(self) -> list[str]:
        """State-dict names of the trainable tensors: what a checkpoint holds and must hold."""
        return [n for n, _ in self.trainable()]

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Keep only trainable tensors (the adapter) in the checkpoint: the base is reloaded from ``model``."""
        trainable = set(self.trainable_names())
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in trainable}
        # the reference cache travels with the checkpoint: a resumed run reuses the values computed before the stop
        # instead of recomputing them in other batches (other padding widths, so possibly other float rounding)
        checkpoint["lit_unlearn"] = {"method": type(self).__name__, "model": self.model_name,
                                     "adapter": repr(self.adapter), "init_adapter": self.init_adapter,
                                     "run_id": self.run_id, "reference_cache": dict(self.reference_cache.values),
                                     "eval_history": list(self.eval_history), "measured": dict(self.measured)}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Refuse a checkpoint that lacks some of this model's trainable tensors (strict_loading is off because
        the base is not in the checkpoint, so a mismatched adapter config would otherwise load nothing)."""
        trainable = self.trainable_names()
        missing = [n for n in trainable if n not in checkpoint.get("state_dict", {})]
        if missing:
            saved = checkpoint.get("lit_unlearn", {})
            raise MethodError(
                f"the checkpoint lacks {len(missing)} of this model's {len(trainable)} trainable tensors "
                f"(e.g. {missing[0]}); it was written by {saved.get('method', '?')} with adapter "
                f"{saved.get('adapter', '?')}, this run has {type(self).__name__} with {self.adapter!r}: "
                "use the run's own config.yaml"
            )
        saved = checkpoint.get("lit_unlearn", {})
        self.run_id = saved.get("run_id") or self.run_id
        self.reference_cache.values.update(saved.get("reference_cache") or {})
        self.eval_history = list(saved.get("eval_history") or [])
        self.measured.update(saved.get("measured") or {})

    def export_adapter(self, path) -> None:
        """Save the adapter alone (``Adapter.save``) so a later stage can load or merge it."""
        if self.adapter is None:
            raise MethodError("no adapter to export: this run trained the full model")
        self.adapter.save(self.lm, path)

    def export_merged(self, path) -> None:
        """Save the base with the adapter folded in, plus the tokenizer, as a plain transformers directory.

        Afterwards this module holds the merged model and no adapter, which computes the same outputs.
        """
        def reload_base():
            return assemble(self.model_name, None, self.init_adapter, self.dtype_name, None, self.attn_backend,
                            self.trust_remote_code)[0].to(self.device)

        self.lm, self.adapter = export_merged(self.lm, self.adapter, self.tokenizer, path, reload_base), None
