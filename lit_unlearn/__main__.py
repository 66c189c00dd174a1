"""``lit-unlearn`` (console script) and ``python -m lit_unlearn``: one command for runs and pipelines, from any
directory.

    lit-unlearn fit --config tofu/base --config methods/npo     # train.py fit: a config by name or by path
    lit-unlearn eval --config <run>/config.yaml --ckpt_path <run>/checkpoints/last.ckpt    # eval.py
    lit-unlearn run tofu --mini 40 --methods npo_gd             # a pipeline (python -m lit_unlearn.tofu ...)
    lit-unlearn run tofu --mini 40 --dry-run                    # each stage, its resolved values, run / reuse / resume
    lit-unlearn run --list                                      # the pipelines
    lit-unlearn sweep tofu --mini 40 --method npo_gd            # search a method's trade-off (python -m lit_unlearn.sweep)
    lit-unlearn list                                            # the pipelines and the shipped configs

Exit codes as ``train.py``: 0 finished, 2 an error of ours (one line), 3 collapsed / diverged, 130 / 143 signals.
"""

from __future__ import annotations

import sys
from importlib import import_module

#: pipeline name -> (module, one line)
PIPELINES = {
    "demo": ("lit_unlearn.demo", "the embedded default experiment: learn invented facts, unlearn half with NPO"),
    "tofu": ("lit_unlearn.tofu", "TOFU: retain-only model -> learn -> unlearn -> forget quality / model utility"),
    "sequential": ("lit_unlearn.sequential", "TOFU: forget requests one after the other, evaluated after each"),
    "relearning": ("lit_unlearn.relearning", "Deeb & Roger random birthdays: learn -> unlearn -> RTT"),
    "rtt": ("lit_unlearn.rtt", "the relearning attack (RTT) on any model or chain of adapters"),
    "classification": ("lit_unlearn.classification", "SST-2 / Yelp: classifier -> baselines -> SPUL -> PI-Prefix"),
    "rapidun": ("lit_unlearn.rapidun", "RapidUn: poison -> influence -> weighted unlearning -> backdoor table"),
}
RUN_SUBCOMMANDS = ("fit", "validate", "test", "predict")


def listing() -> str:
    from lit_unlearn.config_files import shipped_configs

    lines = ["pipelines (lit-unlearn run <name> --help):"]
    lines += [f"  {name:<15} {what}" for name, (_, what) in PIPELINES.items()]
    lines.append("shipped configs (--config <name>):")
    lines += [f"  {name}" for name in shipped_configs()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip() + "\n\n" + listing())
        return 0
    command, rest = argv[0], argv[1:]
    if command == "list":
        print(listing())
        return 0
    if command in RUN_SUBCOMMANDS or command == "eval":
        from lit_unlearn.cli import main as cli

        return cli(rest if command == "eval" else argv, evaluate=command == "eval")
    if command == "sweep":
        return run_pipeline_main("lit_unlearn.sweep.__main__", rest)
    if command == "run":
        if rest[:1] == ["--list"]:
            print("\n".join(f"{name:<15} {what}" for name, (_, what) in PIPELINES.items()))
            return 0
        if not rest or rest[0] not in PIPELINES:
            given = repr(rest[0]) if rest else "no pipeline"
            print(f"lit-unlearn: error: run takes a pipeline name, got {given}; one of: {', '.join(PIPELINES)}",
                  file=sys.stderr)
            return 2
        return run_pipeline_main(PIPELINES[rest[0]][0], rest[1:])
    print(f"lit-unlearn: error: unknown command {command!r}; one of: fit, eval, validate, test, predict, run, sweep, list",
          file=sys.stderr)
    return 2


def run_pipeline_main(module: str, argv: list[str]) -> int:
    """A pipeline module's ``main(argv)``; its SystemExit (an exit code or a one-line error) becomes the return."""
    return call_main(import_module(module).main, argv)


def call_main(main_function, argv: list[str] | None) -> int:
    """``main_function(argv)`` with the exit-code table: a SystemExit's code (a message: printed, 2), an error of
    ours one line and 2, anything else raised."""
    from lit_unlearn.cli import our_error

    try:
        main_function(argv)
    except SystemExit as stop:
        if isinstance(stop.code, str):
            print(stop.code, file=sys.stderr)
            return 2
        return int(stop.code or 0)
    except Exception as err:
        ours = our_error(err)
        if ours is None:
            raise
        print(f"lit_unlearn: error: {ours}", file=sys.stderr)
        return 2
    return 0


def run_module(main_function) -> None:
    """The ``if __name__ == "__main__"`` of a pipeline module: its ``main`` on ``sys.argv``, exiting with its code."""
    sys.exit(call_main(main_function, sys.argv[1:]))


if __name__ == "__main__":
    sys.exit(main())
