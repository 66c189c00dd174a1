"""The optimizer and learning-rate schedule of every method.

Default optimizer AdamW(lr, weight_decay) over the trainable parameters; any ``torch.optim`` (or other) class can
replace it through the ``optimizer`` init argument (e.g. ``lion_pytorch.Lion``), built with its own arguments but
the method's ``lr``: ``lr`` is the one base learning rate of a run (the schedule, the sweeps of a relearning attack),
so it replaces the optimizer class's default or configured lr. Schedule, per optimizer step, out of ``total`` steps:
linear warm-up over the first ``int(warmup_ratio * total)`` steps (factor (step+1)/(warm+1)), then ``constant``,
``linear`` decay to 0 or ``cosine`` decay to 0.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Literal

import torch

from lit_unlearn.core.errors import MethodError

Schedule = Literal["constant", "linear", "cosine"]


def lr_factor(step: int, warm: int, total: int, schedule: Schedule) -> float:
    """The multiplier of the base learning rate at optimizer step ``step``."""
    if step < warm:
        return (step + 1) / (warm + 1)
    t = (step - warm) / max(1, total - warm)
    if schedule == "linear":
        return max(0.0, 1.0 - t)
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, t)))
    return 1.0


def build_optimization(params: Iterable[torch.nn.Parameter], total_steps: int, lr: float, weight_decay: float,
                       warmup_ratio: float, schedule: Schedule,
                       optimizer: Callable[[Iterable], torch.optim.Optimizer] | None = None) -> dict:
    """Lightning's ``configure_optimizers`` answer: the optimizer and a per-step LambdaLR schedule."""
    params = list(params)
    if not params:
        raise MethodError("no trainable parameters: set an adapter or train the full model (adapter: null)")
    opt = optimizer(params) if optimizer is not None else torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    for group in opt.param_groups:
        group["lr"] = lr
    total = max(1, int(total_steps))
    warm = int(warmup_ratio * total)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: lr_factor(step, warm, total, schedule))
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
