"""The method contract: one fixed training step, a few hooks per method.

A step receives ``{"forget": batch, "retain": batch}`` and runs:

    forget = prepare_forget(batch["forget"])             # e.g. IDK swaps in refusal answers
    f, r   = token_stats(forget), token_stats(retain)    # ONE forward over forget + retain (fuse_forward)
    loss   = combine(forget_loss(forget, f), retain_loss(retain, r))

``retain`` selects the retain term for every method: ``none``, ``nll`` (CE on retain answers, i.e. GD) or
``kl`` (KL(p_ref || p_theta) on retain answer positions). The reference model ``p_ref`` is the base with the
adapter disabled (``Adapter.disabled``), never a copy; per-row forget NLLs can be cached (``reference: cached``).
"""

from __future__ import annotations

import logging
import math
from typing import Literal

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.cli import OptimizerCallable
from torch import Tensor, nn

from lit_unlearn.adapters.base import Adapter
from lit_unlearn.adapters.lora import merge_saved_adapter
from lit_unlearn.data.tokenize import IGNORE, encode_batch
from lit_unlearn.eval.metrics import AnswerMetrics, TokenStats
from lit_unlearn.models.head import capture_head_input, head_output_is_logits, lean_head_of
from lit_unlearn.models.loading import DEFAULT_MODEL, AttnBackend, Quantize, load_causal_lm, load_tokenizer

log = logging.getLogger(__name__)

Retain = Literal["none", "nll", "kl"]
Reference = Literal["adapter_off", "cached"]


class MethodError(ValueError):
    """A method was configured in a way that cannot work; the message names the flag."""


class UnlearningMethod(L.LightningModule):
    """Base LightningModule of every method. Subclasses implement :meth:`forget_loss` (and maybe other hooks)."""

    #: whether the method's loss needs the reference model (the base with the adapter disabled)
    needs_reference: bool = False

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        adapter: Adapter | None = None,
        init_adapter: str | None = None,
        dtype: str = "float32",
        quantize: Quantize = None,
        attn_backend: AttnBackend = "auto",
        trust_remote_code: bool = False,
        retain: Retain = "nll",
        forget_weight: float = 1.0,
        retain_weight: float = 1.0,
        reference: Reference = "adapter_off",
        lr: float = 1e-4,
        weight_decay: float = 0.0,
        warmup_ratio: float = 0.0,
        lr_schedule: Literal["constant", "linear", "cosine"] = "constant",
        optimizer: OptimizerCallable | None = None,
        max_length: int = 256,
        fuse_forward: bool = True,
        lean_head: bool = True,
        seed: int = 0,
    ):
        """
        Args:
            model: base model: an embedded alias, a hub id, a local directory or a .gguf file.
            adapter: the trainable adapter (e.g. ``class_path: LoRA``); null trains every parameter.
            init_adapter: a saved adapter directory (e.g. a learn stage's ``adapter/``) merged into the base
                before the new adapter is applied, so "adapter disabled" is the learned model.
            dtype: parameter dtype of the base (float32, bfloat16, float16).
            quantize: ``nf4`` or ``int8`` base through bitsandbytes (QLoRA), or null.
            attn_backend: auto (flash-attn if installed, else SDPA), sdpa, flash_attention_2 or eager.
            trust_remote_code: allow model code from the hub repository (off unless asked).
            retain: the retain term: none, nll (CE on retain answers) or kl (KL(p_ref || p_theta) on them).
            forget_weight: weight of the forget term in the default combine.
            retain_weight: weight of the retain term in the default combine.
            reference: ``adapter_off`` recomputes reference NLLs each step; ``cached`` computes each forget row's
                reference NLL once (same numbers, fewer forwards).
            lr: learning rate of the default AdamW.
            weight_decay: weight decay of the default AdamW.
            warmup_ratio: fraction of all steps with linear learning-rate warm-up.
            lr_schedule: after warm-up: constant, linear decay to 0, or cosine decay to 0.
            optimizer: an optimizer class path with its arguments, replacing the default AdamW(lr, weight_decay).
            max_length: longest sequence in tokens (linked from ``data.max_length`` by the CLI).
            fuse_forward: run forget and retain rows through the model in one forward (same numbers, faster).
            lean_head: score answer tokens from the LM head's input, answer positions only and in chunks, instead
                of materialising all (B, T, V) logits (same numbers, far less memory); falls back to logits by
                itself where the model's logits are not its plain frozen head's output, and for ``retain: kl``.
            seed: seeds per-row random choices of the method (e.g. random labels).
        """
        super().__init__()
        self.save_hyperparameters(ignore=["adapter", "optimizer"])
        if quantize is not None and adapter is None:
            raise MethodError("--model.quantize needs an adapter: a quantized base cannot be trained directly")
        if self.needs_reference and adapter is None:
            raise MethodError(f"{type(self).__name__} needs an adapter: its reference model is the adapter disabled")
        if retain == "kl" and adapter is None:
            raise MethodError("--model.retain kl needs an adapter: the reference model is the adapter disabled")
        self.model_name, self.adapter, self.init_adapter = model, adapter, init_adapter
        self.dtype_name, self.quantize, self.attn_backend = dtype, quantize, attn_backend
        self.trust_remote_code = trust_remote_code
        self.retain, self.forget_weight, self.retain_weight = retain, forget_weight, retain_weight
        self.reference = reference
        self.lr, self.weight_decay, self.warmup_ratio, self.lr_schedule = lr, weight_decay, warmup_ratio, lr_schedule
        self.optimizer_factory = optimizer
        self.max_length, self.fuse_forward, self.lean_head, self.seed = max_length, fuse_forward, lean_head, seed
        self.lm = None
        self.tokenizer = None
        self.metrics = torch.nn.ModuleDict()
        self.last_eval: dict[str, dict[str, float]] = {}
        self._ref_cache: dict[int, float] = {}
        self._head: tuple[nn.Module | None] | None = None  # (lean head or None,) once checked; a tuple: no submodule
        # the checkpoint holds the adapter only; the base is reloaded from `model`
        self.strict_loading = False

    # ---- model ----------------------------------------------------------------------------------------------
    def configure_model(self) -> None:
        """Load the base (and tokenizer), merge ``init_adapter``, apply the adapter. Idempotent."""
        if self.lm is not None:
            return
        self.tokenizer = load_tokenizer(self.model_name, self.trust_remote_code)
        base = load_causal_lm(self.model_name, self.dtype_name, self.quantize, self.attn_backend,
                              self.trust_remote_code)
        base.config.pad_token_id = self.tokenizer.pad_token_id
        if self.init_adapter:
            base = merge_saved_adapter(base, self.init_adapter)
        if self.adapter is None:
            base.requires_grad_(True)
            self.lm = base
        else:
            self.lm = self.adapter.apply(base)
        # from_pretrained returns eval mode; train as the original recipes do (base dropout on, e.g. OPT's 0.1)
        self.lm.train()

    @property
    def needs_logits(self) -> bool:
        """Whether the training loss needs full (B, T, V) logits (a KL retain term), not only answer log-probs."""
        return self.retain == "kl"

    def forward(self, batch: dict, logits: bool = False) -> TokenStats:
        """Per-token results of ``batch``; ``logits=True`` keeps the full (B, T, V) logits in them."""
        extra = self.adapter.forward_kwargs(batch) if self.adapter is not None else {}
        inputs = dict(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False, **extra)
        head = None if logits else self._lean_head(inputs, probe_one_row=not extra)
        if head is None:
            return TokenStats.from_logits(self.lm(**inputs).logits, batch["labels"])
        with capture_head_input(head) as seen:
            self.lm(**inputs)
        return TokenStats.from_hidden(seen[-1], head, batch["labels"])

    def _lean_head(self, inputs: dict, probe_one_row: bool) -> nn.Module | None:
        """The head for :meth:`TokenStats.from_hidden`, or None (``lean_head`` off, or the model does not qualify:
        checked once, on the first batch, see :mod:`lit_unlearn.models.head`)."""
        if not self.lean_head:
            return None
        if self._head is None:
            head = lean_head_of(self.lm)
            if head is not None:
                probe = {k: (v[:1] if isinstance(v, Tensor) else v) for k, v in inputs.items()} if probe_one_row \
                    else inputs  # an adapter's extra inputs (prefixes) may not slice by row
                modes = {m: m.training for m in self.lm.modules()}
                self.lm.eval()  # dropout off: the probe compares the logits with the head's output of one forward
                try:
                    if not head_output_is_logits(self.lm, head, **probe):
                        head = None
                finally:
                    for m, training in modes.items():  # every module back to its own mode, not the root's
                        m.training = training
            if head is None:
                log.info("lean_head: %s's logits are not a plain frozen head's output; using full logits",
                         type(self.lm).__name__)
            self._head = (head,)
        return self._head[0]

    @torch.no_grad()
    def reference_stats(self, batch: dict, logits: bool = False) -> TokenStats:
        """The reference model's per-token results: the adapter disabled, no gradient."""
        if self.adapter is None:
            raise MethodError(f"{type(self).__name__} needs an adapter for its reference model")
        with self.adapter.disabled(self.lm):
            return self.forward(batch, logits=logits)

    def reference_seq_nll(self, batch: dict) -> Tensor:
        """(B,) reference NLL_seq of each row; with ``reference: cached`` each row is computed once."""
        if self.reference == "adapter_off":
            return self.reference_stats(batch).seq_nll
        idx = batch["index"].tolist()
        todo = [i for i, k in enumerate(idx) if k not in self._ref_cache]
        if todo:
            sub = {k: (v[todo] if isinstance(v, Tensor) else v) for k, v in batch.items()}
            for k, v in zip((idx[i] for i in todo), self.reference_stats(sub).seq_nll.tolist()):
                self._ref_cache[k] = v
        return torch.tensor([self._ref_cache[k] for k in idx], device=self.device)

    def encode(self, prompts: list[str], answers: list[str], index: Tensor | None = None) -> dict:
        """Tokenize (prompt, answer) pairs the way the data modules do, on this module's device."""
        batch = encode_batch(self.tokenizer, prompts, answers, self.max_length, index)
        return {k: (v.to(self.device) if isinstance(v, Tensor) else v) for k, v in batch.items()}

    # ---- hooks a method overrides ---------------------------------------------------------------------------
    def prepare_forget(self, batch: dict) -> dict:
        """Rewrite the forget batch before the forward (IDK / random labels swap the answers). Default: as is."""
        return batch

    def forget_loss(self, batch: dict, stats: TokenStats) -> Tensor:
        raise NotImplementedError

    def retain_loss(self, batch: dict, stats: TokenStats) -> Tensor | None:
        """``nll``: CE on retain answers. ``kl``: KL(p_ref || p_theta) averaged over retain answer tokens."""
        if self.retain == "nll":
            return stats.ce
        if self.retain == "kl":
            ref = self.reference_stats(batch, logits=True)
            logp = F.log_softmax(stats.logits.float(), -1)
            logq = F.log_softmax(ref.logits.float(), -1)
            kl = (logq.exp() * (logq - logp)).sum(-1)
            return (kl * stats.mask).sum() / stats.mask.sum().clamp(min=1)
        return None

    def combine(self, forget: Tensor | None, retain: Tensor | None) -> Tensor:
        parts = [w * x for w, x in ((self.forget_weight, forget), (self.retain_weight, retain)) if x is not None]
        return sum(parts[1:], parts[0])

    # ---- the fixed training step ----------------------------------------------------------------------------
    def stats_for(self, batches: list[dict | None]) -> list[TokenStats | None]:
        """Per-batch :class:`TokenStats`; with ``fuse_forward`` all batches go through one forward."""
        present = [b for b in batches if b is not None]
        logits = self.needs_logits
        if not self.fuse_forward or len(present) < 2:
            return [self(b, logits=logits) if b is not None else None for b in batches]
        width = max(b["input_ids"].size(1) for b in present)
        pad = self.tokenizer.pad_token_id

        def widen(t: Tensor, fill: int) -> Tensor:
            return F.pad(t, (0, width - t.size(1)), value=fill)

        fused = {"input_ids": torch.cat([widen(b["input_ids"], pad) for b in present]),
                 "attention_mask": torch.cat([widen(b["attention_mask"], 0) for b in present]),
                 "labels": torch.cat([widen(b["labels"], IGNORE) for b in present])}
        stats = self(fused, logits=logits)
        out, start = [], 0
        for b in batches:
            if b is None:
                out.append(None)
                continue
            n, w = b["input_ids"].size(0), b["input_ids"].size(1)
            sl = slice(start, start + n)
            out.append(stats.rows(sl, w))
            start += n
        return out

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        forget = self.prepare_forget(batch["forget"]) if "forget" in batch else None
        retain = batch.get("retain") if self.retain != "none" else None
        f_stats, r_stats = self.stats_for([forget, retain])
        f_loss = self.forget_loss(forget, f_stats) if forget is not None else None
        r_loss = self.retain_loss(retain, r_stats) if retain is not None else None
        if f_loss is None and r_loss is None:
            raise MethodError("a training batch held neither forget nor retain rows")
        loss = self.combine(f_loss, r_loss)
        n = sum(b["input_ids"].size(0) for b in (forget, retain) if b is not None)
        self.log("train/loss", loss, prog_bar=True, batch_size=n)
        if f_loss is not None:
            self.log("train/forget_loss", f_loss, batch_size=forget["input_ids"].size(0))
            self.log("train/forget_nll", f_stats.ce.detach(), batch_size=forget["input_ids"].size(0))
        if r_loss is not None:
            self.log("train/retain_loss", r_loss, batch_size=retain["input_ids"].size(0))
        return loss

    # ---- evaluation -----------------------------------------------------------------------------------------
    def _metric(self, split: str) -> AnswerMetrics:
        if split not in self.metrics:
            with torch.inference_mode(False):  # created lazily inside evaluation: states must be normal tensors
                self.metrics[split] = AnswerMetrics().to(self.device)
        return self.metrics[split]

    def on_validation_epoch_start(self) -> None:
        # every rank holds a metric for every split, even one whose shard is empty here: the DDP sync needs them all
        dm = getattr(self.trainer, "datamodule", None)
        for split in getattr(dm, "split_names", []):
            self._metric(split)

    def validation_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._metric(batch.get("split", f"split{dataloader_idx}")).update(self(batch))

    def on_validation_epoch_end(self) -> None:
        results = {}
        for split, metric in self.metrics.items():
            results[split] = {k: float(v) for k, v in metric.compute().items()}
            metric.reset()
        flat = {f"val/{s}/{k}": v for s, d in results.items() for k, v in d.items()}
        if "forget" in results and "retain" in results:
            # forget/retain trade-off: how much better the model answers retain than forget rows (higher = better)
            flat["val/gap"] = results["retain"]["acc"] - results["forget"]["acc"]
        if flat:
            self.log_dict(flat, sync_dist=False)  # already reduced across ranks by torchmetrics
        self.last_eval = results

    test_step = validation_step
    on_test_epoch_start = on_validation_epoch_start
    on_test_epoch_end = on_validation_epoch_end

    # ---- optimisation and checkpoints -----------------------------------------------------------------------
    def configure_optimizers(self):
        params = [p for p in self.parameters() if p.requires_grad]
        if not params:
            raise MethodError("no trainable parameters: set an adapter or train the full model (adapter: null)")
        opt = (self.optimizer_factory(params) if self.optimizer_factory is not None
               else torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay))
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warm = int(self.warmup_ratio * total)
        schedule = self.lr_schedule

        def factor(step: int) -> float:
            if step < warm:
                return (step + 1) / (warm + 1)
            t = (step - warm) / max(1, total - warm)
            if schedule == "linear":
                return max(0.0, 1.0 - t)
            if schedule == "cosine":
                return 0.5 * (1.0 + math.cos(math.pi * min(1.0, t)))
            return 1.0

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def on_train_start(self) -> None:
        # Lightning 2.6 builds the training loader while estimating the schedule's length (configure_optimizers),
        # before a resumed run's loop state is restored, so the loaders never receive their saved mid-epoch
        # position; hand it over now, before the first batch is drawn (a no-op for a fresh run).
        loop = self.trainer.fit_loop
        if getattr(loop, "_combined_loader_states_to_load", None) and hasattr(loop, "_load_combined_loader_states"):
            loop._load_combined_loader_states()

    def trainable_names(self) -> list[str]:
        """State-dict names of the trainable tensors: what a checkpoint holds and must hold."""
        return [n for n, p in self.named_parameters() if p.requires_grad]

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Keep only trainable tensors (the adapter) in the checkpoint: the base is reloaded from ``model``."""
        trainable = set(self.trainable_names())
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in trainable}
        checkpoint["lit_unlearn"] = {"method": type(self).__name__, "model": self.model_name,
                                     "adapter": repr(self.adapter), "init_adapter": self.init_adapter}

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

    def export_adapter(self, path) -> None:
        """Save the adapter alone (``Adapter.save``) so a later stage can load or merge it."""
        if self.adapter is None:
            raise MethodError("no adapter to export: this run trained the full model")
        self.adapter.save(self.lm, path)

    def export_merged(self, path) -> None:
        """Save the base with the adapter folded in, plus the tokenizer, as a plain transformers directory.

        Folding is done in place (no second copy of the weights): afterwards this module holds the merged model
        and no adapter, which computes the same outputs.
        """
        if self.adapter is not None:
            self.lm, self.adapter = self.adapter.merge(self.lm), None
            self._head = None
        self.lm.save_pretrained(str(path))
        self.tokenizer.save_pretrained(str(path))
