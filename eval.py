"""Evaluate a run: ``python eval.py --config <run>/config.yaml --ckpt_path <run>/checkpoints/last.ckpt``.

Exit codes as ``train.py``: 0 done, 2 an error of ours (e.g. a damaged checkpoint), 130 / 143 interrupted."""

import sys

from lit_unlearn.cli import main

if __name__ == "__main__":
    sys.exit(main(evaluate=True))
