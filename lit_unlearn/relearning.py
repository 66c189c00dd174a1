"""Is it gone or hidden? The random-birthdays pipeline of Deeb & Roger end to end: learn -> unlearn -> RTT -> table.

    python -m lit_unlearn.relearning --methods gd,ria,rmu,npo            # full setting (157 questions per split)
    python -m lit_unlearn.relearning --mini 16 --methods gd,ria,rmu,npo  # 2-core CPU (docs/results/relearning.md)

Stages, each ``train.py fit`` with ``configs/deeb_roger/base.yaml`` + the stage's file (+ ``mini.yaml``), in
``<out>/<stage>``:

1. ``learn``: the model is taught the questions of all ten splits (``learn.yaml``);
2. one unlearning run per method of ``--methods`` (a file name of ``configs/deeb_roger/``) on splits 0-4, keeping
   5-9, from the learned adapter; the collapse guard's floor is half the learned model's retain MCQ accuracy;
3. RTT (``lit_unlearn.rtt``) on each unlearned model (``<out>/rtt_<method>``) and, as the control, on the learned
   model before unlearning (``<out>/rtt_learn``).

The table (printed; ``--markdown`` also as Markdown; ``<out>/relearning_summary.json``) gives per model the forget
and retain MCQ accuracy (plain and calibrated) and, after RTT, the best held-out accuracy over the sweep - with
the share of the learned model's forget accuracy it recovers. Finished stages are reused, so adding a method reruns
only that method and its attack.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from lit_unlearn import stages
from lit_unlearn.cli import package_versions, write_json_atomic
from lit_unlearn.rtt import CONFIG_DIR, RTTError, add_attack_args, parse_floats, run_rtt

#: the CPU recipe of the mini setting (SmolLM2-135M + LoRA): lr and epochs per kind of stage. A method file that
#: sets its own lr or epochs (GRUN's LoReFT: 4e-3, 4 epochs) keeps them; --unlearn-lr / --unlearn-epochs override
#: every method.
MINI = {"learn": {"lr": 1.0e-3, "epochs": 12}, "unlearn": {"lr": 1.0e-4, "epochs": 3}}


def run_pipeline(methods: list[str], out: str | Path = "checkpoints/deeb_roger_run", mini: int | None = None,
                 model: str | None = None, rtt_lrs: tuple[float, ...] = (), rtt_epochs: int = 6, n_folds: int = 2,
                 unlearn_lr: float | None = None, unlearn_epochs: int | None = None, seed: int = 0,
                 control: bool = True) -> dict:
    """Run the stages (module docstring); returns the summary."""
    out = Path(out).resolve()
    t0 = time.time()
    for method in methods:
        if not (CONFIG_DIR / f"{method}.yaml").is_file() or method in ("base", "learn", "mini", "rtt"):
            raise RTTError(f"--methods: no unlearning config configs/deeb_roger/{method}.yaml")

    def configs(stage: str) -> list[Path]:
        return [CONFIG_DIR / "base.yaml", CONFIG_DIR / f"{stage}.yaml"] + ([CONFIG_DIR / "mini.yaml"] if mini else [])

    def flags(kind: str, lr: float | None = None, epochs: int | None = None, stage: str = "learn") -> list[str]:
        f = ["--seed_everything", str(seed)] + (["--model.init_args.model", model] if model else [])
        f += ["--data.init_args.questions_per_split", str(mini)] if mini else []
        own_lr = kind == "unlearn" and stages.sets(CONFIG_DIR / f"{stage}.yaml", "model.init_args.lr")
        own_epochs = kind == "unlearn" and stages.sets(CONFIG_DIR / f"{stage}.yaml", "trainer.max_epochs")
        lr = lr if lr is not None else MINI[kind]["lr"] if mini and not own_lr else None
        epochs = epochs if epochs is not None else MINI[kind]["epochs"] if mini and not own_epochs else None
        f += ["--model.init_args.lr", str(lr)] if lr is not None else []
        return f + (["--trainer.max_epochs", str(epochs)] if epochs is not None else [])

    learn_adapter = str(out / "learn" / "adapter")
    records = {"learn": stages.run_stage(configs("learn"), out, "learn", flags("learn"))}
    learned = records["learn"]["metrics"]["after"]
    floor = ["--guard.relative", "false", "--guard.retain_floor", str(0.5 * learned["retain_mcq"]["mcq_acc"])]
    for method in methods:
        unlearn = flags("unlearn", unlearn_lr, unlearn_epochs, method)
        records[method] = stages.run_stage(configs(method), out, method, unlearn + floor + ["--eval_before", "false",
                                                      "--model.init_args.init_adapter", learn_adapter])
    attacks = {}
    for name in (["learn"] if control else []) + methods:
        adapters = [learn_adapter] + ([str(out / name / "adapter")] if name != "learn" else [])
        attacks[name] = run_rtt(adapters, out / f"rtt_{name}", model, rtt_lrs, rtt_epochs, n_folds, mini=mini,
                                seed=seed)
    summary = {"stages": {name: summarize(rec, attacks.get(name), learned) for name, rec in records.items()},
               "mini": mini, "rtt": {"lrs": list(rtt_lrs), "epochs": rtt_epochs, "folds": n_folds},
               "wall_time_s": round(time.time() - t0, 1), "versions": package_versions()}
    write_json_atomic(out / "relearning_summary.json", summary)
    return summary


def summarize(record: dict, attack: dict | None, learned: dict) -> dict:
    """One table row: MCQ accuracy after the stage, and after RTT on it."""
    after = record["metrics"]["after"]
    row = {"forget": after["forget_mcq"]["mcq_acc"], "forget_cal": after["forget_mcq"]["mcq_acc_calibrated"],
           "retain": after["retain_mcq"]["mcq_acc"], "retain_cal": after["retain_mcq"]["mcq_acc_calibrated"],
           "status": record.get("status", "finished"), "fit_s": record.get("wall_time_s", {}).get("fit"),
           "measured": record["metrics"].get("measured") or {}}  # e.g. RMU's activation norm, forget MSE before/after
    events = record["metrics"].get("collapse_events") or []
    if events and events[-1].get("evaluation"):  # what the collapsed model scored when the guard tripped
        tripped = events[-1]["evaluation"]
        row["tripped"] = {"step": events[-1]["step"], **{
            key: tripped.get(f"val/{split}_mcq/mcq_acc{suffix}") for key, split, suffix in (
                ("forget", "forget", ""), ("forget_cal", "forget", "_calibrated"), ("retain", "retain", ""),
                ("retain_cal", "retain", "_calibrated"))}}
    if attack is not None:
        o = attack["overall"]
        row.update(rtt_best=o["best"], rtt_retain=o["retain_at_best"],
                   recovered=o["best"] / learned["forget_mcq"]["mcq_acc"])
    return row


COLUMNS = (("forget", "forget acc"), ("forget_cal", "forget cal."), ("retain", "retain acc"),
           ("retain_cal", "retain cal."), ("rtt_best", "V acc after RTT"), ("rtt_retain", "retain after RTT"),
           ("recovered", "recovered"))


def format_markdown(summary: dict) -> str:
    lines = ["| model | " + " | ".join(label for _, label in COLUMNS) + " | fit s |",
             "|---" * (len(COLUMNS) + 2) + "|"]
    for stage, row in summary["stages"].items():
        name = "learned (before unlearning)" if stage == "learn" else stage
        name += "" if row["status"] == "finished" else f" ({row['status']}: restored)"
        cells = ["-" if row.get(k) is None else f"{row[k]:.3f}" for k, _ in COLUMNS]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {row['fit_s'] or 0:.0f} |")
        if "tripped" in row:
            tripped = row["tripped"]
            cells = ["-" if tripped.get(k) is None else f"{tripped[k]:.3f}" for k, _ in COLUMNS]
            lines.append(f"| {stage} at the trip (step {tripped['step']}) | " + " | ".join(cells) + " | |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", default="gd,ria,rmu,npo",
                        help="comma-separated unlearning configs of configs/deeb_roger/ (gd, ria, fwf, npo, rmu)")
    parser.add_argument("--mini", type=int, default=None, help="the CPU-sized setting: N questions per split")
    parser.add_argument("--out", default=None, help="run folder (default checkpoints/deeb_roger_run, or _mini)")
    parser.add_argument("--model", default=None, help="base model (default: the configs' SmolLM2-135M-Instruct)")
    parser.add_argument("--unlearn-lr", type=float, default=None)
    parser.add_argument("--unlearn-epochs", type=int, default=None)
    parser.add_argument("--no-control", action="store_true", help="skip RTT on the learned model")
    parser.add_argument("--seed", type=int, default=0)
    add_attack_args(parser)
    args = parser.parse_args(argv)
    out = args.out or ("checkpoints/deeb_roger_mini" if args.mini else "checkpoints/deeb_roger_run")
    try:
        summary = run_pipeline([m for m in args.methods.split(",") if m], out, args.mini, args.model,
                               parse_floats(args.rtt_lrs, "--rtt-lrs"), args.rtt_epochs, args.folds,
                               args.unlearn_lr, args.unlearn_epochs, args.seed, not args.no_control)
    except RTTError as err:
        raise SystemExit(f"lit_unlearn.relearning: error: {err}") from None
    print("\n" + format_markdown(summary))
    print(f"[lit_unlearn] relearning: {Path(out) / 'relearning_summary.json'}")
    return summary


if __name__ == "__main__":
    main()
