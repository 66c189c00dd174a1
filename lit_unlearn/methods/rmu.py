"""RMU, Representation Misdirection for Unlearning (Li et al. 2024, "The WMDP Benchmark", arXiv 2403.03218), with the
scale-free steering coefficient of Adaptive RMU (Dang et al. 2024, arXiv 2408.06223).

With h^(l)(x) the output of decoder layer ``layer`` (0-based) at each token of x, and a fixed random direction
e = u / ||u||, u ~ U[0, 1)^d (drawn once from ``seed``), the control vector is c = s * e and

    L = MSE(h_theta^(l)(x_f), c)  +  alpha * MSE(h_theta^(l)(x_r), h_frozen^(l)(x_r))

the forget activations are pushed toward c and the retain activations held at the frozen model's. The norm s of c
(``steering_scale``):

- ``corpus`` (default): s = ``steering`` x the median per-token norm ||h_frozen^(l)|| over the forget set, measured
  once when training starts (:meth:`RMU.on_train_start`), so one coefficient means the same on any model;
- ``sample`` (Adaptive RMU): per forget row i, s_i = ``steering`` x the mean per-token norm of that row under the
  frozen model (computed once per row, kept with the checkpoint);
- ``absolute`` (the WMDP paper's form): s = ``steering``, as a number. The paper's 6.5 (Zephyr-7B, layer 7) and 30
  (Llama-3.1-8B, layer 15) are tied to those models' activation norms: SmolLM2-135M's layer-7 activations have a
  norm of about 340, so 6.5 only shrinks them and unlearns nothing (docs/results/relearning.md).

Tokens (``positions``): ``text`` (default) steers every real token of a row - prompt and answer - but the first, the
attention sink whose norm is far above the rest (METHODS.md section 5: steering only the answer of a question-answer
row leaves the position that predicts its first token untouched); ``answer`` steers the scored tokens only
(``labels != -100``; on a corpus row, its whole text), the first token excluded too. The retain term and the measured
norm use the same tokens. MSE is the mean of the squared differences over the d hidden units and those tokens of the
batch, i.e. (1/d) times the mean squared L2 norm per token (docs/methods.md's reading of "mean ||h - c||^2"); the
original's ``F.mse_loss`` also averages over padding, so batches of unequal lengths differ slightly.

Only the parameters of ``param_module`` (default ``mlp.down_proj``) in ``train_layers`` (default l-2, l-1, l) are
trained:

- without an adapter (``adapter: null``): those weights themselves, every other parameter frozen (the paper's
  setting). The frozen activations come from the same model with the original values of those few weights swapped
  in for the no-grad forward (a copy of the trained tensors only, never of the model);
- with ``LoRA``: an adapter on those modules only (a ``target_modules`` left at ``all-linear`` is narrowed to them;
  an explicit list is kept and must name modules of those layers); the frozen activations are the adapter disabled.

What a run measured goes to metrics.json under ``measured``: ``rmu_activation_norm`` (the median token norm),
``rmu_control_norm`` (s; for ``sample`` the median s_i), and ``rmu_forget_mse_start`` / ``rmu_forget_mse_end``,
the forget term over the whole forget set before and after training. A run whose forget MSE barely moved has steered
nothing (METHODS.md): it says so when training ends.

Other choices: ``retain: none`` drops the retain term; ``retain: nll`` (the default) keeps it and ``kl`` is refused:
RMU's retain term is the activation match above, weighted by ``alpha`` (``retain_weight`` is not used);
``forget_weight`` scales the forget term. The forward stops after layer l: the later layers and the LM head do not
change h^(l) and are not run. The optimizer is the base's AdamW, as in the original RMU (``--model.optimizer`` takes
Lion, the Deeb & Roger recipe). Defaults: layer 7 and alpha 1200 are the paper's Zephyr-7B recipe; ``steering`` 4 with
``corpus`` scale is this project's choice on SmolLM2 (docs/results/relearning.md, the RMU grid), not a number of
the paper.
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from typing import Literal

import torch
from torch import Tensor, nn

from lit_unlearn.adapters.lora import LoRA
from lit_unlearn.core.errors import MethodError
from lit_unlearn.core.tokens import IGNORE, dataset_batches
from lit_unlearn.methods.base import UnlearningMethod
from lit_unlearn.models.modes import eval_mode

Scale = Literal["absolute", "corpus", "sample"]
Positions = Literal["text", "answer"]
SCALES = ("absolute", "corpus", "sample")
#: a forget MSE that fell by less than this share during training steered nothing (the run says so)
STILL = 0.1


class _Stop(Exception):
    """Raised by the layer hook once h^(l) is recorded: the rest of the forward is not needed."""


def decoder_layers(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """``(name, layers)``: the model's stack of decoder layers (the ``nn.ModuleList`` as long as the config's
    ``num_hidden_layers``, e.g. ``model.layers``), wherever an adapter wrapper put it."""
    config = getattr(model, "config", None)
    depth = getattr(config, "num_hidden_layers", None)
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == depth:
            return name, module
    raise MethodError(f"RMU: found no list of {depth} decoder layers in {type(model).__name__}")


def hidden_at(model: nn.Module, inputs: dict, capture: nn.Module, stop: nn.Module | None = None) -> Tensor:
    """(B, T, d) output of the decoder layer ``capture`` (after every forward hook already on it, e.g. a ReFT edit)
    for the call ``model(**inputs)``; the forward stops after ``stop`` (default: ``capture``)."""
    seen: list[Tensor] = []

    def record(module, args, output):
        seen.append(output[0] if isinstance(output, tuple) else output)

    def halt(module, args, output):
        raise _Stop

    handles = [capture.register_forward_hook(record), (stop or capture).register_forward_hook(halt)]
    try:
        model(**inputs)
    except _Stop:
        pass
    finally:
        for handle in handles:
            handle.remove()
    h = seen[0]
    return h[:, h.size(1) - inputs["input_ids"].size(1):]  # soft prompts prepend virtual positions


def control_direction(hidden: int, seed: int) -> Tensor:
    """RMU's fixed direction u / ||u||, u ~ U[0, 1)^hidden drawn from ``seed`` (the control vector is s times it)."""
    u = torch.rand(hidden, generator=torch.Generator().manual_seed(seed))
    return u / u.norm()


def control_vector(hidden: int, steering: float, seed: int) -> Tensor:
    """The absolute-form control vector c = steering * u / ||u||."""
    return steering * control_direction(hidden, seed)


def steered_tokens(batch: dict, positions: Positions = "text") -> Tensor:
    """(B, T) bool: the tokens an RMU-style loss steers and measures - every real token of a row (``text``) or its
    scored ones (``answer``), never the row's first real token (the attention sink)."""
    real = batch["attention_mask"].bool()
    mask = real if positions == "text" else real & (batch["labels"] != IGNORE)
    first = real & (real.long().cumsum(-1) == 1)
    return mask & ~first


def masked_mse(h: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """Mean squared difference over the hidden units and the positions where ``mask`` is true (``target``
    broadcasts): (1/d) mean_t ||h_t - target_t||^2."""
    sq = (h.float() - target.float()).pow(2).mean(-1)
    return (sq * mask).sum() / mask.sum().clamp(min=1)


def check_steering(steering: float, scale: str) -> None:
    """One line naming the flag for a coefficient or scale no run can use."""
    if scale not in SCALES:
        raise MethodError(f"--model.steering_scale must be one of {', '.join(SCALES)}, got {scale!r}")
    if not steering > 0:
        raise MethodError(f"--model.steering must be > 0, got {steering}")


class RMU(UnlearningMethod):
    """RMU (module docstring): steer forget activations at one layer to a random vector, keep retain activations."""

    default_retain = "nll"  # "a retain term": RMU's is the activation match; only none turns it off
    adapter_types = ("LoRA",)  # it updates chosen modules' weights: the modules themselves, or a LoRA on them

    def __init__(self, *args, layer: int = 7, steering: float = 4.0, steering_scale: Scale = "corpus",
                 alpha: float = 1200.0, positions: Positions = "text", train_layers: list[int] | None = None,
                 param_module: str = "mlp.down_proj", **kwargs):
        """
        Args:
            layer: the decoder layer (0-based) whose output is steered.
            steering: the control vector's norm: a multiple of the measured activation norm (``corpus``,
                ``sample``) or the norm itself (``absolute``; the paper's 6.5 for Zephyr-7B).
            steering_scale: corpus (x the median token norm of the forget set), sample (x each forget row's own
                mean token norm: Adaptive RMU) or absolute.
            alpha: weight of the retain activation-matching term.
            positions: the steered tokens: text (every real token but the first) or answer (the scored ones).
            train_layers: the layers whose ``param_module`` is trained; null: layer-2, layer-1, layer (those >= 0).
            param_module: the module trained in each of ``train_layers`` (its path inside a decoder layer).
        """
        super().__init__(*args, **kwargs)
        if self.retain == "kl":
            raise MethodError("RMU's retain term is activation matching: --model.retain must be nll (on) or none")
        check_steering(steering, steering_scale)
        if alpha < 0:
            raise MethodError(f"--model.alpha must be >= 0, got {alpha}")
        if positions not in ("text", "answer"):
            raise MethodError(f"--model.positions must be text or answer, got {positions!r}")
        if layer < 0:
            raise MethodError(f"--model.layer must be >= 0, got {layer}")
        train_layers = list(train_layers) if train_layers is not None else [i for i in (layer - 2, layer - 1, layer)
                                                                            if i >= 0]
        late = [i for i in train_layers if i > layer or i < 0]
        if late or not train_layers:
            raise MethodError(f"--model.train_layers {train_layers} must be layers 0..{layer} (--model.layer): a layer "
                              "after it cannot change its output")
        self.layer, self.steering, self.steering_scale, self.alpha = layer, steering, steering_scale, alpha
        self.positions = positions
        self.train_layers, self.param_module = sorted(set(train_layers)), param_module
        if isinstance(self.adapter, LoRA) and self.adapter.target_modules == "all-linear":
            pattern = "|".join(str(i) for i in self.train_layers)
            self.adapter.target_modules = rf".*\.({pattern})\.{re.escape(param_module)}"
        self.direction: Tensor | None = None
        self._frozen: dict[str, Tensor] = {}

    # ---- model ----------------------------------------------------------------------------------------------
    def check_base(self, base: nn.Module) -> None:
        """The steered layer within the model's depth, ``param_module`` present in every trained layer."""
        prefix, layers = decoder_layers(base)
        if self.layer >= len(layers):
            raise MethodError(f"--model.layer {self.layer} is past the model's depth ({len(layers)} layers, "
                              f"0-{len(layers) - 1})")
        modules = dict(base.named_modules())
        for i in self.train_layers:
            if f"{prefix}.{i}.{self.param_module}" not in modules:
                raise MethodError(f"--model.param_module {self.param_module!r} matches no module of layer {i} "
                                  f"({prefix}.{i}.{self.param_module} does not exist)")

    def configure_model(self) -> None:
        if self.lm is not None:
            return
        super().configure_model()
        prefix, layers = decoder_layers(self.lm)
        selected = [f"{prefix}.{i}.{self.param_module}" for i in self.train_layers]
        modules = dict(self.lm.named_modules())
        if self.adapter is None:
            self.lm.requires_grad_(False)
            for name in selected:
                for pname, p in modules[name].named_parameters(prefix=name):
                    p.requires_grad_(True)
                    self._frozen[pname] = p.detach().clone()
        else:
            outside = [n for n, p in self.lm.named_parameters()
                       if p.requires_grad and not any(n.startswith(s + ".") for s in selected)]
            if outside:
                raise MethodError(f"RMU trains only {self.param_module} of layers {self.train_layers}, but the "
                                  f"adapter also trains {outside[0]}: leave the adapter's target_modules at "
                                  "all-linear or name only those modules")
        self._layer_module = layers[self.layer]
        self.direction = control_direction(self.lm.config.hidden_size, self.seed).to(self.device)

    @contextmanager
    def frozen(self):
        """The model before unlearning: the adapter disabled, or the trained tensors' original values swapped in."""
        if self.adapter is not None:
            with self.adapter.disabled(self.lm):
                yield
            return
        params = dict(self.lm.named_parameters())
        current = {n: params[n].detach().clone() for n in self._frozen}
        try:
            with torch.no_grad():
                for n, v in self._frozen.items():
                    params[n].copy_(v)
            yield
        finally:
            with torch.no_grad():
                for n, v in current.items():
                    params[n].copy_(v)

    def layer_output(self, batch: dict) -> Tensor:
        """(B, T, d) output of decoder layer ``layer``; the forward stops there."""
        return hidden_at(self.lm, self.model_inputs(batch), self._layer_module)

    # ---- the control vector -----------------------------------------------------------------------------------
    @property
    def control(self) -> Tensor | None:
        """The resolved control vector c (d,) of the ``absolute`` and ``corpus`` scales (None before it is known)."""
        if self.direction is None:
            return None
        if self.steering_scale == "absolute":
            return self.steering * self.direction
        norm = self.measured.get("rmu_activation_norm")
        return None if norm is None or self.steering_scale == "sample" else self.steering * norm * self.direction

    @torch.no_grad()
    def row_norms(self, batch: dict) -> Tensor:
        """(B,) mean per-token norm of each row's steered tokens under the frozen model (no gradient, dropout off)."""
        with self.frozen(), eval_mode(self.lm):
            h = self.layer_output(batch).float()
        mask = steered_tokens(batch, self.positions)
        return (h.norm(dim=-1) * mask).sum(-1) / mask.sum(-1).clamp(min=1)

    def targets(self, forget: dict) -> Tensor:
        """The forget rows' control vectors: (d,) for one c, (B, 1, d) per row for ``sample``."""
        if self.steering_scale == "sample":
            norms = self.reference_cache.lookup(forget, self.row_norms)
            return self.steering * norms.float()[:, None, None] * self.direction.to(self.device)
        if self.control is None:  # outside a trainer (no forget set to measure): the first batch's own norm
            self.measure_scale([forget])
        return self.control.to(self.device)

    @torch.no_grad()
    def measure_scale(self, batches) -> None:
        """``rmu_activation_norm``: the median per-token norm of h_frozen^(l) over the steered tokens of
        ``batches``; ``rmu_control_norm``: the resolved ||c|| (median over rows for ``sample``)."""
        norms, rows = [], []
        for batch in batches:
            with self.frozen(), eval_mode(self.lm):
                h = self.layer_output(batch).float()
            mask = steered_tokens(batch, self.positions)
            norms.append(h.norm(dim=-1)[mask].cpu())
            rows.append(((h.norm(dim=-1) * mask).sum(-1) / mask.sum(-1).clamp(min=1)).cpu())
        median = float(torch.cat(norms).median())
        self.measured["rmu_activation_norm"] = median
        self.measured["rmu_steering_scale"] = self.steering_scale
        self.measured["rmu_control_norm"] = (
            self.steering if self.steering_scale == "absolute" else
            self.steering * (float(torch.cat(rows).median()) if self.steering_scale == "sample" else median))

    @torch.no_grad()
    def forget_mse(self, batches) -> float:
        """The forget term over ``batches`` (all their steered tokens pooled), with the current weights."""
        total, count = 0.0, 0
        with eval_mode(self.lm):
            for batch in batches:
                h = self.layer_output(batch)
                mask = steered_tokens(batch, self.positions)
                total += float(masked_mse(h, self.targets(batch), mask)) * int(mask.sum())
                count += int(mask.sum())
        return total / max(count, 1)

    def _forget_batches(self):
        ds = self.trainer.datamodule.datasets["forget"]
        return dataset_batches(ds, self.tokenizer.pad_token_id, "forget", 16, self.device)

    def on_train_start(self) -> None:
        """Measure the activation scale and the forget MSE over the forget set, once (a resumed run keeps them)."""
        super().on_train_start()
        dm = getattr(self.trainer, "datamodule", None)
        if dm is None or "forget" not in getattr(dm, "datasets", {}):
            return
        if "rmu_activation_norm" not in self.measured:
            self.measure_scale(self._forget_batches())
        if "rmu_forget_mse_start" not in self.measured:
            self.measured["rmu_forget_mse_start"] = self.forget_mse(self._forget_batches())

    def on_train_end(self) -> None:
        dm = getattr(self.trainer, "datamodule", None)
        if dm is None or "rmu_forget_mse_start" not in self.measured:
            return
        start = self.measured["rmu_forget_mse_start"]
        end = self.measured["rmu_forget_mse_end"] = self.forget_mse(self._forget_batches())
        if self.trainer.is_global_zero:
            fell = (start - end) / start if start > 0 else 0.0
            print(f"[lit_unlearn] RMU: forget MSE {start:.4g} -> {end:.4g} ({100 * fell:.1f}% lower; control norm "
                  f"{self.measured['rmu_control_norm']:.4g}, activation norm {self.measured['rmu_activation_norm']:.4g})")
            if fell < STILL:
                print("[lit_unlearn] RMU: the forget MSE barely moved, so nothing was steered: raise --model.lr or "
                      "the steps before reading any metric")

    # ---- the step ---------------------------------------------------------------------------------------------
    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        forget = batch.get("forget")
        retain = batch.get("retain") if self.retain != "none" else None
        if forget is None and retain is None:
            raise MethodError("a training batch held neither forget nor retain rows")
        # first: the weight swap of frozen() must not touch tensors a graph of this step already saved
        target = self.targets(forget) if forget is not None else None
        if retain is not None:
            with torch.no_grad(), self.frozen():
                h0 = self.layer_output(retain)
        loss = None
        if forget is not None:
            f_loss = masked_mse(self.layer_output(forget), target, steered_tokens(forget, self.positions))
            self.log("train/forget_loss", f_loss, batch_size=forget["input_ids"].size(0))
            loss = self.forget_weight * f_loss
        if retain is not None:
            r_loss = masked_mse(self.layer_output(retain), h0, steered_tokens(retain, self.positions))
            self.log("train/retain_loss", r_loss, batch_size=retain["input_ids"].size(0))
            loss = self.alpha * r_loss if loss is None else loss + self.alpha * r_loss
        self.log("train/loss", loss, prog_bar=True)
        return loss
