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

The stages run on ``lit_unlearn.pipelines.runner`` (with ``--mini``: ``deeb_roger/mini`` and the recipe
``lit_unlearn/pipelines/recipes/deeb_roger_mini.yaml``). The table (printed as Markdown; ``<out>/summary.json``)
gives per model the forget and retain MCQ accuracy (plain and calibrated) and, after RTT, the best held-out accuracy
over the sweep - with the share of the learned model's forget accuracy it recovers. Finished stages are reused, so
adding a method reruns only that method and its attack.
"""

from __future__ import annotations

from pathlib import Path

from lit_unlearn.config_files import method_configs
from lit_unlearn.pipelines.audit import audit_precisions, audit_recovery, run_audit
from lit_unlearn.pipelines.runner import Column, Runner, Stage, format_markdown as markdown, given, pipeline_parser
from lit_unlearn.rtt import add_attack_args, parse_floats, run_rtt
from lit_unlearn.sweep.setting import SweepSetting

RECIPE = "deeb_roger_mini"
COLUMNS = (Column("forget_mcq", "mcq_acc", "forget acc", name="forget"),
           Column("forget_mcq", "mcq_acc_calibrated", "forget cal.", name="forget_cal"),
           Column("retain_mcq", "mcq_acc", "retain acc", name="retain"),
           Column("retain_mcq", "mcq_acc_calibrated", "retain cal.", name="retain_cal"),
           Column(None, "best", "V acc after RTT", name="rtt_best"),
           Column(None, "retain_at_best", "retain after RTT", name="rtt_retain"),
           Column(None, "recovered", "recovered", name="recovered"))


def stages(methods: list[str]) -> list[Stage]:
    return [Stage("learn", ("deeb_roger/base", "deeb_roger/learn"), kind="learn"),
            *(Stage(m, ("deeb_roger/base", *method_configs("deeb_roger", m)), {"eval_before": False}, kind="unlearn",
                    needs={"model.init_args.init_adapter": "learn:adapter"},
                    floor=("learn", "retain_mcq", "mcq_acc", 0.5)) for m in methods)]


def make_runner(out: str | Path, mini: int | None = None, model: str | None = None, seed: int = 0,
                extra: dict | None = None, flags: dict | None = None, dry_run: bool = False) -> Runner:
    """The runner of this pipeline's setting (``mini``: questions per split, ``deeb_roger/mini`` and the mini
    recipe); ``extra``: dotted values every stage gets."""
    common = {"seed_everything": seed, **given({"model.init_args.model": model,
                                                "data.init_args.questions_per_split": mini or None}), **(extra or {})}
    return Runner(out, RECIPE if mini else None, flags, common, ("deeb_roger/mini",) if mini else (), dry_run)


#: the sweep's view of this pipeline (lit_unlearn.sweep): forget MCQ accuracy as low as it goes while retain MCQ
#: accuracy keeps 90% of the learned model's; MCQ accuracy is teacher-forced already, so the proxy is the evaluation
#: itself, every epoch
def rtt_attack(runner: Runner, adapter: str | Path, out: str | Path, mini: int | None = None,
               model: str | None = None, seed: int = 0, lrs: tuple[float, ...] = (1e-5, 3e-5, 1e-4),
               epochs: int = 4) -> dict:
    """RTT on one unlearned adapter (over the learned one), with the mini setting's sweep of
    docs/results/relearning.md: the best held-out accuracy, the retain accuracy there, and the share of the learned
    model's forget accuracy it recovers."""
    best = run_rtt([str(runner.out / "learn" / "adapter"), str(adapter)], out, model, lrs, epochs, mini=mini,
                   seed=seed)["overall"]
    learned = runner.records["learn"]["metrics"]["after"]["forget_mcq"]["mcq_acc"]
    return {"rtt_best": best["best"], "rtt_retain_at_best": best["retain_at_best"],
            "rtt_recovered": best["best"] / learned}


SWEEP = SweepSetting(benchmark="deeb_roger", runner=make_runner, stages=stages, reference="learn",
                     objectives=("forget_mcq/mcq_acc:min",), constraints=("retain_mcq/mcq_acc >= 0.9 * ref",),
                     proxy={"trainer.check_val_every_n_epoch": 1}, out="checkpoints/deeb_roger_{mini}",
                     attack=rtt_attack)


def run_pipeline(methods: list[str], out: str | Path = "checkpoints/deeb_roger_run", mini: int | None = None,
                 model: str | None = None, rtt_lrs: tuple[float, ...] = (), rtt_epochs: int = 6, n_folds: int = 2,
                 unlearn_lr: float | None = None, unlearn_epochs: int | None = None, seed: int = 0,
                 control: bool = True, dry_run: bool = False, audit: tuple[str, ...] = ()) -> dict:
    """The stages (module docstring), then RTT on each model; with ``audit`` (precisions), the re-quantization audit
    of each unlearned model and of the learned one (:mod:`lit_unlearn.pipelines.audit`); returns the summary."""
    flags = {"unlearn": given({"model.init_args.lr": unlearn_lr, "trainer.max_epochs": unlearn_epochs})}
    runner = make_runner(out, mini, model, seed, flags=flags, dry_run=dry_run)
    records = runner.run(stages(methods))
    if dry_run:
        return {"stages": {}}
    if audit:
        run_audit(runner, "learn", methods, audit, model)
    summary = runner.summary(COLUMNS, mini=mini, rtt={"lrs": list(rtt_lrs), "epochs": rtt_epochs, "folds": n_folds},
                             audit=list(audit))
    learned = records["learn"]["metrics"]["after"]["forget_mcq"]["mcq_acc"]
    if audit:  # the share of the forgotten forget accuracy each precision brings back (against full precision)
        summary["audit_recovery"] = audit_recovery(summary["stages"], "learn", methods, audit, ("forget",))
    learn_adapter = str(runner.out / "learn" / "adapter")
    for name in ((["learn"] if control else []) + methods) if rtt_lrs else []:
        adapters = [learn_adapter, *([str(runner.out / name / "adapter")] if name != "learn" else [])]
        best = run_rtt(adapters, runner.out / f"rtt_{name}", model, rtt_lrs, rtt_epochs, n_folds, mini=mini,
                       seed=seed)["overall"]
        summary["stages"][name].update(rtt_best=best["best"], rtt_retain=best["retain_at_best"],
                                       recovered=best["best"] / learned)
    runner.write(summary)
    return summary


def format_markdown(summary: dict) -> str:
    return markdown(summary, COLUMNS, {"learn": "learned (before unlearning)"})


def main(argv: list[str] | None = None) -> dict:
    parser = pipeline_parser(__doc__, "checkpoints/deeb_roger", "gd,ria,rmu,npo", kinds=("unlearn",))
    parser.add_argument("--no-control", action="store_true", help="skip RTT on the learned model")
    parser.add_argument("--audit", default="", help="re-quantization audit at these precisions (int8,nf4): each "
                        "unlearned model merged and evaluated quantized, the learned model as the control")
    add_attack_args(parser)
    args = parser.parse_args(argv)
    out = args.out or ("checkpoints/deeb_roger_mini" if args.mini else "checkpoints/deeb_roger_run")
    summary = run_pipeline([m for m in args.methods.split(",") if m], out, args.mini, args.model,
                           parse_floats(args.rtt_lrs, "--rtt-lrs"), args.rtt_epochs, args.folds, args.unlearn_lr,
                           args.unlearn_epochs, args.seed, not args.no_control, args.dry_run,
                           audit_precisions(args.audit))
    if not args.dry_run:
        print("\n" + format_markdown(summary) + f"\n[lit_unlearn] relearning: {Path(out) / 'summary.json'}")
    return summary


if __name__ == "__main__":
    from lit_unlearn.__main__ import run_module

    run_module(main)
