"""lit_unlearn: machine unlearning for LLMs on PyTorch Lightning."""

__version__ = "0.1.0"
