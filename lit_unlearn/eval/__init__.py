"""Evaluators: one small class per metric family, run in-loop and by ``eval.py`` on any checkpoint or plain model.

``EVALUATORS`` maps each evaluator's ``name`` to its class; it is derived from the classes defined in this package,
so a new evaluator is registered by being imported here.
"""

from lit_unlearn.core.registry import subclasses_in
from lit_unlearn.eval.answer import AnswerEvaluator
from lit_unlearn.eval.backdoor import BackdoorEvaluator, PerplexityEvaluator
from lit_unlearn.eval.base import Aggregate, Evaluator, Scorer, gather_rows
from lit_unlearn.eval.gate import GateEvaluator
from lit_unlearn.models.generate import greedy_generate
from lit_unlearn.eval.label import LabelEvaluator
from lit_unlearn.eval.mcq import MCQEvaluator
from lit_unlearn.eval.memorization import MemorizationEvaluator
from lit_unlearn.eval.mia import MIAEvaluator, MIASummary
from lit_unlearn.eval.rouge import ROUGEEvaluator
from lit_unlearn.eval.suite import EvalSuite, format_table
from lit_unlearn.eval.tofu import TOFUEvaluator, TOFUSummary

EVALUATORS: dict[str, type[Evaluator]] = {cls.name: cls for cls in subclasses_in(Evaluator, __name__).values()}

__all__ = ["EVALUATORS", "Aggregate", "AnswerEvaluator", "BackdoorEvaluator", "PerplexityEvaluator", "EvalSuite", "Evaluator", "GateEvaluator", "LabelEvaluator", "MCQEvaluator",
           "MemorizationEvaluator", "MIAEvaluator", "MIASummary", "ROUGEEvaluator", "Scorer", "TOFUEvaluator", "TOFUSummary", "format_table", "gather_rows",
           "greedy_generate"]
