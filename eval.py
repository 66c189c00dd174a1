"""Evaluate a run: ``python eval.py --config <run>/config.yaml --ckpt_path <run>/checkpoints/last.ckpt``."""

from lit_unlearn.cli import eval_main

if __name__ == "__main__":
    eval_main()
