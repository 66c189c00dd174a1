"""Unlearning methods: one file each; importing them here is the registry (``class_path: NPO``).

``METHODS`` (class name -> class) and ``ALL_METHODS`` are derived from the classes defined in this package, so a new
method is registered, selectable by name and covered by the contract tests once its module is imported here.
"""

from lit_unlearn.core.errors import MethodError
from lit_unlearn.core.registry import subclasses_in
from lit_unlearn.methods.base import Reference, Retain, UnlearningMethod
from lit_unlearn.methods.ceu import CEU
from lit_unlearn.methods.classification import SPUL, NegationLoRA, PIPrefix
from lit_unlearn.methods.dpo import DPO
from lit_unlearn.methods.finetune import Finetune
from lit_unlearn.methods.grad_ascent import GradAscent, GradAscentKL, GradDiff
from lit_unlearn.methods.npo import NPO, SimNPO
from lit_unlearn.methods.pdu import PDU
from lit_unlearn.methods.reasoning import GA1, GA2, GA3, IDK1, IDK2, IDK3
from lit_unlearn.methods.rapidun import RapidUn
from lit_unlearn.methods.relabel import IDK, RandomLabel
from lit_unlearn.methods.representation import GRUN, TNPO
from lit_unlearn.methods.rmu import RMU
from lit_unlearn.methods.satimp import SatImp
from lit_unlearn.methods.undial import UNDIAL
from lit_unlearn.methods.wga import WGA
from lit_unlearn.methods.wrong_fact import RIA, FixedWrongFact

METHODS: dict[str, type[UnlearningMethod]] = subclasses_in(UnlearningMethod, __name__)
ALL_METHODS: tuple[type[UnlearningMethod], ...] = tuple(METHODS.values())

__all__ = ["ALL_METHODS", "METHODS", "MethodError", "Reference", "Retain", "UnlearningMethod", *METHODS]
