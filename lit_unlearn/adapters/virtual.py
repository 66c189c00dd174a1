"""Adapters that add virtual tokens: ``Prefix`` (per-layer key/value prefixes) and ``SoftPrompt`` (P-tuning).

Both live in one :class:`VirtualTokens` module attached to the decoder (``model.get_decoder().virtual_tokens``),
which holds an ordered set of providers: the trainable one (``default``) and any saved ones stacked frozen under
it (``init_adapter``). One forward pre-hook on the decoder rewrites its call:

- a ``Prefix`` fills a fresh cache with its keys and values for every layer, so every real token attends to P
  extra positions (Li & Liang 2021, arXiv 2101.00190; the form PI-Prefix trains, without the MLP
  reparametrisation);
- a ``SoftPrompt`` embeds ``input_ids`` and puts its P virtual embeddings in front (P-tuning, Liu et al. 2021,
  arXiv 2103.10385: an MLP prompt encoder over free embeddings, as SPUL uses);
- the attention mask gains one column per virtual position (prefix entries first, then prompt positions); caller
  given ``position_ids`` are shifted past them (without, the decoder counts from the cache length, which includes
  the prefix);

and a forward hook drops the soft prompt's positions from the decoder's output, so logits, hidden states and
labels stay aligned with ``input_ids`` whatever adapters are stacked (the re-alignment of the adapter contract).

A prefix's keys are the attention keys as the cache holds them (after rotary embedding: a free prefix has no
position). Absolute positions still matter, since a query is rotated by its own position: a training run and
its evaluation both see the real tokens at positions P, P+1, ... A zero prefix is *not* the identity: each of its
positions takes weight exp(0) in every softmax; the identity checks are "disabled" and a prefix holding the model's
own keys and values of a text (which equals prepending that text; tests/test_adapters.py).

Why not PEFT's ``PrefixTuningConfig`` / ``PromptEncoderConfig``: their ``PeftModel`` wrappers cannot stack a saved
prompt frozen under another adapter (``get_peft_model`` does not wrap a prompt-learning ``PeftModel``), PEFT saves
a P-tuning prompt as its encoder's output only (a reloaded prompt cannot be trained on), and PI-Prefix must
transform the per-layer (P, d) key and value matrices and record that in the artifact. The encoder here has the
shape of PEFT's MLP encoder (Linear h->e, ReLU, Linear e->e, ReLU, Linear e->h), written for this module.

Saved form (``save``): ``adapter_config.json`` (``"adapter_type"``: the class name, its hyper-parameters, the
model's widths, and ``"transform"``: the transformations applied so far) and ``adapter_model.safetensors``.
"""

from __future__ import annotations

import json
from abc import abstractmethod
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import Tensor, nn

from lit_unlearn.adapters.base import Adapter
from lit_unlearn.core.errors import AdapterError

CONFIG = "adapter_config.json"
WEIGHTS = "adapter_model.safetensors"
TRAINABLE = "default"


def decoder_of(model: nn.Module) -> nn.Module:
    """The decoder stack (e.g. ``LlamaModel``) under ``model``, through a PEFT wrapper if there is one."""
    inner = model
    for _ in range(4):
        get = getattr(inner, "get_decoder", None)
        if get is not None:
            return get()
        inner = getattr(inner, "base_model", None) or getattr(inner, "model", None)
        if inner is None:
            break
    raise AdapterError(f"{type(model).__name__} has no decoder (get_decoder) to attach virtual tokens to")


def widths(model: nn.Module) -> dict[str, int]:
    """Layers, hidden size, and the key/value width (kv heads x head dim) of ``model``'s config."""
    cfg = model.config
    heads = cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    kv_heads = getattr(cfg, "num_key_value_heads", None) or heads
    return {"layers": cfg.num_hidden_layers, "hidden": cfg.hidden_size, "kv_heads": kv_heads, "head_dim": head_dim}


# ---- the providers --------------------------------------------------------------------------------------------------
class PrefixParams(nn.Module):
    """Per-layer prefix keys and values, ``(layers, P, kv_heads * head_dim)`` each, drawn N(0, init_std^2); with
    ``dropout`` > 0 the keys and values go through dropout in training mode (PI-Prefix: 0.1)."""

    kind = "prefix"

    def __init__(self, layers: int, length: int, kv_heads: int, head_dim: int, init_std: float = 1.0,
                 dropout: float = 0.0):
        super().__init__()
        self.kv_heads, self.head_dim = kv_heads, head_dim
        self.keys = nn.Parameter(torch.randn(layers, length, kv_heads * head_dim) * init_std)
        self.values = nn.Parameter(torch.randn(layers, length, kv_heads * head_dim) * init_std)
        self.dropout = nn.Dropout(dropout)
        self.enabled = True
        self.transform: list[str] = []  # transformations applied (recorded in the saved adapter_config.json)

    @property
    def length(self) -> int:
        return self.keys.size(1)

    def layer_kv(self, layer: int, batch: int, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """(B, kv_heads, P, head_dim) keys and values of one layer, as a cache holds them."""
        def shape(x: Tensor) -> Tensor:
            x = self.dropout(x).view(self.length, self.kv_heads, self.head_dim).transpose(0, 1)
            return x.unsqueeze(0).expand(batch, -1, -1, -1).to(dtype)
        return shape(self.keys[layer]), shape(self.values[layer])


class PromptParams(nn.Module):
    """P free embeddings and the P-tuning MLP encoder: prompt = MLP(E), (P, hidden)."""

    kind = "prompt"

    def __init__(self, hidden: int, length: int, encoder_hidden: int):
        super().__init__()
        self.embedding = nn.Parameter(torch.randn(length, hidden))
        self.encoder = nn.Sequential(nn.Linear(hidden, encoder_hidden), nn.ReLU(),
                                     nn.Linear(encoder_hidden, encoder_hidden), nn.ReLU(),
                                     nn.Linear(encoder_hidden, hidden))
        self.enabled = True
        self.transform: list[str] = []

    @property
    def length(self) -> int:
        return self.embedding.size(0)

    def prompt(self) -> Tensor:
        return self.encoder(self.embedding)


class VirtualTokens(nn.Module):
    """The providers of one decoder and the hooks that feed them to it (module docstring)."""

    def __init__(self):
        super().__init__()
        self.providers = nn.ModuleDict()
        self._strip = 0  # prompt positions of the call in flight (decoder calls do not nest), cut from its output

    def active(self) -> list[nn.Module]:
        return [p for p in self.providers.values() if p.enabled]

    def install(self, decoder: nn.Module) -> None:
        decoder.register_forward_pre_hook(self.before, with_kwargs=True)
        decoder.register_forward_hook(self.after, with_kwargs=True)

    def before(self, decoder: nn.Module, args: tuple, kwargs: dict):
        active = self.active()
        prefixes = [p for p in active if p.kind == "prefix"]
        prompts = [p for p in active if p.kind == "prompt"]
        self._strip = 0
        if not active:
            return args, kwargs
        if args:  # the decoder is called with keywords by every causal-LM head; a positional input_ids is kept
            kwargs = {"input_ids": args[0], **kwargs}
            args = ()
        ids, embeds = kwargs.get("input_ids"), kwargs.get("inputs_embeds")
        x = ids if ids is not None else embeds
        batch, length = x.shape[0], x.shape[1]
        cache_key = "cache" if "cache" in kwargs or "past_key_values" not in kwargs else "past_key_values"
        cache = kwargs.get(cache_key)
        first = cache is None or cache.get_seq_length() == 0
        n_prefix = sum(p.length for p in prefixes)
        n_prompt = sum(p.length for p in prompts)
        dtype = decoder.get_input_embeddings().weight.dtype if embeds is None else embeds.dtype
        if dtype not in (torch.float32, torch.float16, torch.bfloat16):  # a quantized embedding: compute dtype
            dtype = torch.float32
        if first and prefixes:
            from transformers import DynamicCache

            if cache is None:
                cache = DynamicCache(config=decoder.config)
            for layer in range(decoder.config.num_hidden_layers):
                ks, vs = zip(*(p.layer_kv(layer, batch, dtype) for p in prefixes))
                cache.update(torch.cat(ks, 2), torch.cat(vs, 2), layer)
            kwargs[cache_key] = cache
        if first and prompts:
            if embeds is None:
                embeds = decoder.get_input_embeddings()(ids)
            virtual = torch.cat([p.prompt() for p in prompts]).to(embeds.dtype)
            kwargs["inputs_embeds"] = torch.cat([virtual.unsqueeze(0).expand(batch, -1, -1), embeds], 1)
            kwargs["input_ids"] = None
            self._strip = n_prompt
        mask = kwargs.get("attention_mask")
        if mask is not None and mask.dim() == 2:
            extra = n_prefix + n_prompt
            kwargs["attention_mask"] = torch.cat([mask.new_ones(batch, extra), mask], 1)
        elif mask is None and first:
            kwargs["attention_mask"] = torch.ones(batch, n_prefix + n_prompt + length, dtype=torch.long,
                                                  device=x.device)
        elif mask is not None:
            raise AdapterError("virtual-token adapters need a 2D attention mask (batch, tokens), got "
                               f"{tuple(mask.shape)}")
        pos = kwargs.get("position_ids")
        if pos is not None:
            pos = pos + n_prefix + (n_prompt if not first else 0)
            if first and prompts:
                lead = torch.arange(n_prefix, n_prefix + n_prompt, device=pos.device).expand(pos.shape[0], -1)
                pos = torch.cat([lead, pos + n_prompt], -1)
            kwargs["position_ids"] = pos
        return args, kwargs

    def after(self, decoder: nn.Module, args: tuple, kwargs: dict, output):
        strip, self._strip = self._strip, 0
        if strip:
            output.last_hidden_state = output.last_hidden_state[:, strip:]
        return output


def container_on(model: nn.Module, attr: str, cls: type, create: bool):
    """The container ``attr`` of ``model``'s decoder; with ``create``, a new ``cls()`` attached there and its hooks
    installed (``cls.install(decoder)``) when there is none."""
    decoder = decoder_of(model)
    found = getattr(decoder, attr, None)
    if found is None and create:
        found = cls()
        setattr(decoder, attr, found)
        found.install(decoder)
    return found


def virtual_tokens(model: nn.Module, create: bool = False) -> VirtualTokens | None:
    """The :class:`VirtualTokens` of ``model``'s decoder (attached, with its hooks, when ``create``)."""
    return container_on(model, "virtual_tokens", VirtualTokens, create)


# ---- the adapters ---------------------------------------------------------------------------------------------------
class ModuleAdapter(Adapter):
    """An adapter whose state is one small module in a container on the decoder (``providers``: the trainable
    ``default`` and any stacked frozen ones): attach it, disable it, save / load / stack it. Prefix and SoftPrompt
    (container :class:`VirtualTokens`) and LoReFT (``lit_unlearn.adapters.reft``) are this."""

    starts_as_identity = False
    mergeable = False  # a prefix, a prompt or an intervention is not a weight delta

    def container(self, model: nn.Module, create: bool = False) -> nn.Module | None:
        """The module on ``model`` holding the providers (``providers``, an ``nn.ModuleDict``)."""
        return virtual_tokens(model, create)

    def hyperparameters(self) -> dict:
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}

    @abstractmethod
    def build(self, model: nn.Module) -> nn.Module:
        """A fresh provider module for ``model``."""

    @abstractmethod
    def shape_of(self, model: nn.Module) -> dict:
        """The model widths a saved provider must match (recorded in ``adapter_config.json``)."""

    def apply(self, model: nn.Module) -> nn.Module:
        model.requires_grad_(False)
        vt = self.container(model, create=True)
        if TRAINABLE in vt.providers:
            raise AdapterError(f"the model already has a trainable {type(self).__name__}")
        ref = model.get_input_embeddings().weight
        device = ref.device
        vt.providers[TRAINABLE] = self.build(model).to(device)
        return model

    def provider(self, model: nn.Module) -> nn.Module:
        vt = self.container(model)
        if vt is None or TRAINABLE not in vt.providers:
            raise AdapterError(f"the model has no {type(self).__name__} applied")
        return vt.providers[TRAINABLE]

    @contextmanager
    def disabled(self, model: nn.Module):
        provider = self.provider(model)
        before, provider.enabled = provider.enabled, False
        try:
            yield model
        finally:
            provider.enabled = before

    def trainable_parameters(self, model: nn.Module):
        prefix = f"{_path_to(model, self.provider(model))}."
        return ((prefix + n, p) for n, p in self.provider(model).named_parameters() if p.requires_grad)

    def save(self, model: nn.Module, path: str | Path) -> None:
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        provider = self.provider(model)
        config = {"adapter_type": type(self).__name__, **self.hyperparameters(), "model": self.shape_of(model),
                  "transform": list(provider.transform)}
        tensors = {n: p.detach().float().cpu().contiguous() for n, p in provider.state_dict().items()}
        tmp = path / (WEIGHTS + ".tmp")
        save_file(tensors, str(tmp))
        tmp.replace(path / WEIGHTS)
        (path / CONFIG).write_text(json.dumps(config, indent=2) + "\n")

    def _read(self, model: nn.Module, path: str | Path) -> tuple[dict, dict]:
        from safetensors.torch import load_file

        path = Path(path)
        config = read_config(path)
        if config.get("adapter_type") != type(self).__name__:
            raise AdapterError(f"{path} holds a {config.get('adapter_type', 'PEFT')} adapter, not a "
                               f"{type(self).__name__}")
        want, got = self.shape_of(model), config.get("model", {})
        if got != want:
            diff = ", ".join(f"{k} {got.get(k)} (model: {v})" for k, v in want.items() if got.get(k) != v)
            raise AdapterError(f"{path} was saved for a model of another width: {diff}")
        if not (path / WEIGHTS).is_file():
            raise AdapterError(f"{path} has no {WEIGHTS}")
        return config, load_file(str(path / WEIGHTS))

    def load(self, model: nn.Module, path: str | Path) -> None:
        config, tensors = self._read(model, path)
        provider = self.provider(model)
        _load_into(provider, tensors, path)
        provider.transform = list(config.get("transform", []))

    def stack(self, model: nn.Module, path: str | Path) -> nn.Module:
        """Attach the saved adapter in ``path`` frozen under whatever is applied next (``init_adapter``)."""
        model.requires_grad_(False)
        config, tensors = self._read(model, path)
        vt = self.container(model, create=True)
        provider = self.build(model).to(model.get_input_embeddings().weight.device)
        _load_into(provider, tensors, path)
        provider.transform = list(config.get("transform", []))
        provider.requires_grad_(False)
        for m in provider.modules():  # a frozen provider computes the same in training as in evaluation
            if isinstance(m, nn.Dropout):
                m.p = 0.0
        vt.providers[f"stacked{len(vt.providers)}"] = provider
        return model

    def merge(self, model: nn.Module) -> nn.Module:
        raise AdapterError(f"a {type(self).__name__} cannot be folded into the weights: save the adapter "
                           "(adapter/) and stack it on the base with --model.init_adapter")


class Prefix(ModuleAdapter):
    """Free per-layer key/value prefixes of ``length`` positions given to the model as its cache.

    PI-Prefix's original (PreethiGuru/LLM-Unlearning ``utils_pi.py:105-107,121``) draws them N(0, 1) and applies
    dropout 0.1 (its model's ``dropout``) to the keys and values in training; ``init_std: null`` draws them at the
    model's own initialisation scale (its config's ``initializer_range``, 0.02 for Llama), a small start: an N(0, 1)
    prefix of SmolLM2's width takes over every attention row and stops the model answering at all
    (docs/results/classification.md)."""

    def __init__(self, length: int = 10, init_std: float | None = 1.0, dropout: float = 0.0):
        """
        Args:
            length: prefix positions P per layer (PI-Prefix: 10 to 20).
            init_std: standard deviation of the N(0, init_std^2) start; null: the model's initializer_range.
            dropout: dropout on the prefix keys and values in training (PI-Prefix: 0.1); 0: none.
        """
        if length < 1:
            raise AdapterError(f"Prefix length must be >= 1, got {length}")
        if init_std is not None and not init_std > 0:
            raise AdapterError(f"Prefix init_std must be > 0 or null, got {init_std}: "
                               "--model.adapter.init_args.init_std")
        if not 0 <= dropout < 1:
            raise AdapterError(f"Prefix dropout must be in [0, 1), got {dropout}: --model.adapter.init_args.dropout")
        self.length, self.init_std, self.dropout = length, init_std, dropout

    def shape_of(self, model: nn.Module) -> dict:
        w = widths(model)
        return {"layers": w["layers"], "kv_width": w["kv_heads"] * w["head_dim"]}

    def build(self, model: nn.Module) -> nn.Module:
        w = widths(model)
        std = self.init_std if self.init_std is not None else getattr(model.config, "initializer_range", 0.02)
        return PrefixParams(w["layers"], self.length, w["kv_heads"], w["head_dim"], std, self.dropout)

    def transform_pinv(self, model: nn.Module) -> None:
        """PI-Prefix's transformation, in place: K[l] <- pinv(K[l])^T and V[l] <- pinv(V[l])^T per layer (Moore-
        Penrose, (P, d) -> (d, P) -> (P, d)); applied once: a transformed prefix is refused."""
        pinv_transform(self.provider(model))


def pinv_transform(provider: PrefixParams, where: str = "this prefix") -> None:
    """K[l] <- pinv(K[l])^T, V[l] <- pinv(V[l])^T for every layer, in place, recorded in ``provider.transform``;
    a provider that records it already is refused (``where`` names it in the error)."""
    if "pinv" in provider.transform:
        raise AdapterError(f"{where} was already transformed (pinv, recorded in its {CONFIG}); it is never "
                           "inverted twice")
    with torch.no_grad():
        for t in (provider.keys, provider.values):
            t.copy_(torch.linalg.pinv(t.double()).transpose(-1, -2).to(t.dtype))
    provider.transform = [*provider.transform, "pinv"]


class SoftPrompt(ModuleAdapter):
    """P-tuning: ``length`` virtual token embeddings from an MLP encoder, in front of the input embeddings."""

    def __init__(self, length: int = 30, encoder_hidden: int = 128):
        """
        Args:
            length: virtual tokens P (SPUL: 30).
            encoder_hidden: hidden width of the MLP prompt encoder (SPUL: 128).
        """
        if length < 1 or encoder_hidden < 1:
            raise AdapterError(f"SoftPrompt length and encoder_hidden must be >= 1, got {length}, {encoder_hidden}")
        self.length, self.encoder_hidden = length, encoder_hidden

    def shape_of(self, model: nn.Module) -> dict:
        return {"hidden": widths(model)["hidden"]}

    def build(self, model: nn.Module) -> nn.Module:
        return PromptParams(widths(model)["hidden"], self.length, self.encoder_hidden)


# ---- helpers --------------------------------------------------------------------------------------------------------
def read_config(path: Path) -> dict:
    file = Path(path) / CONFIG
    if not file.is_file():
        raise AdapterError(f"{path} is not a saved adapter directory (no {CONFIG})")
    try:
        return json.loads(file.read_text())
    except json.JSONDecodeError as err:
        raise AdapterError(f"{file} is not valid JSON: {err.msg}") from None


def _load_into(provider: nn.Module, tensors: dict, path) -> None:
    own = provider.state_dict()
    missing = [k for k in own if k not in tensors]
    wrong = [k for k in own if k in tensors and tensors[k].shape != own[k].shape]
    if missing or wrong:
        k = (missing or wrong)[0]
        raise AdapterError(f"{path}: tensor {k} is {'missing' if missing else f'{tuple(tensors[k].shape)}'} "
                           f"(expected {tuple(own[k].shape)}): the adapter was saved with other hyper-parameters")
    provider.load_state_dict({k: tensors[k] for k in own})


def _path_to(model: nn.Module, target: nn.Module) -> str:
    for name, module in model.named_modules():
        if module is target:
            return name
    raise AdapterError("the adapter's module is not part of the model")

