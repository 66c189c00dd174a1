"""Evaluation pieces any checkpoint can be put through."""

from lit_unlearn.eval.metrics import AnswerMetrics, TokenStats

__all__ = ["AnswerMetrics", "TokenStats"]
