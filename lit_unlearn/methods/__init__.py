"""Unlearning methods: one file each; importing them here is the registry (``class_path: NPO``)."""

from lit_unlearn.methods.base import MethodError, UnlearningMethod
from lit_unlearn.methods.finetune import Finetune
from lit_unlearn.methods.grad_ascent import GradAscent, GradAscentKL, GradDiff
from lit_unlearn.methods.npo import NPO, SimNPO
from lit_unlearn.methods.relabel import IDK, RandomLabel

ALL_METHODS = (Finetune, GradAscent, GradDiff, GradAscentKL, RandomLabel, NPO, SimNPO, IDK)

__all__ = ["ALL_METHODS", "IDK", "NPO", "Finetune", "GradAscent", "GradAscentKL", "GradDiff", "MethodError",
           "RandomLabel", "SimNPO", "UnlearningMethod"]
