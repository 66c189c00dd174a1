"""LoReFT interventions (Wu et al. 2024, arXiv 2404.03592), optionally gated as in GRUN (arXiv 2502.17823).

At each chosen decoder layer, on the block's output h (the residual stream) at the chosen positions:

    Phi(h) = h + g(h) * R^T (W h + b - R h)

R in R^{r x d} with orthonormal rows (``torch.nn.utils.parametrizations.orthogonal``), (W, b) a Linear(d, r);
g(h) = 1 without a gate, or sigma(gate(h)) with ``gated`` (a Linear(d, 1), or an MLP d -> hidden... -> 1 with
``gate_hidden``). The edit lies in the row space of R, so the component of h orthogonal to R's rows is kept; with a
gate at 0, or W = R and b = 0, Phi is the identity (tests/test_reft.py).

Positions (``position``), from the batch the method gives the model (its labels mark the prompt): ``last_prompt``
(the last token before the scored answer; GRUN's choice), ``prompt`` (every prompt token), ``all`` (every real
token) or ``fraction`` (one token per row: the real token at index floor(``fraction`` * n) - 1 of its n real tokens,
at least the first; GRUN's WMDP setting cuts each corpus text at 80%, so labels are not needed). ``eval_position``
(default: ``position``) is used instead whenever the model is in evaluation mode: GRUN trains its WMDP gate at 80% of
each corpus text and scores multiple choice with the intervention at the last prompt token (renjie3/GRUN
``grun_wdmp_eval_mcq.py:164-167``), ``position: fraction, eval_position: last_prompt``. Without labels
(generation) the whole real input is the prompt; decoding steps after the first are not intervened on (the cache
carries the intervened prompt). A spec that selects no token of a row (an empty prompt) is an error naming the flag.

Why not ``pyreft``: it pins ``transformers==4.45.1``, which does not install beside this stack (transformers 5).
Saved like the other module adapters (``adapter_config.json`` with ``"adapter_type": "LoReFT"``, the model's depth
and width, and ``adapter_model.safetensors``); stacked frozen when given as ``init_adapter``.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn
from torch.nn.utils.parametrizations import orthogonal

from lit_unlearn.adapters.virtual import TRAINABLE, ModuleAdapter, container_on, widths
from lit_unlearn.core.errors import AdapterError
from lit_unlearn.core.tokens import IGNORE

Position = Literal["last_prompt", "prompt", "all", "fraction"]


class Intervention(nn.Module):
    """One layer's Phi (module docstring)."""

    def __init__(self, hidden: int, rank: int, gated: bool, gate_hidden: list[int]):
        super().__init__()
        # R: (rank, hidden), orthonormal rows. The matrix-exponential map: PyTorch's default for a non-square matrix
        # (Householder) gave an all-zero R after one AdamW step (torch 2.13), which silently removes the edit
        self.rotate = orthogonal(nn.Linear(hidden, rank, bias=False), orthogonal_map="matrix_exp")
        self.source = nn.Linear(hidden, rank)  # W h + b
        self.gate = None
        if gated:
            dims = [hidden, *gate_hidden, 1]
            layers: list[nn.Module] = []
            for i in range(len(dims) - 1):
                layers += [nn.Linear(dims[i], dims[i + 1]), nn.ReLU()]
            self.gate = nn.Sequential(*layers[:-1])

    def forward(self, h: Tensor) -> tuple[Tensor, Tensor | None]:
        """(Phi(h), gate logit or None) for h (N, d)."""
        x = h.to(self.source.weight.dtype)
        edit = (self.source(x) - self.rotate(x)) @ self.rotate.weight  # R^T (W h + b - R h), (N, d)
        logit = None
        if self.gate is not None:
            logit = self.gate(x).squeeze(-1)
            edit = torch.sigmoid(logit)[:, None] * edit
        return (x + edit).to(h.dtype), logit


class InterventionParams(nn.Module):
    """The interventions of one adapter, at its layers; records the gate logits of each forward."""

    def __init__(self, layers: list[int], hidden: int, rank: int, position: str, gated: bool,
                 gate_hidden: list[int], fraction: float = 0.8, eval_position: str | None = None):
        super().__init__()
        self.position, self.fraction, self.eval_position = position, fraction, eval_position or position
        self.at = nn.ModuleDict({str(i): Intervention(hidden, rank, gated, gate_hidden) for i in layers})
        self.enabled = True
        self.transform: list[str] = []
        #: (row index (N,), gate logit (N,)) of every intervened position, per layer, of the latest forward
        self.gates: list[tuple[Tensor, Tensor]] = []


class Interventions(nn.Module):
    """The container on the decoder: positions per forward (pre-hook) and the edits (hooks on the layers)."""

    def __init__(self):
        super().__init__()
        self.providers = nn.ModuleDict()
        self._pending: tuple[torch.Size, Tensor] | None = None  # (input shape, prompt lengths) from the batch
        self._where: dict[str, Tensor] = {}

    @property
    def edited(self) -> dict[str, Tensor]:
        """Provider name -> (B, T) bool positions edited in the latest forward (empty on a decoding step)."""
        return self._where

    def install(self, decoder: nn.Module) -> None:
        decoder.register_forward_pre_hook(self.before, with_kwargs=True)
        for i, layer in enumerate(decoder.layers):
            layer.register_forward_hook(self.edit(i))

    def expect(self, input_ids: Tensor, labels: Tensor | None) -> None:
        """The prompt length of every row of the next forward of this shape (first scored label position)."""
        if labels is None:
            self._pending = None
            return
        scored = labels != IGNORE
        first = torch.where(scored.any(-1), scored.float().argmax(-1), torch.full_like(labels[:, 0], -1))
        self._pending = (input_ids.shape, first)

    def before(self, decoder: nn.Module, args: tuple, kwargs: dict):
        self._where = {}
        for provider in self.providers.values():
            provider.gates.clear()  # the records describe the latest forward only
        active = [p for p in self.providers.values() if p.enabled]
        if not active:
            return args, kwargs
        ids = kwargs.get("input_ids", args[0] if args else None)
        x = ids if ids is not None else kwargs["inputs_embeds"]
        batch, length = x.shape[0], x.shape[1]
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        if cache is not None and cache.get_seq_length() > 0:
            return args, kwargs  # a decoding step: the intervened prompt is in the cache
        mask = kwargs.get("attention_mask")
        real = torch.ones(batch, length, dtype=torch.bool, device=x.device) if mask is None or mask.dim() != 2 \
            else mask[:, -length:].bool()
        prompt_len = real.sum(-1)
        if self._pending is not None and self._pending[0][:2] == (batch, length):
            first = self._pending[1].to(x.device)
            prompt_len = torch.where(first >= 0, first, prompt_len)
            self._pending = None
        cols = torch.arange(length, device=x.device)[None]
        # real tokens are contiguous: right padding (training) or left padding (generation)
        start = (~real).long().argmin(-1)[:, None] if mask is not None else torch.zeros_like(prompt_len)[:, None]
        start = torch.where(real.any(-1, keepdim=True), start, torch.zeros_like(start))
        in_prompt = real & (cols < start + prompt_len[:, None])
        for name, provider in self.providers.items():
            if not provider.enabled:
                continue
            position = provider.position if decoder.training else provider.eval_position
            if position == "all":
                where = real
            elif position == "prompt":
                where = in_prompt
            elif position == "fraction":
                n = real.sum(-1)
                at = start.squeeze(-1) + (n.float() * provider.fraction).floor().long().clamp(min=1) - 1
                where = (cols == at[:, None]) & real
            else:  # last_prompt
                last = start.squeeze(-1) + prompt_len - 1
                where = (cols == last[:, None]) & in_prompt
            empty = (~where.any(-1)) & real.any(-1)
            if bool(empty.any()):
                row = int(empty.nonzero()[0])
                raise AdapterError(f"LoReFT position {position!r} selects no token of row {row} (its prompt "
                                   "is empty): choose another --model.adapter.init_args.position")
            self._where[name] = where
        return args, kwargs

    def edit(self, index: int):
        def hook(module, args, output):
            if not self._where:
                return output
            h = output[0] if isinstance(output, tuple) else output
            for name, provider in self.providers.items():
                where = self._where.get(name)
                if where is None or str(index) not in provider.at:
                    continue
                rows = where.nonzero()[:, 0]
                new, logit = provider.at[str(index)](h[where])
                h = h.masked_scatter(where[..., None].expand_as(h), new) if new.numel() else h
                if logit is not None:
                    provider.gates.append((rows, logit))
            return (h, *output[1:]) if isinstance(output, tuple) else h
        return hook


def interventions(model: nn.Module, create: bool = False) -> Interventions | None:
    """The :class:`Interventions` of ``model``'s decoder (attached, with its hooks, when ``create``)."""
    return container_on(model, "interventions", Interventions, create)


class LoReFT(ModuleAdapter):
    """Low-rank representation fine-tuning at ``layers`` and ``position``; ``gated`` adds GRUN's soft gate."""

    variants = {"gated": {"gated": True}}

    def __init__(self, layers: list[int] | None = None, rank: int = 4, position: Position = "last_prompt",
                 gated: bool = False, gate_hidden: list[int] | None = None, fraction: float = 0.8,
                 eval_position: Position | None = None):
        """
        Args:
            layers: decoder-layer indices (negative counts from the end); default: the layers at 5/8, 25/32 and the
                last of the model's depth (GRUN's 20, 25, 31 of 32, scaled).
            rank: r, the rows of R.
            position: ``last_prompt``, ``prompt``, ``all`` or ``fraction`` (module docstring).
            gated: GRUN's soft gate g(h) = sigma(gate(h)) on the edit.
            gate_hidden: hidden widths of the gate MLP (GRUN's larger gate: [256, 64]); default a Linear(d, 1).
            fraction: with ``position: fraction``, where each row's text is cut (GRUN's WMDP setting: 0.8).
            eval_position: the position in evaluation mode; null: ``position`` (GRUN's WMDP: ``last_prompt``).
        """
        if rank < 1:
            raise AdapterError(f"LoReFT rank must be >= 1, got {rank}")
        for flag, value in (("position", position), ("eval_position", eval_position or position)):
            if value not in ("last_prompt", "prompt", "all", "fraction"):
                raise AdapterError(f"LoReFT {flag} must be last_prompt, prompt, all or fraction, got {value!r}: "
                                   f"--model.adapter.init_args.{flag}")
        if not 0.0 < fraction <= 1.0:
            raise AdapterError(f"LoReFT fraction must be in (0, 1], got {fraction}: --model.adapter.init_args.fraction")
        self.layers = list(layers) if layers is not None else None
        self.rank, self.position, self.gated, self.fraction = rank, position, gated, fraction
        self.eval_position = eval_position
        self.gate_hidden = list(gate_hidden or [])

    def container(self, model: nn.Module, create: bool = False):
        return interventions(model, create)

    def resolved_layers(self, model: nn.Module) -> list[int]:
        depth = widths(model)["layers"]
        if self.layers is None:
            return sorted({min(depth - 1, round(depth * f)) for f in (20 / 32, 25 / 32, 1.0)})
        bad = [i for i in self.layers if not -depth <= i < depth]
        if bad:
            raise AdapterError(f"LoReFT layer {bad[0]} is past the model's depth ({depth} layers, indices "
                               f"0..{depth - 1}): --model.adapter.init_args.layers")
        return sorted({i % depth for i in self.layers})

    def shape_of(self, model: nn.Module) -> dict:
        w = widths(model)
        return {"layers": w["layers"], "hidden": w["hidden"]}

    def build(self, model: nn.Module) -> nn.Module:
        return InterventionParams(self.resolved_layers(model), widths(model)["hidden"], self.rank, self.position,
                                  self.gated, self.gate_hidden, self.fraction, self.eval_position)

    def forward_kwargs(self, batch: dict) -> dict:
        """Nothing to add to the call: the batch's labels tell the container where each row's prompt ends."""
        iv = getattr(self, "_container", None)
        if iv is not None:
            iv.expect(batch["input_ids"], batch.get("labels"))
        return {}

    def apply(self, model: nn.Module) -> nn.Module:
        model = super().apply(model)
        self._container = self.container(model)
        return model

    def edited_positions(self, model: nn.Module) -> Tensor | None:
        """(B, T) bool: where the trainable intervention edited the latest forward (None: it did not run)."""
        return self.container(model).edited.get(TRAINABLE)

    def gate_logits(self, model: nn.Module) -> tuple[Tensor, Tensor]:
        """``(rows, logits)`` of every gated position of the trainable intervention in the latest forward, all
        layers concatenated (``rows`` index that forward's batch)."""
        provider = self.container(model).providers[TRAINABLE]
        if not provider.gates:
            empty = torch.zeros(0)
            return empty.long(), empty
        return torch.cat([r for r, _ in provider.gates]), torch.cat([g for _, g in provider.gates])
