"""RMU, Representation Misdirection for Unlearning (Li et al. 2024, "The WMDP Benchmark", arXiv 2403.03218).

With h^(l)(x) the output of decoder layer ``layer`` (0-based) at each token of x, and a fixed random control vector
c = steering * u / ||u||, u ~ U[0, 1)^d (drawn once from ``seed``):

    L = MSE(h_theta^(l)(x_f), c)  +  alpha * MSE(h_theta^(l)(x_r), h_frozen^(l)(x_r))

the forget activations are pushed toward c and the retain activations held at the frozen model's. Only the
parameters of ``param_module`` (default ``mlp.down_proj``) in ``train_layers`` (default l-2, l-1, l) are trained:

- without an adapter (``adapter: null``): those weights themselves, every other parameter frozen (the paper's
  setting). The frozen activations come from the same model with the original values of those few weights swapped
  in for the no-grad forward (a copy of the trained tensors only, never of the model);
- with ``LoRA``: an adapter on those modules only (a ``target_modules`` left at ``all-linear`` is narrowed to them;
  an explicit list is kept and must name modules of those layers); the frozen activations are the adapter disabled.

Choices, documented as docs/methods.md asks:

- MSE is the mean of the squared differences over the d hidden units and the answer tokens of the batch
  (``labels != -100``: the whole text of a corpus row, the answer of a question-answer row), i.e. (1/d) times the
  mean squared L2 norm per token (docs/methods.md's reading of "mean ||h - c||^2"). The original's ``F.mse_loss``
  also averages over padding positions; here padding is excluded, so batches of unequal lengths differ slightly.
- ``retain: none`` drops the retain term; ``retain: nll`` (the default) keeps it and ``kl`` is refused: RMU's
  retain term is the activation match above, weighted by ``alpha`` (``retain_weight`` is not used);
  ``forget_weight`` scales the forget term.
- The forward stops after layer l: the later layers and the LM head do not change h^(l) and are not run.

Defaults are the paper's Zephyr-7B recipe (layer 7, steering 6.5, alpha 1200); for Llama-3.1-8B the paper uses
layer 15 (train 13-15), steering 30, alpha 350. The original optimizer is Lion (``--model.optimizer``).
"""

from __future__ import annotations

import re
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from lit_unlearn.adapters.lora import LoRA
from lit_unlearn.core.errors import MethodError
from lit_unlearn.core.tokens import IGNORE
from lit_unlearn.methods.base import UnlearningMethod


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


def control_vector(hidden: int, steering: float, seed: int) -> Tensor:
    """RMU's fixed control vector c = steering * u / ||u||, u ~ U[0, 1)^hidden drawn from ``seed``."""
    u = torch.rand(hidden, generator=torch.Generator().manual_seed(seed))
    return steering * u / u.norm()


def masked_mse(h: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """Mean squared difference over the hidden units and the positions where ``mask`` is true (``target``
    broadcasts): (1/d) mean_t ||h_t - target_t||^2."""
    sq = (h.float() - target.float()).pow(2).mean(-1)
    return (sq * mask).sum() / mask.sum().clamp(min=1)


class RMU(UnlearningMethod):
    """RMU (module docstring): steer forget activations at one layer to a random vector, keep retain activations."""

    default_retain = "nll"  # "a retain term": RMU's is the activation match; only none turns it off
    adapter_types = ("LoRA",)  # it updates chosen modules' weights: the modules themselves, or a LoRA on them

    def __init__(self, *args, layer: int = 7, steering: float = 6.5, alpha: float = 1200.0,
                 train_layers: list[int] | None = None, param_module: str = "mlp.down_proj", **kwargs):
        """
        Args:
            layer: the decoder layer (0-based) whose output is steered.
            steering: the norm of the control vector c.
            alpha: weight of the retain activation-matching term.
            train_layers: the layers whose ``param_module`` is trained; null: layer-2, layer-1, layer (those >= 0).
            param_module: the module trained in each of ``train_layers`` (its path inside a decoder layer).
        """
        super().__init__(*args, **kwargs)
        if self.retain == "kl":
            raise MethodError("RMU's retain term is activation matching: --model.retain must be nll (on) or none")
        if steering <= 0 or alpha < 0:
            raise MethodError(f"RMU needs --model.steering > 0 and --model.alpha >= 0 (got {steering}, {alpha})")
        if layer < 0:
            raise MethodError(f"--model.layer must be >= 0, got {layer}")
        train_layers = list(train_layers) if train_layers is not None else [i for i in (layer - 2, layer - 1, layer)
                                                                            if i >= 0]
        late = [i for i in train_layers if i > layer or i < 0]
        if late or not train_layers:
            raise MethodError(f"--model.train_layers {train_layers} must be layers 0..{layer} (--model.layer): a layer "
                              "after it cannot change its output")
        self.layer, self.steering, self.alpha = layer, steering, alpha
        self.train_layers, self.param_module = sorted(set(train_layers)), param_module
        if isinstance(self.adapter, LoRA) and self.adapter.target_modules == "all-linear":
            pattern = "|".join(str(i) for i in self.train_layers)
            self.adapter.target_modules = rf".*\.({pattern})\.{re.escape(param_module)}"
        self.control: Tensor | None = None
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
        self.control = control_vector(self.lm.config.hidden_size, self.steering, self.seed).to(self.device)

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

    # ---- the step ---------------------------------------------------------------------------------------------
    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        forget = batch.get("forget")
        retain = batch.get("retain") if self.retain != "none" else None
        if forget is None and retain is None:
            raise MethodError("a training batch held neither forget nor retain rows")
        if retain is not None:
            # first: the weight swap of frozen() must not touch tensors a graph of this step already saved
            with torch.no_grad(), self.frozen():
                h0 = self.layer_output(retain)
        loss = None
        if forget is not None:
            f_loss = masked_mse(self.layer_output(forget), self.control.to(self.device), forget["labels"] != IGNORE)
            self.log("train/forget_loss", f_loss, batch_size=forget["input_ids"].size(0))
            loss = self.forget_weight * f_loss
        if retain is not None:
            r_loss = masked_mse(self.layer_output(retain), h0, retain["labels"] != IGNORE)
            self.log("train/retain_loss", r_loss, batch_size=retain["input_ids"].size(0))
            loss = self.alpha * r_loss if loss is None else loss + self.alpha * r_loss
        self.log("train/loss", loss, prog_bar=True)
        return loss
