"""RapidUn's influence -> weights mapping (docs/methods.md, section 3, stage B), and the loss-based fallback.

Per view (FF, FR, RR, RF; "X -> Y" = train rows of X, test rows of Y): each test row's top-``top`` influences go
into a vector over the train rows (0 elsewhere); the view's score of a train row is the median of its entries
across the test rows (:func:`view_scores`). Then

    S_f = alpha * FF - beta * FR          S_r = gamma * RR - delta * RF          (all 1.0)
    z = (S - median(S)) / max(1.4826 * MAD(S), 1e-3)
    w = exp(clip(z / tau, ln w_min, ln w_max)),  rescaled to mean 1          tau_f 0.7, tau_r 1.2, w in [0.2, 3]

(:func:`influence_weights`). The rescaling to mean 1 comes last, as in the spec, so a weight can end slightly
outside [w_min, w_max]. The fallback without influence (:func:`loss_weights`):
w = clip(mean-normalised exp((L - median(L)) / tau), 0.5, 3) with tau 0.8, from per-row losses L.
Non-finite influences are refused, naming the view.
"""

from __future__ import annotations

from pathlib import Path

import math

import torch
from torch import Tensor

from lit_unlearn.core.errors import ConfigError
from lit_unlearn.influence.tracin import TopK


def view_scores(top: TopK, n_train: int, top_n: int = 40, view: str = "view") -> Tensor:
    """(n_train,) median over test rows of the vector holding each test row's ``top_n`` influences."""
    if not torch.isfinite(top.values).all():
        raise ConfigError(f"influence view {view} holds NaN or inf values: the gradients were not finite")
    n = min(top_n, top.values.size(1))
    dense = torch.zeros(top.values.size(0), n_train)
    dense.scatter_(1, top.index[:, :n], top.values[:, :n])
    return dense.median(0).values if dense.size(0) % 2 else dense.quantile(0.5, dim=0)


def robust_z(s: Tensor) -> Tensor:
    med = s.median() if s.numel() % 2 else s.quantile(0.5)
    dev = (s - med).abs()
    mad = dev.median() if dev.numel() % 2 else dev.quantile(0.5)
    return (s - med) / max(1.4826 * float(mad), 1e-3)


def influence_weights(primary: Tensor, cross: Tensor, tau: float, w_min: float = 0.2, w_max: float = 3.0,
                      a: float = 1.0, b: float = 1.0) -> Tensor:
    """Weights of one side: S = a * primary - b * cross (FF and FR for forget rows, RR and RF for retain rows)."""
    for name, t in (("primary", primary), ("cross", cross)):
        if not torch.isfinite(t).all():
            raise ConfigError(f"the {name} influence scores hold NaN or inf values")
    z = robust_z(a * primary.double() - b * cross.double())
    w = torch.exp((z / tau).clamp(math.log(w_min), math.log(w_max)))
    return (w / w.mean()).float()


def loss_weights(losses: Tensor, tau: float = 0.8, w_min: float = 0.5, w_max: float = 3.0) -> Tensor:
    """The loss-based fallback: clip(mean-normalised exp((L - median(L)) / tau), w_min, w_max)."""
    if not torch.isfinite(losses).all():
        raise ConfigError("the per-row losses of the fallback weighting hold NaN or inf values")
    l = losses.double()
    med = l.median() if l.numel() % 2 else l.quantile(0.5)
    w = torch.exp((l - med) / tau)
    return (w / w.mean()).clamp(w_min, w_max).float()


def compare_weight_files(ours: Path, reference: Path) -> dict:
    """Spearman rank correlation per side (``forget`` / ``retain``) between the weights files of two folders
    (``<side>_weights.jsonl`` rows ``{"index", "weight"}``), joined on the row ``index``: our weights against a
    reference implementation's (RapidIn's)."""
    import json

    from scipy.stats import spearmanr

    def read(path: Path) -> dict:
        return {r["index"]: r["weight"] for r in map(json.loads, path.read_text().splitlines()) if r}

    out = {}
    for side in ("forget", "retain"):
        mine, ref = read(Path(ours) / f"{side}_weights.jsonl"), read(Path(reference) / f"{side}_weights.jsonl")
        common = sorted(set(mine) & set(ref))
        rho = float(spearmanr([mine[i] for i in common], [ref[i] for i in common]).statistic) if common else None
        out[side] = {"rows": len(common), "spearman": rho}
    return out
