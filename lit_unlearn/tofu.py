"""TOFU end to end: retain-only model -> learn -> unlearn (one or more methods) -> the TOFU table.

    python -m lit_unlearn.tofu --methods npo_gd                      # full setting (forget10): a GPU job
    python -m lit_unlearn.tofu --mini 40 --methods grad_ascent,graddiff,npo_gd,simnpo,idk   # 2-core CPU

Each stage is ``train.py fit`` with ``configs/tofu/base.yaml`` + ``configs/tofu/<stage>.yaml`` (+ ``mini.yaml``),
in ``<out>/<stage>``:

1. ``retain``: fine-tuned on the retain set alone; its evaluation rows (``rows/after``) are the reference of forget
   quality and of the membership-inference privacy leak for every later stage;
2. ``finetune``: fine-tuned on forget + retain: the model to unlearn from;
3. one run per method in ``--methods`` (a file name of ``configs/tofu/``), starting from the learned adapter;
   ``tnpo`` first runs its token selection (``train.py predict`` with ``token_scores.yaml``, in
   ``<out>/token_scores``), ``grun`` trains a gated LoReFT and its row reports the mean gate value per split.

Each model is evaluated once: the learn stage evaluates the base model before training and the learned model
after, so the retain and unlearning stages skip their evaluation before fit (``--eval_before false``; the
unlearning stages' collapse-guard floor, half the retain probability of the learned model, is set from the learn
stage's evaluation).

A stage whose run directory already holds a completed run is reused (an interrupted or killed one is resumed from
its last checkpoint), so adding a method reruns only that method. The table (forget quality, model utility, the
forget set's probability / ROUGE / truth ratio, MIA AUC and privacy leak, wall times) is printed (``--markdown``:
also as Markdown) and written to ``<out>/tofu_summary.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from lit_unlearn import stages
from lit_unlearn.cli import package_versions, write_json_atomic
from lit_unlearn.config_files import config_dir

CONFIG_DIR = config_dir("tofu")
#: per-stage recipe of the mini setting (SmolLM2-135M + LoRA on a CPU), replacing the config's lr and epochs; an
#: unlearning config that sets its own lr or epochs (grun.yaml: LoReFT at 4e-3 for 40 epochs) keeps them unless
#: --unlearn-lr / --unlearn-epochs is given. The unlearning recipe is the originals' 10 epochs with one epoch of warm-up
#: (base.yaml's warmup_ratio 0.1; open-unlearning configs/experiment/unlearn/tofu/default.yaml:44-47) at 1e-4, the
#: LoRA counterpart of their full-model 1e-5 (it was 2e-4 for 5 epochs, which tripped the guard for NPO, GRUN, TNPO)
MINI = {"learn": {"lr": 1.0e-3, "epochs": 8}, "unlearn": {"lr": 1.0e-4, "epochs": 10}}
COLUMNS = (("tofu", "forget_quality", "FQ"), ("tofu", "model_utility", "MU"), ("forget", "prob", "f.prob"),
           ("forget", "rouge", "f.ROUGE"), ("forget", "truth_ratio", "f.TR"), ("retain_eval", "rouge", "r.ROUGE"),
           ("mia", "auc_loss", "AUC loss"), ("mia", "auc_minkpp", "AUC mk++"), ("mia", "privleak_loss", "leak loss"))


def run_stage(stage: str, out: Path, extra: list[str], mini: int | None) -> dict:
    """Run (or reuse, or resume) one stage (``lit_unlearn.stages``); returns its metrics.json."""
    configs = [CONFIG_DIR / "base.yaml", CONFIG_DIR / f"{stage}.yaml"]
    if not configs[1].is_file():
        raise SystemExit(f"lit_unlearn.tofu: no config {configs[1]}; --methods takes file names of configs/tofu/")
    if mini is not None:
        configs.append(CONFIG_DIR / "mini.yaml")
        extra = ["--data.init_args.mini", str(mini), *extra]
    return stages.run_stage(configs, out, stage, extra)


def token_scores(out: Path, extra: list[str], mini: int | None) -> Path:
    """TNPO's token-selection stage (``train.py predict`` with ``configs/tofu/token_scores.yaml``); reused when its
    file exists. Returns the token-mask file."""
    folder = out / "token_scores"
    masks = folder / "token_masks.jsonl"
    if masks.is_file():
        print(f"[lit_unlearn] reusing the token selection {masks}")
        return masks
    args = ["predict", "--config", str(CONFIG_DIR / "base.yaml"), "--config", str(CONFIG_DIR / "token_scores.yaml")]
    if mini is not None:
        args += ["--config", str(CONFIG_DIR / "mini.yaml"), "--data.init_args.mini", str(mini)]
    args += ["--trainer.callbacks.init_args.out_dir", str(folder), "--trainer.logger.init_args.save_dir",
             str(out.parent), "--trainer.logger.init_args.name", out.name, "--trainer.logger.init_args.version",
             "token_scores", "--data.init_args.reference", "null", *extra]
    cli = stages.cli_main(args)
    if cli.exit_code not in (0, None):
        raise SystemExit(cli.exit_code)
    return masks


def run_pipeline(methods: list[str], out: str | Path = "checkpoints/tofu_run", mini: int | None = None,
                 model: str | None = None, learn_lr: float | None = None, learn_epochs: int | None = None,
                 unlearn_lr: float | None = None, unlearn_epochs: int | None = None, seed: int = 0) -> dict:
    """Run the stages (module docstring); returns ``{stage: metrics.json}`` plus the summary rows."""
    out = Path(out).resolve()
    t0 = time.time()
    recipe = {"learn": {"lr": learn_lr, "epochs": learn_epochs},
              "unlearn": {"lr": unlearn_lr, "epochs": unlearn_epochs}}
    if mini is not None:
        recipe = {k: {p: v if v is not None else MINI[k][p] for p, v in ps.items()} for k, ps in recipe.items()}

    def flags(kind: str, stage: str | None = None) -> list[str]:
        f = ["--seed_everything", str(seed)] + (["--model.init_args.model", model] if model else [])
        config = CONFIG_DIR / f"{stage}.yaml" if stage is not None else None
        own_lr = unlearn_lr is None and config is not None and stages.sets(config, "model.init_args.lr")
        own_epochs = unlearn_epochs is None and config is not None and stages.sets(config, "trainer.max_epochs")
        if recipe[kind]["lr"] is not None and not own_lr:
            f += ["--model.init_args.lr", str(recipe[kind]["lr"])]
        if recipe[kind]["epochs"] is not None and not own_epochs:
            f += ["--trainer.max_epochs", str(recipe[kind]["epochs"])]
        return f

    reference = ["--data.init_args.reference", str(out / "retain" / "rows" / "after")]
    # the retain stage's "before" is the base model, which the learn stage evaluates anyway
    records = {"retain": run_stage("retain", out, flags("learn") + ["--eval_before", "false"], mini)}
    records["finetune"] = run_stage("finetune", out, flags("learn") + reference, mini)
    # an unlearning stage's "before" is the learned model the learn stage evaluated after training: not evaluated
    # again; the collapse guard's floor (half the retain probability before unlearning) is set from that evaluation
    learned = records["finetune"]["metrics"]["after"]
    floor = ["--guard.relative", "false", "--guard.retain_floor", str(0.5 * learned["retain_eval"]["prob"])]
    learned_adapter = ["--model.init_args.init_adapter", str(out / "finetune" / "adapter")]
    for method in methods:
        extra = []
        if method == "tnpo":  # its token selection first: a predict stage on the learned model
            masks = token_scores(out, flags("unlearn") + learned_adapter, mini)
            extra = ["--data.init_args.token_masks", json.dumps({"forget": str(masks)})]
        records[method] = run_stage(method, out, flags("unlearn", method) + reference + floor + extra + [
            "--eval_before", "false", *learned_adapter], mini)
    summary = {"stages": {name: summarize(rec) for name, rec in records.items()}, "mini": mini,
               "wall_time_s": round(time.time() - t0, 1), "versions": package_versions()}
    write_json_atomic(out / "tofu_summary.json", summary)
    return summary


def summarize(record: dict) -> dict:
    """One table row: the evaluation after fit; for a run the collapse guard stopped, also the evaluation that
    tripped it (the collapsed model, before the guard restored the last good adapter)."""
    after = record["metrics"].get("after", {})
    row = {label: after.get(split, {}).get(key) for split, key, label in COLUMNS}
    row["status"] = record.get("status", "finished")
    row["trainable_params"] = record["metrics"].get("trainable_params")
    row["measured"] = record["metrics"].get("measured") or {}  # what the method measured (RMU's scale, ...)
    gates = {split: v["gate_mean"] for split, v in after.items() if "gate_mean" in v}
    if gates:
        row["gate"] = gates  # GRUN: the mean gate value per split (open on forget, shut elsewhere)
    row["wall_time_s"] = record.get("wall_time_s", {})
    events = record["metrics"].get("collapse_events") or []
    if events and events[-1].get("evaluation"):
        tripped = events[-1]["evaluation"]
        row["collapsed"] = {label: tripped.get(f"val/{split}/{key}") for split, key, label in COLUMNS}
        row["collapsed"]["step"] = events[-1]["step"]
    return row


def format_summary(summary: dict) -> str:
    labels = [label for _, _, label in COLUMNS]

    def cells(values: dict) -> str:
        return "".join(f"{'-':>11}" if values.get(label) is None else f"{values[label]:>11.3g}" if label == "FQ"
                       else f"{values[label]:>11.3f}" for label in labels)

    lines = [f"{'stage':<12}" + "".join(f"{label:>11}" for label in labels) + f"{'fit s':>8}{'eval s':>8}"]
    for stage, row in summary["stages"].items():
        wall = row["wall_time_s"]
        lines.append(f"{stage:<12}{cells(row)}{wall.get('fit', 0):>8.0f}{wall.get('eval_after', 0):>8.0f}"
                     + ("" if row["status"] == "finished" else f"  ({row['status']})"))
        if "collapsed" in row:
            lines.append(f"{'  tripped':<12}{cells(row['collapsed'])}  (step {row['collapsed']['step']}, before "
                         "the guard restored the last good adapter)")
    return "\n".join(lines)


def format_markdown(summary: dict) -> str:
    """The summary as a Markdown table (docs/results/tofu.md): one row per stage, and for a run the collapse guard
    stopped, a row with what the collapsed model scored when the guard tripped."""
    labels = [label for _, _, label in COLUMNS]

    def cell(label: str, value) -> str:
        return "-" if value is None else f"{value:.3g}" if label == "FQ" else f"{value:.3f}"

    lines = ["| stage | " + " | ".join(labels) + " | fit s | eval s |", "|---" * (len(labels) + 3) + "|"]
    for stage, row in summary["stages"].items():
        wall = row["wall_time_s"]
        name = stage if row["status"] == "finished" else f"{stage} ({row['status']}: restored)"
        lines.append(f"| {name} | " + " | ".join(cell(k, row.get(k)) for k in labels)
                     + f" | {wall.get('fit', 0):.0f} | {wall.get('eval_after', 0):.0f} |")
        if "collapsed" in row:
            tripped = row["collapsed"]
            lines.append(f"| {stage} at the trip (step {tripped['step']}) | "
                         + " | ".join(cell(k, tripped.get(k)) for k in labels) + " | | |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", default="npo_gd",
                        help="comma-separated unlearning configs of configs/tofu/ (grad_ascent, graddiff, npo, "
                             "npo_gd, npo_kl, simnpo, idk, rmu)")
    parser.add_argument("--mini", type=int, default=None, help="the CPU-sized setting with N retain rows (e.g. 40)")
    parser.add_argument("--out", default=None, help="run folder (default checkpoints/tofu_run, or tofu_mini)")
    parser.add_argument("--model", default=None, help="base model (default: the configs' SmolLM2-135M-Instruct)")
    parser.add_argument("--learn-lr", type=float, default=None, help="lr of the retain and learn stages")
    parser.add_argument("--learn-epochs", type=int, default=None, help="epochs of the retain and learn stages")
    parser.add_argument("--unlearn-lr", type=float, default=None, help="lr of the unlearning stages")
    parser.add_argument("--unlearn-epochs", type=int, default=None, help="epochs of the unlearning stages")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--markdown", action="store_true", help="also print the table as Markdown")
    args = parser.parse_args(argv)
    out = args.out or ("checkpoints/tofu_mini" if args.mini else "checkpoints/tofu_run")
    summary = run_pipeline([m for m in args.methods.split(",") if m], out, args.mini, args.model, args.learn_lr,
                           args.learn_epochs, args.unlearn_lr, args.unlearn_epochs, args.seed)
    print("\n" + format_summary(summary))
    if args.markdown:
        print("\n" + format_markdown(summary))
    print(f"[lit_unlearn] tofu: {Path(out) / 'tofu_summary.json'}")
    return summary


if __name__ == "__main__":
    main()
