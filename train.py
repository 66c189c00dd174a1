"""Train (learn or unlearn): ``python train.py fit --config configs/<...>.yaml``. See ``--help``."""

from lit_unlearn.cli import cli_main

if __name__ == "__main__":
    cli_main()
