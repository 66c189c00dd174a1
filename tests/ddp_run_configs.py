"""Runs ``train.py fit`` for each config given on the command line, one after the other, in one DDP job.

Used by ``test_scale.py`` (not a test itself): Lightning launches the second rank once, at the first ``fit``; later
fits reuse the process group, so every method runs under DDP for the cost of one launch.
"""

import sys

from lit_unlearn.cli import cli_main

if __name__ == "__main__":
    for cfg in sys.argv[1:]:
        cli_main(["fit", "--config", cfg])
