"""A model to evaluate, as a LightningModule: ``eval.py`` with no unlearning method.

:class:`ScoredModel` loads a base (an embedded alias, a hub id, a local directory such as a run's ``merged/``
export, or a .gguf file), folds saved adapters into it (``init_adapter``: a run's ``adapter/``), and evaluates every
split of the data module with the evaluators that split names, through its :class:`~lit_unlearn.models.scorer.Scorer`.
Every unlearning method (:class:`~lit_unlearn.methods.base.UnlearningMethod`) is a ScoredModel that also trains::

    python eval.py --model ScoredModel --model.model checkpoints/tofu/npo/merged --config configs/tofu/base.yaml
    python eval.py --model ScoredModel --model.init_adapter checkpoints/tofu/npo/adapter --config configs/tofu/base.yaml

Each evaluation's results (``{split: {key: value}}``) are kept in :attr:`ScoredModel.last_eval`; inside a fit, each
is appended to :attr:`ScoredModel.eval_history` too.
"""

from __future__ import annotations

import sys
from typing import ClassVar

import lightning as L
import torch
from torch import Tensor, nn

from lit_unlearn.core.errors import MethodError
from lit_unlearn.core.scoring import TokenStats
from lit_unlearn.eval import EVALUATORS, EvalSuite
from lit_unlearn.models.assembly import assemble
from lit_unlearn.models.loading import DEFAULT_MODEL, AttnBackend, Quantize
from lit_unlearn.models.scorer import Scorer


class ScoredModel(L.LightningModule):
    """A causal LM evaluated split by split (module docstring); the base of every unlearning method."""

    #: evaluators (names) added to every evaluated split, after the data module's (GRUN: ``gate``)
    extra_evaluators: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        init_adapter: str | list[str] | None = None,
        dtype: str = "float32",
        quantize: Quantize = None,
        attn_backend: AttnBackend = "auto",
        trust_remote_code: bool = False,
        max_length: int = 256,
        lean_head: bool = True,
    ):
        """
        Args:
            model: base model: an embedded alias, a hub id, a local directory (e.g. a run's ``merged/``) or a .gguf
                file.
            init_adapter: a saved adapter directory (e.g. a run's ``adapter/``) merged into the base (a LoRA merged,
                a prefix or soft prompt stacked frozen); a list is merged in order (a learn stage's adapter, then an
                unlearning run's: the unlearned model).
            dtype: parameter dtype of the base (float32, bfloat16, float16).
            quantize: ``nf4`` or ``int8`` base through bitsandbytes, or null.
            attn_backend: auto (flash-attn if installed, else SDPA), sdpa, flash_attention_2 or eager.
            trust_remote_code: allow model code from the hub repository (off unless asked).
            max_length: longest sequence in tokens (linked from ``data.max_length`` by the CLI).
            lean_head: score answer tokens from the LM head's input, answer positions only and in chunks, instead
                of materialising all (B, T, V) logits (same numbers, far less memory); falls back to logits by
                itself where the model's logits are not its plain frozen head's output.
        """
        super().__init__()
        if max_length < 2:
            raise MethodError(f"--model.max_length must be >= 2, got {max_length}")
        if type(self) is ScoredModel:
            self.save_hyperparameters()
        self.model_name, self.init_adapter = model, init_adapter
        self.dtype_name, self.quantize, self.attn_backend = dtype, quantize, attn_backend
        self.trust_remote_code, self.max_length, self.lean_head = trust_remote_code, max_length, lean_head
        self.adapter = None  # a method sets its trainable adapter after this
        self.lm = None
        self.tokenizer = None
        self.suite: EvalSuite | None = None
        self.last_eval: dict[str, dict[str, float]] = {}
        #: every evaluation run inside fit: ``{"epoch", "step", "val/<split>/<key>": value, ...}`` (metrics.json)
        self.eval_history: list[dict] = []
        self.last_eval_at: tuple | None = None
        self.run_id: str | None = None  # set by the CLI; saved in checkpoints, so a resumed run keeps its id
        self._scorer: tuple[Scorer] | None = None
        # a checkpoint holds trainable tensors only; the base is reloaded from `model`
        self.strict_loading = False

    # ---- the model and its scorer ---------------------------------------------------------------------------
    def configure_model(self) -> None:
        """Load the base (and tokenizer), merge ``init_adapter``, apply the adapter. Idempotent."""
        if self.lm is None:
            self.lm, self.tokenizer = assemble(self.model_name, self.adapter, self.init_adapter, self.dtype_name,
                                               self.quantize, self.attn_backend, self.trust_remote_code,
                                               self.check_base)
            if type(self) is ScoredModel:
                self.lm.requires_grad_(False)  # nothing trains: a frozen head qualifies for the lean head

    def check_base(self, base: nn.Module) -> None:
        """Called with the loaded base before the adapter is applied: raise a :class:`MethodError` naming the flag
        if the model cannot be used (e.g. a layer index past its depth). Default: nothing to check."""

    @property
    def scorer(self) -> Scorer:
        """The :class:`Scorer` of the current model and adapter (rebuilt when either changes, e.g. after a merge)."""
        held = self._scorer[0] if self._scorer is not None else None
        if held is None or held.lm is not self.lm or held.adapter is not self.adapter:
            held = Scorer(self.lm, self.tokenizer, self.adapter, self.max_length, self.lean_head)
            self._scorer = (held,)
        return held

    def forward(self, batch: dict, logits: bool = False, moments: bool = False) -> TokenStats:
        """Per-token results of ``batch``; ``logits=True`` keeps the full (B, T, V) logits in them, ``moments``
        the vocabulary mean and spread of log p at answer positions (:meth:`Scorer.forward`)."""
        return self.scorer.forward(batch, logits=logits, moments=moments)

    def model_inputs(self, batch: dict) -> dict:
        return self.scorer.model_inputs(batch)

    def encode(self, prompts: list[str], answers: list[str]) -> dict:
        return self.scorer.encode(prompts, answers)

    # the evaluators' Scorer interface (lit_unlearn.eval.base.Scorer): a method may override teacher_forced
    @torch.no_grad()
    def teacher_forced(self, batch: dict, logits: bool = False, moments: bool = False) -> TokenStats:
        return self(batch, logits=logits, moments=moments)

    def answer_nlls(self, prompts: list[str], groups: list[list[str]], chunk: int = 32) -> list[list[float]]:
        return self.scorer.answer_nlls(prompts, groups, chunk)

    def next_token_logits(self, prompts: list[str], token_ids: list[int], chunk: int = 32) -> Tensor:
        return self.scorer.next_token_logits(prompts, token_ids, chunk)

    def generate(self, prompts: list[str], max_new_tokens: int, batch_size: int = 16) -> list[str]:
        return self.scorer.generate(prompts, max_new_tokens, batch_size)

    # ---- evaluation: the data module's evaluators, split by split ---------------------------------------------
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
            self.suite = EvalSuite(plan, aggregates=dm.aggregates(), tradeoff=dm.tradeoff_splits)
        return self.suite

    def on_validation_epoch_start(self) -> None:
        self.evaluation_suite()

    def validation_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        self.evaluation_suite().update(self, batch)
        self.report_progress(batch.get("split"), batch_idx, dataloader_idx)

    def report_progress(self, split: str | None, batch_idx: int, dataloader_idx: int) -> None:
        """Without a progress bar (logs, CI), a split of 4 batches or more gets a stderr line at about every quarter
        of its batches and at its end: batches done, seconds so far and the estimated seconds left (what the bar
        shows per split). Progress, not a message: it does not carry the ``lit_unlearn:`` prefix of errors."""
        trainer = self.trainer
        if trainer.progress_bar_callback is not None or trainer.global_rank != 0 or trainer.sanity_checking:
            return
        totals = trainer.num_val_batches if trainer.state.fn != "test" else trainer.num_test_batches
        total = int(totals[dataloader_idx]) if dataloader_idx < len(totals) else 0
        done = batch_idx + 1
        if total < 4 or (done != total and done % -(-total // 4)):
            return
        seconds = self.evaluation_suite().seconds.get(split, 0.0)
        print(f"eval {split}: {done}/{total} batches, {seconds:.0f} s, ETA {seconds / done * (total - done):.0f} s",
              file=sys.stderr, flush=True)

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

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """A plain model has no trainable tensors to restore: a method's checkpoint would load nothing, silently."""
        if type(self) is ScoredModel and checkpoint.get("state_dict"):
            method = checkpoint.get("lit_unlearn", {}).get("method", "a method")
            raise MethodError(f"--ckpt_path: the checkpoint holds {method}'s trained tensors, which ScoredModel does "
                              "not restore; evaluate it with its run's config.yaml, or its adapter/ through "
                              "--model.init_adapter")
