"""Train (learn or unlearn): ``python train.py fit --config configs/<...>.yaml``. See ``--help``.

Exit codes: 0 finished, 2 an error of ours (one line on stderr), 3 collapsed / diverged, 130 / 143 interrupted by
SIGINT / SIGTERM (resume with ``--ckpt_path last``); see ``lit_unlearn/runs.py``."""

import sys

from lit_unlearn.cli import main

if __name__ == "__main__":
    sys.exit(main())
