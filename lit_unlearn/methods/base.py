"""The method contract: one fixed training step, a few hooks per method.

A step receives ``{"forget": batch, "retain": batch}`` and runs:

    forget = prepare_forget(batch["forget"])             # e.g. IDK swaps in refusal answers
    f, r   = token_stats(forget), token_stats(retain)    # ONE forward over forget + retain (fuse_forward)
    loss   = combine(forget_loss(forget, f), retain_loss(retain, r))

``retain`` selects the retain term for every method: ``none``, ``nll`` (CE on retain answers, i.e. GD) or
``kl`` (KL(p_ref || p_theta) on retain answer positions); each method has its own default (``default_retain``).
The reference model ``p_ref`` is the base with the adapter disabled (``Adapter.disabled``) in evaluation mode,
never a copy; per-row forget NLLs can be cached (``reference: cached``, :mod:`lit_unlearn.methods.reference`).

A method is a :class:`~lit_unlearn.eval.module.ScoredModel` that also trains: the model, its loading and its
scoring (:class:`~lit_unlearn.models.scorer.Scorer`), and the evaluation of every split (:mod:`lit_unlearn.eval`)
live there. What is not the step lives beside it: model assembly and export (:mod:`lit_unlearn.models.assembly`),
optimizer and schedule (:mod:`~lit_unlearn.methods.optim`) and the reference cache.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from lightning.pytorch.cli import OptimizerCallable
from torch import Tensor

from lit_unlearn.adapters.base import Adapter
from lit_unlearn.core.errors import MethodError
from lit_unlearn.core.scoring import TokenStats
from lit_unlearn.methods.optim import Schedule, build_optimization
from lit_unlearn.methods.persistence import TrainedWeights
from lit_unlearn.methods.reference import ReferenceCache
from lit_unlearn.models.loading import DEFAULT_MODEL, AttnBackend, Quantize
from lit_unlearn.models.modes import eval_mode
from lit_unlearn.eval.module import ScoredModel

Retain = Literal["none", "nll", "kl"]
Reference = Literal["adapter_off", "cached"]


class UnlearningMethod(TrainedWeights, ScoredModel):
    """Base LightningModule of every method. Subclasses implement :meth:`forget_loss` (and maybe other hooks)."""

    #: whether the method's loss needs the reference model (the base with the adapter disabled)
    needs_reference: ClassVar[bool] = False
    #: a stage the method needs run before it (TNPO's token selection, RapidUn's influence), for the pipeline runner:
    #: ``config`` (a config name in the benchmark's folder), ``subcommand``, ``into`` (dotted key -> the file of its
    #: run folder that key receives; ``key@name`` passes ``{"name": file}``, several names of one key gathered) and
    #: ``overrides`` (``"{run_dir}"`` is its run folder); None: none
    prerequisite: ClassVar[dict | None] = None
    #: an evaluation the pipeline runner runs right after the method's stage (PI-Prefix's trained reading):
    #: ``suffix`` of its run folder's name, ``overrides`` of the stage's saved config (``{run_dir}``: the stage's
    #: folder); None: none
    follow_up: ClassVar[dict | None] = None

    @classmethod
    def prerequisite_for(cls, init_args: dict) -> dict | None:
        """The :attr:`prerequisite` of a stage configured with ``init_args`` (a method may need it only in some
        settings: RapidUn only with influence weights)."""
        return cls.prerequisite
    #: the retain term when the config leaves ``retain`` null
    default_retain: ClassVar[Retain] = "nll"
    #: the adapter classes (by name) the method works with; None: any adapter (the contract suite runs them all)
    adapter_types: ClassVar[tuple[str, ...] | None] = None

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        adapter: Adapter | None = None,
        init_adapter: str | list[str] | None = None,
        dtype: str = "float32",
        quantize: Quantize = None,
        attn_backend: AttnBackend = "auto",
        trust_remote_code: bool = False,
        retain: Retain | None = None,
        forget_weight: float = 1.0,
        retain_weight: float = 1.0,
        reference: Reference = "adapter_off",
        lr: float = 1e-4,
        weight_decay: float = 0.0,
        warmup_ratio: float = 0.0,
        lr_schedule: Schedule = "constant",
        optimizer: OptimizerCallable | None = None,
        max_length: int = 256,
        fuse_forward: bool = True,
        lean_head: bool = True,
        seed: int = 0,
    ):
        """
        Args:
            model, init_adapter, dtype, quantize, attn_backend, trust_remote_code, max_length, lean_head: the model
                and how it is loaded and scored, as :class:`~lit_unlearn.eval.module.ScoredModel` (``init_adapter``
                is merged before the method's adapter is applied, so "adapter disabled" is the learned model;
                ``lean_head`` falls back to logits for ``retain: kl``).
            adapter: the trainable adapter (e.g. ``class_path: LoRA``); null trains every parameter.
            retain: the retain term: none, nll (CE on retain answers) or kl (KL(p_ref || p_theta) on them); null
                takes the method's own default (NPO, SimNPO, GradAscent, RandomLabel: none; GradAscentKL: kl;
                the others: nll).
            forget_weight: weight of the forget term in the default combine (>= 0).
            retain_weight: weight of the retain term in the default combine (>= 0).
            reference: ``adapter_off`` recomputes reference NLLs each step; ``cached`` computes each forget row's
                reference NLL once (same numbers, fewer forwards).
            lr: learning rate of the default AdamW (> 0).
            weight_decay: weight decay of the default AdamW (>= 0).
            warmup_ratio: fraction of all steps with linear learning-rate warm-up, in [0, 1).
            lr_schedule: after warm-up: constant, linear decay to 0, or cosine decay to 0.
            optimizer: an optimizer class path with its arguments (e.g. lion_pytorch.Lion), replacing the default
                AdamW(lr, weight_decay); it runs at this ``lr``, whatever lr its own arguments give.
            fuse_forward: run forget and retain rows through the model in one forward (same numbers, faster).
            seed: seeds per-row random choices of the method (e.g. random labels).
        """
        retain = retain if retain is not None else type(self).default_retain
        _check_hyperparameters(lr=lr, weight_decay=weight_decay, warmup_ratio=warmup_ratio,
                               forget_weight=forget_weight, retain_weight=retain_weight, max_length=max_length)
        super().__init__(model, init_adapter, dtype, quantize, attn_backend, trust_remote_code, max_length, lean_head)
        self.save_hyperparameters(ignore=["adapter", "optimizer"])
        self.hparams["retain"] = retain  # the effective term, not null
        allowed = type(self).adapter_types
        if allowed is not None and adapter is not None and type(adapter).__name__ not in allowed:
            raise MethodError(f"{type(self).__name__} works with --model.adapter {' or '.join(allowed)}, got "
                              f"{adapter!r}")
        if quantize is not None and adapter is None:
            raise MethodError("--model.quantize needs an adapter: a quantized base cannot be trained directly")
        if self.needs_reference and adapter is None:
            raise MethodError(f"{type(self).__name__} needs an adapter: its reference model is the adapter disabled")
        if retain == "kl" and adapter is None:
            raise MethodError("--model.retain kl needs an adapter: the reference model is the adapter disabled")
        self.adapter = adapter
        self.retain, self.forget_weight, self.retain_weight = retain, forget_weight, retain_weight
        self.reference = reference
        self.lr, self.weight_decay, self.warmup_ratio, self.lr_schedule = lr, weight_decay, warmup_ratio, lr_schedule
        self.optimizer_factory, self.fuse_forward, self.seed = optimizer, fuse_forward, seed
        self.reference_cache = ReferenceCache()
        #: values the method measured on the data or the model (e.g. RMU's activation norm and resolved steering):
        #: metrics.json records them under ``measured``; checkpoints keep them, so a resumed run reuses them
        self.measured: dict[str, float | int | str] = {}

    # ---- the reference model ------------------------------------------------------------------------------
    @property
    def needs_logits(self) -> bool:
        """Whether the training loss needs full (B, T, V) logits (a KL retain term), not only answer log-probs."""
        return self.retain == "kl"

    @torch.no_grad()
    def reference_stats(self, batch: dict, logits: bool = False) -> TokenStats:
        """The reference model's per-token results: the adapter disabled, dropout off, no gradient."""
        if self.adapter is None:
            raise MethodError(f"{type(self).__name__} needs an adapter for its reference model")
        with self.adapter.disabled(self.lm), eval_mode(self.lm):
            return self.forward(batch, logits=logits)

    def reference_seq_nll(self, batch: dict) -> Tensor:
        """(B,) reference NLL_seq of each row; with ``reference: cached`` each row (by id) is computed once."""
        if self.reference == "adapter_off":
            return self.reference_stats(batch).seq_nll
        return self.reference_cache.lookup(batch, lambda sub: self.reference_stats(sub).seq_nll)

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
            return self.kl_to_reference(batch, stats)
        return None

    def kl_to_reference(self, batch: dict, stats: TokenStats) -> Tensor:
        """KL(p_ref || p_theta) averaged over ``batch``'s answer tokens (``stats`` must hold logits). With
        ``reference: cached`` each row's reference log-probabilities at its answer positions are computed once
        (rows by id; |answer| x V floats per row, kept on the CPU, not in checkpoints: a resumed run recomputes
        them, from the same unchanged reference model)."""
        logp = F.log_softmax(stats.logits.float(), -1)[stats.mask]
        if self.reference == "cached":
            logq = self.reference_cache.lookup_rows(batch, self._reference_answer_logprobs).to(logp.device)
        else:
            ref = self.reference_stats(batch, logits=True)
            logq = F.log_softmax(ref.logits.float(), -1)[ref.mask]
        kl = (logq.exp() * (logq - logp)).sum(-1)
        return kl.sum() / stats.mask.sum().clamp(min=1)

    def _reference_answer_logprobs(self, batch: dict) -> list[Tensor]:
        ref = self.reference_stats(batch, logits=True)
        logq = F.log_softmax(ref.logits.float(), -1)
        return [logq[i][ref.mask[i]].cpu() for i in range(logq.size(0))]

    def combine(self, forget: Tensor | None, retain: Tensor | None) -> Tensor:
        parts = [w * x for w, x in ((self.forget_weight, forget), (self.retain_weight, retain)) if x is not None]
        return sum(parts[1:], parts[0])

    # ---- the fixed training step ----------------------------------------------------------------------------
    def stats_for(self, batches: list[dict | None]) -> list[TokenStats | None]:
        """Per-batch :class:`TokenStats`; with ``fuse_forward`` all batches go through one forward."""
        return self.scorer.stats_for(batches, self.needs_logits, self.fuse_forward,
                                     forward=lambda b, logits: self(b, logits=logits))

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

    # ---- optimisation ---------------------------------------------------------------------------------------
    def configure_optimizers(self):
        return build_optimization((p for _, p in self.trainable()),
                                  self.trainer.estimated_stepping_batches, self.lr, self.weight_decay,
                                  self.warmup_ratio, self.lr_schedule, self.optimizer_factory)

    def on_train_start(self) -> None:
        # Lightning 2.6 builds the training loader while estimating the schedule's length (configure_optimizers),
        # before a resumed run's loop state is restored, so the loaders never receive their saved mid-epoch
        # position; hand it over now, before the first batch is drawn (a no-op for a fresh run).
        loop = self.trainer.fit_loop
        if getattr(loop, "_combined_loader_states_to_load", None) and hasattr(loop, "_load_combined_loader_states"):
            loop._load_combined_loader_states()


def _check_hyperparameters(**values: float) -> None:
    """Refuse values no run can use, when the method is built (before any model is loaded)."""
    lr, warmup, max_length = values.pop("lr"), values.pop("warmup_ratio"), values.pop("max_length")
    if not lr > 0:
        raise MethodError(f"--model.lr must be > 0, got {lr}")
    if not 0 <= warmup < 1:
        raise MethodError(f"--model.warmup_ratio must be in [0, 1), got {warmup}")
    if max_length < 2:
        raise MethodError(f"--model.max_length must be >= 2, got {max_length}")
    for name, value in values.items():
        if not value >= 0:
            raise MethodError(f"--model.{name} must be >= 0, got {value}")


def positive(**values: float) -> None:
    """Refuse a method knob that must be > 0 (an inverse temperature, an exponent), naming its flag."""
    for name, value in values.items():
        if not value > 0:
            raise MethodError(f"--model.{name} must be > 0, got {value}")
