"""The method contract: one fixed training step, a few hooks per method.

A step receives ``{"forget": batch, "retain": batch}`` and runs:

    forget = prepare_forget(batch["forget"])             # e.g. IDK swaps in refusal answers
    f, r   = token_stats(forget), token_stats(retain)    # ONE forward over forget + retain (fuse_forward)
    loss   = combine(forget_loss(forget, f), retain_loss(retain, r))

``retain`` selects the retain term for every method: ``none``, ``nll`` (CE on retain answers, i.e. GD) or
``kl`` (KL(p_ref || p_theta) on retain answer positions); each method has its own default (``default_retain``).
The reference model ``p_ref`` is the base with the adapter disabled (``Adapter.disabled``) in evaluation mode,
never a copy; per-row forget NLLs can be cached (``reference: cached``, :mod:`lit_unlearn.methods.reference`).

What is not the step lives beside it: model assembly and export (:mod:`~lit_unlearn.methods.assembly`), optimizer
and schedule (:mod:`~lit_unlearn.methods.optim`), the reference cache, and evaluation, which runs the evaluators
each split of the data module names (:mod:`lit_unlearn.eval`).
"""

from __future__ import annotations

from typing import ClassVar, Literal

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.cli import OptimizerCallable
from torch import Tensor, nn

from lit_unlearn.adapters.base import Adapter
from lit_unlearn.core.errors import MethodError
from lit_unlearn.core.scoring import TokenStats
from lit_unlearn.core.tokens import IGNORE, collate, encode_batch
from lit_unlearn.eval import EVALUATORS, EvalSuite, greedy_generate
from lit_unlearn.methods.assembly import assemble, export_merged
from lit_unlearn.methods.optim import Schedule, build_optimization
from lit_unlearn.methods.reference import ReferenceCache
from lit_unlearn.models.head import capture_head_input, resolve_lean_head
from lit_unlearn.models.loading import DEFAULT_MODEL, AttnBackend, Quantize
from lit_unlearn.models.modes import eval_mode

Retain = Literal["none", "nll", "kl"]
Reference = Literal["adapter_off", "cached"]


class UnlearningMethod(L.LightningModule):
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
    #: evaluators (names) the method adds to every evaluated split, after the data module's (GRUN: ``gate``)
    extra_evaluators: ClassVar[tuple[str, ...]] = ()

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
            model: base model: an embedded alias, a hub id, a local directory or a .gguf file.
            adapter: the trainable adapter (e.g. ``class_path: LoRA``); null trains every parameter.
            init_adapter: a saved adapter directory (e.g. a learn stage's ``adapter/``) merged into the base
                before the new adapter is applied, so "adapter disabled" is the learned model; a list is merged in
                order (a learn stage's adapter, then an unlearning run's: the unlearned model, e.g. to attack it).
            dtype: parameter dtype of the base (float32, bfloat16, float16).
            quantize: ``nf4`` or ``int8`` base through bitsandbytes (QLoRA), or null.
            attn_backend: auto (flash-attn if installed, else SDPA), sdpa, flash_attention_2 or eager.
            trust_remote_code: allow model code from the hub repository (off unless asked).
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
            max_length: longest sequence in tokens (linked from ``data.max_length`` by the CLI).
            fuse_forward: run forget and retain rows through the model in one forward (same numbers, faster).
            lean_head: score answer tokens from the LM head's input, answer positions only and in chunks, instead
                of materialising all (B, T, V) logits (same numbers, far less memory); falls back to logits by
                itself where the model's logits are not its plain frozen head's output, and for ``retain: kl``.
            seed: seeds per-row random choices of the method (e.g. random labels).
        """
        super().__init__()
        retain = retain if retain is not None else type(self).default_retain
        _check_hyperparameters(lr=lr, weight_decay=weight_decay, warmup_ratio=warmup_ratio,
                               forget_weight=forget_weight, retain_weight=retain_weight, max_length=max_length)
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
        self.suite: EvalSuite | None = None
        self.last_eval: dict[str, dict[str, float]] = {}
        #: every evaluation run inside fit: ``{"epoch", "step", "val/<split>/<key>": value, ...}`` (metrics.json)
        self.eval_history: list[dict] = []
        self.last_eval_at: tuple | None = None
        self.reference_cache = ReferenceCache()
        #: values the method measured on the data or the model (e.g. RMU's activation norm and resolved steering):
        #: metrics.json records them under ``measured``; checkpoints keep them, so a resumed run reuses them
        self.measured: dict[str, float | int | str] = {}
        self.run_id: str | None = None  # set by the CLI; saved in checkpoints, so a resumed run keeps its id
        self._head: tuple[nn.Module | None] | None = None  # (lean head or None,) once checked; a tuple: no submodule
        # the checkpoint holds the adapter only; the base is reloaded from `model`
        self.strict_loading = False

    # ---- model ----------------------------------------------------------------------------------------------
    def configure_model(self) -> None:
        """Load the base (and tokenizer), merge ``init_adapter``, apply the adapter. Idempotent."""
        if self.lm is None:
            self.lm, self.tokenizer = assemble(self.model_name, self.adapter, self.init_adapter, self.dtype_name,
                                               self.quantize, self.attn_backend, self.trust_remote_code,
                                               self.check_base)

    def check_base(self, base: nn.Module) -> None:
        """Called with the loaded base before the adapter is applied: raise a :class:`MethodError` naming the flag
        if this method cannot work on it (e.g. a layer index past its depth). Default: nothing to check."""

    @property
    def needs_logits(self) -> bool:
        """Whether the training loss needs full (B, T, V) logits (a KL retain term), not only answer log-probs."""
        return self.retain == "kl"

    def forward(self, batch: dict, logits: bool = False) -> TokenStats:
        """Per-token results of ``batch``; ``logits=True`` keeps the full (B, T, V) logits in them."""
        inputs = self.model_inputs(batch)
        head = None if logits else self._lean_head(inputs, probe_one_row=len(inputs) == 3)
        if head is None:
            return TokenStats.from_logits(self.lm(**inputs).logits, batch["labels"])
        with capture_head_input(head) as seen:
            self.lm(**inputs)
        return TokenStats.from_hidden(seen[-1], head, batch["labels"])

    def model_inputs(self, batch: dict) -> dict:
        """The model's call arguments for ``batch``: its ids and mask, plus what the adapter adds from the batch's
        other keys (``Adapter.forward_kwargs``; they override the defaults). Virtual-token adapters rewrite the
        call inside the model and give back outputs aligned with ``input_ids``."""
        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "use_cache": False}
        if self.adapter is not None:
            inputs.update(self.adapter.forward_kwargs(batch))
        return inputs

    def _lean_head(self, inputs: dict, probe_one_row: bool) -> nn.Module | None:
        """The head for :meth:`TokenStats.from_hidden`, or None (``lean_head`` off, or the model does not qualify:
        decided once, on the first batch, by :func:`lit_unlearn.models.head.resolve_lean_head`)."""
        if not self.lean_head:
            return None
        if self._head is None:
            self._head = (resolve_lean_head(self.lm, inputs, probe_one_row),)
        return self._head[0]

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

    def encode(self, prompts: list[str], answers: list[str]) -> dict:
        """Tokenize (prompt, answer) pairs the way the data modules do, on this module's device."""
        batch = encode_batch(self.tokenizer, prompts, answers, self.max_length)
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
        present = [b for b in batches if b is not None]
        logits = self.needs_logits
        if not self.fuse_forward or len(present) < 2:
            return [self(b, logits=logits) if b is not None else None for b in batches]
        pad = self.tokenizer.pad_token_id
        stats = self(fuse_batches(present, pad), logits=logits)
        out, start = [], 0
        for b in batches:
            if b is None:
                out.append(None)
                continue
            n, w = b["input_ids"].size(0), b["input_ids"].size(1)
            out.append(stats.rows(slice(start, start + n), w))
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

    # ---- evaluation: the data module's evaluators, split by split ---------------------------------------------
    @torch.no_grad()
    def teacher_forced(self, batch: dict, logits: bool = False) -> TokenStats:
        """Teacher-forced scores of an evaluation batch (the evaluators' :class:`~lit_unlearn.eval.Scorer` call)."""
        return self(batch, logits=logits)

    @torch.no_grad()
    def answer_nlls(self, prompts: list[str], groups: list[list[str]], chunk: int = 32) -> list[list[float]]:
        """L (mean answer NLL) of every answer in ``groups[i]`` to ``prompts[i]``: all pairs scored together in
        chunks of ``chunk`` rows of similar length (little padding)."""
        pairs = [(i, p, a) for i, (p, g) in enumerate(zip(prompts, groups)) for a in g]
        order = sorted(range(len(pairs)), key=lambda k: len(pairs[k][1]) + len(pairs[k][2]))
        values = [0.0] * len(pairs)
        for s in range(0, len(order), chunk):
            idx = order[s:s + chunk]
            batch = self.encode([pairs[k][1] for k in idx], [pairs[k][2] for k in idx])
            for k, v in zip(idx, self.teacher_forced(batch).mean_nll.double().tolist()):
                values[k] = v
        out, start = [], 0
        for g in groups:
            out.append(values[start:start + len(g)])
            start += len(g)
        return out

    @torch.no_grad()
    def next_token_logits(self, prompts: list[str], token_ids: list[int], chunk: int = 32) -> Tensor:
        """(N, len(token_ids)) float32 logits of the token that follows each prompt, at ``token_ids`` only (the
        letters of a multiple-choice question). Prompts are tokenized as the data modules tokenize them, batched by
        length with right padding, and read at each row's last real position; with the lean head only those
        positions and those vocabulary rows go through the head. Dropout is off."""
        enc = [self.tokenizer(p, add_special_tokens=True)["input_ids"][-self.max_length:] for p in prompts]
        order = sorted(range(len(enc)), key=lambda i: len(enc[i]))
        out = torch.zeros(len(enc), len(token_ids), dtype=torch.float32)
        ids = torch.tensor(token_ids, device=self.device)
        with eval_mode(self.lm):
            for s in range(0, len(order), chunk):
                idx = order[s:s + chunk]
                rows = [{"input_ids": enc[i], "labels": enc[i]} for i in idx]
                batch = collate(rows, self.tokenizer.pad_token_id)
                batch = {k: batch[k].to(self.device) for k in ("input_ids", "attention_mask")}
                inputs = self.model_inputs(batch)
                head = self._lean_head(inputs, probe_one_row=len(inputs) == 3)
                if head is None:
                    states = self.lm(**inputs).logits
                else:
                    with capture_head_input(head) as seen:
                        self.lm(**inputs)
                    states = seen[-1]
                # each row's last real token; soft prompts prepend virtual positions, so count from the end
                last = batch["attention_mask"].sum(-1) - 1 + states.size(1) - batch["input_ids"].size(1)
                at = states[torch.arange(len(idx), device=self.device), last]
                z = at[:, ids] if head is None else F.linear(at.to(head.weight.dtype), head.weight[ids],
                                                             None if head.bias is None else head.bias[ids])
                out[idx] = z.float().cpu()
        return out

    def generate(self, prompts: list[str], max_new_tokens: int, batch_size: int = 16) -> list[str]:
        """Greedy continuations of ``prompts`` by the current model (adapter on), batched with left padding."""
        return greedy_generate(self.lm, self.tokenizer, prompts, max_new_tokens, batch_size)

    def evaluation_suite(self) -> EvalSuite:
        """The evaluators of every split of the attached data module (built once, reused by every evaluation)."""
        if self.suite is None:
            dm = getattr(self.trainer, "datamodule", None)
            if dm is None or not hasattr(dm, "evaluators_for"):
                raise MethodError("evaluation needs a lit_unlearn data module (--data), which names each split's "
                                  "evaluators")
            plan = {split: dm.evaluators_for(split) for split in dm.split_names}
            if not any(plan.values()):
                raise MethodError("no split of the data module has an evaluator, so the run would report no metric: "
                                  "name some in --data.init_args.evaluators")
            plan = {split: evs + [EVALUATORS[n]() for n in self.extra_evaluators] if evs else evs
                    for split, evs in plan.items()}
            self.suite = EvalSuite(plan,
                                   aggregates=dm.aggregates(), tradeoff=dm.tradeoff_splits)
        return self.suite

    def on_validation_epoch_start(self) -> None:
        self.evaluation_suite()

    def validation_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        self.evaluation_suite().update(self, batch)

    def on_validation_epoch_end(self) -> None:
        suite = self.evaluation_suite()
        results = suite.compute()  # every rank's rows: already reduced across ranks
        flat = {f"val/{s}/{k}": v for s, d in results.items() for k, v in d.items()}
        gap = suite.tradeoff(results)
        if gap is not None:
            flat["val/gap"] = gap  # retain minus forget on the first shared evaluator's primary key; higher = better
        if flat:
            self.log_dict(flat, sync_dist=False)
        self.last_eval = results
        # which weights it describes: (the trainer function it ran in, the optimizer step)
        self.last_eval_at = (self.trainer.state.fn, self.trainer.global_step)
        if self.trainer.state.fn == "fit" and not self.trainer.sanity_checking:
            self.eval_history.append({"epoch": self.trainer.current_epoch + 1, "step": self.trainer.global_step,
                                      **flat})

    test_step = validation_step
    on_test_epoch_start = on_validation_epoch_start
    on_test_epoch_end = on_validation_epoch_end

    # ---- optimisation and checkpoints -----------------------------------------------------------------------
    def trainable(self) -> list[tuple[str, nn.Parameter]]:
        """``(state-dict name, parameter)`` of what this run trains: the adapter's parameters, found through the
        adapter (``Adapter.trainable_parameters``), or every parameter without one."""
        if self.adapter is None or self.lm is None:
            return [(n, p) for n, p in self.named_parameters() if p.requires_grad]
        return [(f"lm.{n}", p) for n, p in self.adapter.trainable_parameters(self.lm)]

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
            from lit_unlearn.methods.assembly import assemble

            return assemble(self.model_name, None, self.init_adapter, self.dtype_name, None, self.attn_backend,
                            self.trust_remote_code)[0].to(self.device)

        self.lm, self.adapter = export_merged(self.lm, self.adapter, self.tokenizer, path, reload_base), None
        self._head = None


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


def fuse_batches(batches: list[dict], pad_id: int) -> dict:
    """One batch of the rows of ``batches`` (forget and retain rows in one forward), right-padded to the widest:
    ``input_ids`` with ``pad_id``, ``labels`` with -100, and every other tensor whose second dimension is the
    sequence (a token mask, intervention positions per token) with 0; per-row tensors (weights) and lists (ids,
    prompts) are concatenated, so every key of the batches reaches the adapter's call arguments."""
    width = max(b["input_ids"].size(1) for b in batches)
    fused: dict = {}
    for key in batches[0]:
        values = [b.get(key) for b in batches]
        if any(v is None for v in values):
            continue
        if all(isinstance(v, Tensor) for v in values):
            seq = all(v.dim() >= 2 and v.size(1) == b["input_ids"].size(1) for v, b in zip(values, batches))
            if seq:
                fill = pad_id if key == "input_ids" else IGNORE if key == "labels" else 0
                values = [F.pad(v, (0, 0) * (v.dim() - 2) + (0, width - v.size(1)), value=fill) for v in values]
            fused[key] = torch.cat(values)
        elif all(isinstance(v, list) for v in values):
            fused[key] = [x for v in values for x in v]
        else:
            fused[key] = values[0]
    return fused
