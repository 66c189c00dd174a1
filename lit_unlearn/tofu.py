"""TOFU end to end: retain-only model -> learn -> unlearn (one or more methods) -> the TOFU table.

    python -m lit_unlearn.tofu --methods npo_gd                      # full setting (forget10): a GPU job
    python -m lit_unlearn.tofu --mini 40 --methods grad_ascent,graddiff,npo_gd,simnpo,idk   # 2-core CPU

Stages (``lit_unlearn.pipelines.runner`` runs them, in ``<out>/<stage>``; configs ``tofu/base`` + ``tofu/<stage>``,
+ ``tofu/mini`` and the recipe ``lit_unlearn/pipelines/recipes/tofu_mini.yaml`` with ``--mini``): ``retain`` (the
retain set alone: its evaluation rows are the reference of forget quality and of the MIA privacy leak), ``finetune``
(forget + retain: the model to unlearn from), then one stage per ``--methods`` entry from the learned adapter, its
collapse-guard floor half the learned model's retain probability; a method's own prerequisite (TNPO's token
selection) runs first. Each model is evaluated once (the learn stage evaluates the base before it). The table is
printed and written to ``<out>/summary.json``. ``--audit int8,nf4`` adds the re-quantization audit
(``lit_unlearn.pipelines.audit``): each unlearned model and the learned one merged and evaluated quantized, with the
share of the change in forget probability, truth ratio and ROUGE each precision undoes (``audit_recovery``).
"""

from __future__ import annotations

from pathlib import Path

from lit_unlearn.config_files import method_configs
from lit_unlearn.pipelines.audit import audit_precisions, audit_recovery, run_audit
from lit_unlearn.pipelines.runner import Column, Runner, Stage, format_markdown, format_table, given, pipeline_parser
from lit_unlearn.sweep.setting import SweepSetting

RECIPE = "tofu_mini"
COLUMNS = (Column("tofu", "forget_quality", "FQ", ".3g"), Column("tofu", "model_utility", "MU"),
           Column("tofu", "model_utility_tf", "MU tf"),
           Column("forget", "prob", "f.prob"), Column("forget", "rouge", "f.ROUGE"),
           Column("forget", "truth_ratio", "f.TR"), Column("retain_eval", "rouge", "r.ROUGE"),
           Column("mia", "auc_loss", "AUC loss"), Column("mia", "auc_minkpp", "AUC mk++"),
           Column("mia", "privleak_loss", "leak loss"))
#: the audit's measures of forget knowledge, each read as a recovery (the share of unlearning's change undone, whichever
#: way a measure points: the truth ratio rises as knowledge goes)
AUDITED = ("f.prob", "f.TR", "f.ROUGE")
PER_SPLIT = {"gate": "gate_mean"}  # GRUN: the mean gate value per split (open on forget, shut elsewhere)


def stages(methods: list[str]) -> list[Stage]:
    reference = {"data.init_args.reference": "retain:rows"}
    unlearn = [Stage(m, ("tofu/base", *method_configs("tofu", m)), {"eval_before": False}, kind="unlearn",
                     needs={**reference, "model.init_args.init_adapter": "finetune:adapter"},
                     floor=("finetune", "retain_eval", "prob", 0.5)) for m in methods]
    return [Stage("retain", ("tofu/base", "tofu/retain"), {"eval_before": False}, kind="learn"),
            Stage("finetune", ("tofu/base", "tofu/finetune"), kind="learn", needs=reference), *unlearn]


def make_runner(out: str | Path, mini: int | None = None, model: str | None = None, seed: int = 0,
                extra: dict | None = None, flags: dict | None = None, dry_run: bool = False) -> Runner:
    """The runner of this pipeline's setting (``mini``: ``tofu/mini`` and the mini recipe); ``extra``: dotted values
    every stage gets."""
    common = {"seed_everything": seed, **given({"model.init_args.model": model, "data.init_args.mini": mini}),
              **(extra or {})}
    return Runner(out, RECIPE if mini is not None else None, flags, common,
                  ("tofu/mini",) if mini is not None else (), dry_run)


def run_pipeline(methods: list[str], out: str | Path = "checkpoints/tofu_run", mini: int | None = None,
                 model: str | None = None, learn_lr: float | None = None, learn_epochs: int | None = None,
                 unlearn_lr: float | None = None, unlearn_epochs: int | None = None, seed: int = 0,
                 dry_run: bool = False, audit: tuple[str, ...] = (), audit_tf: bool = False) -> dict:
    """The stages (module docstring); with ``audit`` (precisions), the re-quantization audit of each unlearned model
    and of the learned one (:mod:`lit_unlearn.pipelines.audit`; ``audit_tf``: with the teacher-forced evaluators
    only); returns the summary."""
    flags = {kind: given({"model.init_args.lr": lr, "trainer.max_epochs": epochs})
             for kind, lr, epochs in (("learn", learn_lr, learn_epochs), ("unlearn", unlearn_lr, unlearn_epochs))}
    runner = make_runner(out, mini, model, seed, flags=flags, dry_run=dry_run)
    runner.run(stages(methods))
    suffix = "_tf" if audit_tf else ""  # <stage>_<precision>_tf: a teacher-forced audit never reuses a full one
    if audit and not dry_run:
        run_audit(runner, "finetune", methods, audit, model,
                  {"data.init_args.evaluators": PROXY_EVALUATORS} if audit_tf else None, suffix)
    summary = runner.summary(COLUMNS, PER_SPLIT, write=False, mini=mini, audit=list(audit), audit_tf=audit_tf)
    if audit and not dry_run:  # the share of what unlearning removed that each precision brings back
        summary["audit_recovery"] = audit_recovery(summary["stages"], "finetune", methods, audit, AUDITED, suffix)
    return runner.write(summary)


#: the sweep's view of this pipeline (lit_unlearn.sweep): forget quality as high as it goes while the teacher-forced
#: model utility keeps 90% of the learned model's; trials evaluate teacher-forced only (no generation, no MIA), every
#: epoch; the frontier's points get the full evaluation afterwards
PROXY_EVALUATORS = {**{split: [{"class_path": "tofu", "init_args": {"generate": False}}]
                       for split in ("forget", "retain_eval", "real_authors", "world_facts")}, "holdout": []}
SWEEP = SweepSetting(benchmark="tofu", runner=make_runner, stages=stages, reference="finetune",
                     objectives=("tofu/forget_quality:max",), constraints=("tofu/model_utility_tf >= 0.9 * ref",),
                     proxy={"data.init_args.evaluators": PROXY_EVALUATORS, "trainer.check_val_every_n_epoch": 1},
                     out="checkpoints/tofu_{mini}")


def format_summary(summary: dict) -> str:
    return format_table(summary, COLUMNS)


def main(argv: list[str] | None = None) -> dict:
    parser = pipeline_parser(__doc__, "checkpoints/tofu", "npo_gd", kinds=("learn", "unlearn"))
    parser.add_argument("--audit", default="", help="re-quantization audit at these precisions (int8,nf4): each "
                        "unlearned model merged and evaluated quantized, the learned model as the control")
    parser.add_argument("--audit-tf", action="store_true", help="the audit with the teacher-forced evaluators only "
                        "(no generation, no MIA): bitsandbytes' int8 generation takes seconds per token on a CPU")
    args = parser.parse_args(argv)
    out = args.out or ("checkpoints/tofu_mini" if args.mini else "checkpoints/tofu_run")
    summary = run_pipeline([m for m in args.methods.split(",") if m], out, args.mini, args.model, args.learn_lr,
                           args.learn_epochs, args.unlearn_lr, args.unlearn_epochs, args.seed, args.dry_run,
                           audit_precisions(args.audit), args.audit_tf)
    if not args.dry_run:
        print("\n" + format_summary(summary) + ("\n\n" + format_markdown(summary, COLUMNS) if args.markdown else ""))
        print(f"[lit_unlearn] tofu: {Path(out) / 'summary.json'}")
    return summary


if __name__ == "__main__":
    from lit_unlearn.__main__ import run_module

    run_module(main)
