"""Per-sample gradients of a model's trainable ``nn.Linear`` weights (a LoRA's A and B), for a whole batch at once.

For a linear layer y = x W^T, the gradient of a sum of per-row losses L = sum_i l_i splits by row:

    dl_i / dW = sum_t (dL / dy_{i,t})^T x_{i,t}            (t over the row's positions)

so one forward and one backward of the summed loss, with the layer inputs and output gradients kept by hooks, give
every row's gradient (the per-sample trick of Goodfellow 2015, as in Opacus). ``l_i`` is the row's CE, the mean
token NLL over its answer tokens (RapidIn's per-example loss). The result equals one backward per row (tested).
Only trainable ``nn.Linear`` weights are supported (biases, embeddings or prefixes are refused): the LoRA adapters
the influence stage runs on.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from lit_unlearn.core.errors import ConfigError


def trainable_linears(model: nn.Module) -> list[tuple[str, nn.Linear]]:
    """The ``nn.Linear`` modules whose weight is trainable, by name; refuses other trainable tensors."""
    linears, covered = [], set()
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and module.weight.requires_grad:
            if module.bias is not None and module.bias.requires_grad:
                raise ConfigError(f"per-sample gradients cover linear weights only; {name}.bias is trainable")
            linears.append((name, module))
            covered.add(id(module.weight))
    other = [n for n, p in model.named_parameters() if p.requires_grad and id(p) not in covered]
    if other:
        raise ConfigError(f"per-sample gradients cover trainable nn.Linear weights only (a LoRA); {other[0]} is "
                          "trainable too")
    if not linears:
        raise ConfigError("the model has no trainable linear weights to take gradients of")
    return linears


def per_sample_gradients(model: nn.Module, row_losses: Callable[[], Tensor]) -> Tensor:
    """(B, D) gradients, one row per sample: ``row_losses()`` runs the forward and returns the (B,) per-row losses;
    D is the total size of the trainable linear weights, in ``trainable_linears`` order."""
    linears = trainable_linears(model)
    inputs: dict[int, Tensor] = {}
    outputs: dict[int, Tensor] = {}
    handles = []
    for i, (_, module) in enumerate(linears):
        def keep_input(mod, args, out, i=i):
            inputs[i] = args[0].detach()
            if out.requires_grad:
                out.register_hook(lambda g, i=i: outputs.__setitem__(i, g.detach()))
        handles.append(module.register_forward_hook(keep_input))
    try:
        losses = row_losses()
        losses.sum().backward()
    finally:
        for h in handles:
            h.remove()
    parts = []
    for i, (name, module) in enumerate(linears):
        if i not in outputs:
            raise ConfigError(f"{name} took no part in the loss: no gradient to split by row")
        x, g = inputs[i].float(), outputs[i].float()
        x = x.reshape(x.size(0), -1, x.size(-1))
        g = g.reshape(g.size(0), -1, g.size(-1))
        parts.append(torch.einsum("bto,bti->boi", g, x).reshape(x.size(0), -1))
    model.zero_grad(set_to_none=True)
    return torch.cat(parts, 1)
