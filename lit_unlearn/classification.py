"""Classification unlearning end to end (SPUL / PI-Prefix, docs/classification.md): target classifier -> baselines ->
soft prompt -> PI-Prefix -> the table of label accuracy, weighted F1 and evaluation time on the four splits.

    python -m lit_unlearn.classification --dataset sst2                        # the paper's sizes: a GPU job
    python -m lit_unlearn.classification --dataset sst2 --mini 64 --no-quantize  # 2-core CPU, subsampled

Each stage is ``train.py fit`` with ``configs/<dataset>/base.yaml`` + ``configs/sst2/<stage>.yaml`` (the method
files serve both datasets), in ``<out>/<stage>``:

1. ``classifier`` (``finetune_qlora.yaml``): the QLoRA classifier on train_retain + train_forget, merged and saved
   to ``<out>/classifier/merged``: the target;
2. one run per method of ``--methods`` on the target (grad_ascent, random_label, grad_ascent_descent,
   grad_ascent_kl, negation_lora, spul, pi_prefix, pi_prefix_relabel).

``--mini N`` subsamples every split to a seeded N rows (train_retain and test_retain to 4N), truncates nothing
(longer rows are skipped, ``--max-length``) and uses the per-stage epochs of :data:`MINI`; the PI-Prefix stages train
for ``--prefix-steps`` optimizer steps instead (mini: 2,000; the original trains tens of thousands) and are then
evaluated twice, with the transformed prefix (the stage itself) and with the trained one (``<method>_trained``:
``eval.py`` with the exported ``adapter_trained/`` stacked on the target). A stage whose run directory holds a finished
run is reused. The table is printed (``--markdown``: also as Markdown) and written to
``<out>/classification_summary.json``; each stage's metrics.json has everything else.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from lit_unlearn import stages
from lit_unlearn.cli import package_versions, write_json_atomic
from lit_unlearn.config_files import config_root

CONFIG_DIR = config_root()
METHODS = ("grad_ascent", "random_label", "grad_ascent_descent", "grad_ascent_kl", "negation_lora", "spul",
           "pi_prefix", "pi_prefix_relabel")
#: split of the data module -> column name of the paper's tables
SPLITS = {"forget": "train_forget", "retain": "train_retain", "test_forget": "test_forget",
          "test_retain": "test_retain"}
#: epochs per stage in the CPU-sized setting, and the PI-Prefix stages' optimizer steps there
MINI = {"classifier": 2, "unlearn": 3, "prefix_steps": 2000}
PREFIX = ("pi_prefix", "pi_prefix_relabel")


def run_pipeline(dataset: str = "sst2", methods: list[str] | tuple[str, ...] = METHODS, out: str | Path | None = None,
                 mini: int | None = None, quantize: bool = True, model: str | None = None,
                 max_length: int | None = None, classifier_epochs: int | None = None,
                 unlearn_epochs: int | None = None, extra: list[str] | None = None, seed: int = 0,
                 prefix_steps: int | None = None) -> dict:
    """Run the stages (module docstring); returns the summary."""
    base = CONFIG_DIR / dataset / "base.yaml"
    if not base.is_file():
        raise SystemExit(f"lit_unlearn.classification: no {base}; --dataset takes sst2 or yelp")
    unknown = [m for m in methods if not (CONFIG_DIR / "sst2" / f"{m}.yaml").is_file() or m == "finetune_qlora"]
    if unknown:
        raise SystemExit(f"lit_unlearn.classification: --methods {unknown[0]!r} is not a method config of "
                         f"configs/sst2/ ({', '.join(METHODS)})")
    out = Path(out or f"checkpoints/{dataset}_{'mini' if mini else 'run'}").resolve()
    t0 = time.time()
    common = ["--seed_everything", str(seed), *(extra or [])]
    if mini is not None:
        rows = {"forget": mini, "retain": 4 * mini, "test_forget": mini, "test_retain": 4 * mini}
        common += ["--data.init_args.max_rows", json.dumps(rows), "--data.init_args.too_long", "skip",
                   "--data.init_args.max_length", str(max_length or 256)]
    elif max_length is not None:
        common += ["--data.init_args.max_length", str(max_length)]
    epochs = {"classifier": classifier_epochs, "unlearn": unlearn_epochs}
    if mini is not None:
        epochs = {k: v if v is not None else MINI[k] for k, v in epochs.items()}

    def flags(kind: str) -> list[str]:
        return common + (["--trainer.max_epochs", str(epochs[kind])] if epochs[kind] is not None else [])

    stage1 = flags("classifier") + (["--model.init_args.model", model] if model else [])
    if not quantize:
        stage1 += ["--model.init_args.quantize", "null", "--model.init_args.dtype", "float32"]
    records = {"classifier": stages.run_stage([base, CONFIG_DIR / "sst2" / "finetune_qlora.yaml"], out,
                                              "classifier", stage1)}
    target = str(out / "classifier" / "merged")
    # the target was evaluated after stage 1, so the unlearning stages skip their evaluation before fit; the
    # collapse guard's floor (half the retain accuracy before unlearning) is set from that evaluation, for every
    # method whose config keeps the guard's floor (PI-Prefix's turns it off: it trains a model it does not evaluate)
    learned = records["classifier"]["metrics"]["after"]["retain"]["acc"]
    floor = ["--guard.relative", "false", "--guard.retain_floor", str(0.5 * learned)]
    steps = prefix_steps if prefix_steps is not None else MINI["prefix_steps"] if mini is not None else None
    for method in methods:
        config = CONFIG_DIR / "sst2" / f"{method}.yaml"
        keeps_floor = "retain_floor: null" not in config.read_text()
        budget = flags("unlearn")
        if method in PREFIX and steps is not None:  # steps, not epochs; no evaluation inside fit (guard is off)
            budget = common + ["--trainer.max_steps", str(steps), "--trainer.max_epochs", "-1",
                               "--trainer.check_val_every_n_epoch", "1000000"]
        records[method] = stages.run_stage([base, config], out, method,
                                           budget + (floor if keeps_floor else []) + [
                                               "--model.init_args.model", target, "--eval_before", "false"])
        if method in PREFIX:
            records[f"{method}_trained"] = trained_reading(out, method)
    summary = {"dataset": dataset, "mini": mini, "quantized_classifier": quantize,
               "stages": {name: summarize(rec) for name, rec in records.items()},
               "wall_time_s": round(time.time() - t0, 1), "versions": package_versions()}
    write_json_atomic(out / "classification_summary.json", summary)
    return summary


def trained_reading(out: Path, method: str) -> dict:
    """The PI-Prefix run ``method`` evaluated with its trained (untransformed) prefix, in ``<out>/<method>_trained``;
    reused when that evaluation exists. Returns its eval_metrics.json."""
    from lit_unlearn.cli import eval_main

    run, done = out / method, out / f"{method}_trained" / "eval_metrics.json"
    if not done.is_file():
        # the exported trained prefix stacked frozen on the target, no new adapter: the model as trained
        cli = eval_main(["--config", str(run / "config.yaml"), "--model.init_args.adapter", "null",
                         "--model.init_args.init_adapter", str(run / "adapter_trained"),
                         "--trainer.logger.init_args.version", f"{method}_trained"])
        if cli.exit_code not in (0, None):
            raise SystemExit(cli.exit_code)
    return json.loads(done.read_text())


def summarize(record: dict) -> dict:
    """One row: accuracy, F1 and evaluation seconds per split after fit (or of an evaluation-only run), the fit time
    and the run's status."""
    after = record["metrics"].get("after", record["metrics"].get("eval", {}))
    row = {col: {k: after.get(split, {}).get(k) for k in ("label_acc", "label_f1", "time_s")}
           for split, col in SPLITS.items() if split in after}
    return {"splits": row, "fit_s": record.get("wall_time_s", {}).get("fit"),
            "status": record.get("status", "finished")}


def format_markdown(summary: dict) -> str:
    cols = list(SPLITS.values())
    lines = ["| stage | " + " | ".join(f"{c} acc / F1" for c in cols) + " | fit s | eval s (" + " / ".join(cols)
             + ") |", "|---" * (len(cols) + 3) + "|"]
    for stage, row in summary["stages"].items():
        cells = []
        for c in cols:
            v = row["splits"].get(c, {})
            cells.append("-" if v.get("label_acc") is None else f"{v['label_acc']:.3f} / {v['label_f1']:.3f}")
        times = " / ".join("-" if row["splits"].get(c, {}).get("time_s") is None else
                           f"{row['splits'][c]['time_s']:.0f}" for c in cols)
        name = stage if row["status"] == "finished" else f"{stage} ({row['status']})"
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {row['fit_s'] or 0:.0f} | {times} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="sst2", help="sst2 or yelp (configs/<dataset>/base.yaml)")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated method configs of configs/sst2/")
    parser.add_argument("--mini", type=int, default=None, help="CPU-sized: N rows per forget split, 4N per retain")
    parser.add_argument("--no-quantize", action="store_true", help="train the classifier on a float base (CPU)")
    parser.add_argument("--model", default=None, help="the classifier's base (default: the config's)")
    parser.add_argument("--max-length", type=int, default=None, help="longest row in tokens (mini: 256)")
    parser.add_argument("--classifier-epochs", type=int, default=None)
    parser.add_argument("--unlearn-epochs", type=int, default=None)
    parser.add_argument("--prefix-steps", type=int, default=None,
                        help="optimizer steps of the PI-Prefix stages (mini default 2000; else the config's epochs)")
    parser.add_argument("--out", default=None, help="run folder (default checkpoints/<dataset>_run or _mini)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--markdown", action="store_true")
    args, extra = parser.parse_known_args(argv)
    summary = run_pipeline(args.dataset, [m for m in args.methods.split(",") if m], args.out, args.mini,
                           not args.no_quantize, args.model, args.max_length, args.classifier_epochs,
                           args.unlearn_epochs, extra, args.seed, args.prefix_steps)
    print("\n" + format_markdown(summary))
    return summary


if __name__ == "__main__":
    import sys

    from lit_unlearn.cli import our_error

    try:
        main()
    except Exception as err:  # an error of ours is one line and exit code 2, as train.py's
        ours = our_error(err)
        if ours is None:
            raise
        print(f"lit_unlearn: error: {ours}", file=sys.stderr)
        raise SystemExit(2) from None
