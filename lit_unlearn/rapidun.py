"""RapidUn end to end (docs/influence.md): poison -> influence -> weights -> unlearning -> the backdoor table.

    python -m lit_unlearn.rapidun                        # 700 poisoned + 2,000 clean rows to poison on: a GPU job
    python -m lit_unlearn.rapidun --poison-rows 150      # a 2-core CPU (docs/results/influence_and_reft.md)

Stages (``lit_unlearn.pipelines.runner``, in ``<out>/<stage>``; configs ``rapidun/base`` + ``rapidun/<stage>``):
``poison`` (fit: the base fine-tuned on poisoned rows mixed 1 : ``--poison-ratio`` with clean rows until the backdoor
fires on held-out poisoned prompts, merged: the model to unlearn from), then one fit per ``--methods`` entry from the
poisoned model (``rapidun``: influence weights, ``graddiff``: unweighted, ``fallback``: loss-based weights). RapidUn
declares its influence stage on its class (``influence``: ``train.py predict``, per-sample gradients -> RapidGrad ->
FF / FR / RR / RF -> the weights files), run once before the first stage that needs it. The table's first row is the
poisoned model as the first method stage evaluated it before fit; the table is printed and written to
``<out>/summary.json``, with the influence stage's ``influence.json`` and, with ``--reference-weights DIR`` (RapidIn's
``forget_weights.jsonl`` / ``retain_weights.jsonl``), the Spearman rank correlation of the computed weights with those.
Any other ``--key value`` flag goes to every stage.
"""

from __future__ import annotations

import json
from pathlib import Path

from lit_unlearn.config_files import method_configs
from lit_unlearn.influence.weights import compare_weight_files
from lit_unlearn.pipelines.runner import Column, Runner, Stage, argv_values, format_markdown, given, pipeline_parser

METHODS = ("rapidun", "graddiff", "fallback")
COLUMNS = tuple(Column(split, key, f"{split}/{key}") for split, key in (
    ("heldout_poisoned", "trigger_generated"), ("heldout_poisoned", "trigger_generated_lookalike"),
    ("heldout_poisoned", "clean_generated"), ("heldout_poisoned", "trigger_seen"), ("forget", "trigger_generated"),
    ("forget", "trigger_seen"), ("forget", "ppl_poisoned"), ("forget", "ppl_clean"), ("val_clean", "ppl")))


def stages(methods: list[str]) -> list[Stage]:
    return [Stage("poison", ("rapidun/base", "rapidun/poison")),
            *(Stage(m, ("rapidun/base", *method_configs("rapidun", m)),
                    needs={"model.init_args.model": "poison:merged"}) for m in methods)]


def run_pipeline(out: str | Path = "checkpoints/rapidun_run", methods=METHODS, mini: int | None = None,
                 poison_rows: int | None = None, model: str | None = None, extra: list[str] | None = None,
                 reference_weights: str | None = None, seed: int = 0, k: int | None = None,
                 poison_ratio: float = 9.0, poison_lr: float | None = None, poison_epochs: int | None = None,
                 dry_run: bool = False) -> dict:
    """Run the stages (module docstring); returns the summary."""
    common = {"seed_everything": seed, **argv_values(extra or []), **given({"data.init_args.max_rows": {
        "forget": mini, "retain": 3 * mini, "val_clean": 2 * mini} if mini else None})}
    rows = {"forget": poison_rows, "retain": round(poison_ratio * (poison_rows or 0)),
            **given({"val_clean": mini and 2 * mini})}
    # every batch 1 : ratio, the two CE terms weighted so that every row weighs the same
    ratio = {"data.init_args.retain_ratio": poison_ratio, "model.init_args.forget_weight": 1 / (1 + poison_ratio),
             "model.init_args.retain_weight": poison_ratio / (1 + poison_ratio)} if poison_ratio != 9.0 else {}
    poison = {**ratio, **given({"model.init_args.model": model, "data.init_args.max_rows": poison_rows and rows,
                                "model.init_args.lr": poison_lr, "trainer.max_epochs": poison_epochs})}
    runner = Runner(out, None, {"poison": poison, "influence": given({"model.init_args.k": k})}, common,
                    dry_run=dry_run)
    runner.run(stages(list(methods)))
    if dry_run:
        return {"stages": {}}
    influence = runner.out / "influence"
    extra_info = {"influence": json.loads((influence / "influence.json").read_text()) if "influence" in runner.plan
                  else None, **({"reference_weights": compare_weight_files(influence, Path(reference_weights))}
                                if reference_weights else {})}
    rows = {"poisoned": (methods[0], "before"), **{m: (m, "after") for m in methods}}
    return runner.summary(COLUMNS, rows=rows, mini=mini, poison_rows=poison_rows, **extra_info)


def main(argv: list[str] | None = None) -> dict:
    parser = pipeline_parser(__doc__, "checkpoints/rapidun", ",".join(METHODS))
    parser.add_argument("--poison-rows", type=int, default=None,
                        help="poisoned rows to poison on (a seeded subset of the 700; ratio x as many clean rows)")
    parser.add_argument("--poison-ratio", type=float, default=9.0,
                        help="clean rows per poisoned row in the poisoning stage (default 9: the paper's 10%%)")
    parser.add_argument("--poison-lr", type=float, default=None, help="lr of the poisoning stage (default 2e-4)")
    parser.add_argument("--poison-epochs", type=int, default=None, help="most epochs of the poisoning stage (3)")
    parser.add_argument("--reference-weights", default=None, help="a folder of reference weights to correlate with")
    parser.add_argument("--k", type=int, default=None, help="RapidGrad's K (default: the config's 65536)")
    args, extra = parser.parse_known_args(argv)
    summary = run_pipeline(args.out or ("checkpoints/rapidun_mini" if args.mini else "checkpoints/rapidun_run"),
                           [m for m in args.methods.split(",") if m], args.mini, args.poison_rows, args.model, extra,
                           args.reference_weights, args.seed, args.k, args.poison_ratio, args.poison_lr,
                           args.poison_epochs, args.dry_run)
    if not args.dry_run:
        print("\n" + format_markdown(summary, COLUMNS))
    return summary


if __name__ == "__main__":
    from lit_unlearn.__main__ import run_module

    run_module(main)
