"""Classification unlearning end to end (SPUL / PI-Prefix, docs/classification.md): target classifier -> baselines ->
soft prompt -> PI-Prefix -> the table of label accuracy and weighted F1 on the four splits.

    python -m lit_unlearn.classification --dataset sst2                        # the paper's sizes: a GPU job
    python -m lit_unlearn.classification --dataset sst2 --mini 64 --no-quantize  # 2-core CPU, subsampled

Stages (``lit_unlearn.pipelines.runner``, in ``<out>/<stage>``; configs ``<dataset>/base`` + ``sst2/<stage>``, the
method files serving both datasets): ``classifier`` (``finetune_qlora``: the QLoRA classifier on train_retain +
train_forget, merged into ``<out>/classifier/merged``: the target), then one stage per ``--methods`` entry on the
target, its guard floor half the target's retain accuracy unless its config switches the floor off. PI-Prefix
declares its trained reading on its class: ``<method>_trained`` evaluates the exported ``adapter_trained/`` on the
target right after the stage. ``--mini N`` subsamples every split to a seeded N rows (train_retain and test_retain
to 4N; longer rows skipped, ``--max-length``) with the recipe ``lit_unlearn/pipelines/recipes/classification_mini.yaml``
(PI-Prefix: 2,000 optimizer steps). Any other ``--key value`` flag goes to every stage. The table is printed and
written to ``<out>/summary.json``.
"""

from __future__ import annotations

from pathlib import Path

from lit_unlearn.config_files import method_configs, shipped_configs
from lit_unlearn.core.errors import ConfigError
from lit_unlearn.pipelines.runner import Column, Runner, Stage, argv_values, format_markdown, pipeline_parser
from lit_unlearn.sweep.setting import SweepSetting

METHODS = ("grad_ascent", "random_label", "grad_ascent_descent", "grad_ascent_kl", "negation_lora", "spul",
           "pi_prefix", "pi_prefix_relabel")
#: split of the data module -> its name in the paper's tables
SPLITS = {"forget": "train_forget", "retain": "train_retain", "test_forget": "test_forget",
          "test_retain": "test_retain"}
COLUMNS = tuple(Column(split, key, f"{name} {label}") for split, name in SPLITS.items()
                for key, label in (("label_acc", "acc"), ("label_f1", "F1")))


def stages(dataset: str, methods: list[str]) -> list[Stage]:
    return [Stage("classifier", (f"{dataset}/base", "sst2/finetune_qlora"), kind="learn"),
            *(Stage(m, (f"{dataset}/base", *method_configs("sst2", m)), {"eval_before": False}, kind="unlearn",
                    needs={"model.init_args.model": "classifier:merged"}, floor=("classifier", "retain", "acc", 0.5))
              for m in methods)]


def make_runner(dataset: str, out: str | Path, mini: int | None = None, quantize: bool = True, model: str | None = None,
                max_length: int | None = None, classifier_epochs: int | None = None,
                unlearn_epochs: int | None = None, extra: dict | None = None, seed: int = 0,
                prefix_steps: int | None = None, dry_run: bool = False) -> Runner:
    """The runner of this pipeline's setting (module docstring)."""
    if f"{dataset}/base" not in shipped_configs() or dataset == "methods":
        raise ConfigError(f"--dataset {dataset}: not a classification benchmark (sst2, yelp)")
    rows = {"forget": mini, "retain": 4 * mini, "test_forget": mini, "test_retain": 4 * mini} if mini else None
    common = {"seed_everything": seed, **({"data.init_args.max_rows": rows, "data.init_args.too_long": "skip"}
                                          if mini else {}),
              **({"data.init_args.max_length": max_length or 256} if mini or max_length else {}),
              **(extra or {})}
    classifier = {**({"model.init_args.model": model} if model else {}),
                  **({} if quantize else {"model.init_args.quantize": None, "model.init_args.dtype": "float32"})}
    flags = {"learn": {"trainer.max_epochs": classifier_epochs} if classifier_epochs is not None else {},
             "unlearn": {"trainer.max_epochs": unlearn_epochs} if unlearn_epochs is not None else {},
             "classifier": classifier,
             "PIPrefix": {"trainer.max_steps": prefix_steps, "trainer.max_epochs": -1,
                          "trainer.check_val_every_n_epoch": 1000000} if prefix_steps is not None else {}}
    return Runner(out or f"checkpoints/{dataset}_{'mini' if mini else 'run'}",
                  "classification_mini" if mini else None, flags, common, dry_run=dry_run)


def run_pipeline(dataset: str = "sst2", methods: list[str] | tuple[str, ...] = METHODS, out: str | Path | None = None,
                 mini: int | None = None, quantize: bool = True, model: str | None = None,
                 max_length: int | None = None, classifier_epochs: int | None = None,
                 unlearn_epochs: int | None = None, extra: list[str] | None = None, seed: int = 0,
                 prefix_steps: int | None = None, dry_run: bool = False) -> dict:
    """Run the stages (module docstring); returns the summary."""
    runner = make_runner(dataset, out, mini, quantize, model, max_length, classifier_epochs, unlearn_epochs,
                         argv_values(extra or []), seed, prefix_steps, dry_run)
    runner.run(stages(dataset, list(methods)))
    return runner.summary(COLUMNS, dataset=dataset, mini=mini, quantized_classifier=quantize)


def sweep_runner(out: str | Path, mini: int | None = None, model: str | None = None, seed: int = 0,
                 extra: dict | None = None) -> Runner:
    """SST-2 for the sweep: the mini setting's classifier is trained on a float base (the CPU recipe)."""
    return make_runner("sst2", out, mini, quantize=not mini, model=model, extra=extra, seed=seed)


#: the sweep's view of this pipeline (lit_unlearn.sweep), on SST-2: train_forget accuracy as low as it goes while
#: train_retain accuracy stays within 3 points of the target classifier's (the goal of docs/results/classification.md);
#: label accuracy is teacher-forced already, evaluated every epoch
SWEEP = SweepSetting(benchmark="sst2", runner=sweep_runner, stages=lambda methods: stages("sst2", methods),
                     reference="classifier", objectives=("forget/label_acc:min",),
                     constraints=("retain/label_acc >= ref - 0.03",),
                     proxy={"trainer.check_val_every_n_epoch": 1}, out="checkpoints/sst2_{mini}")


def main(argv: list[str] | None = None) -> dict:
    parser = pipeline_parser(__doc__, "checkpoints/<dataset>", ",".join(METHODS))
    parser.add_argument("--dataset", default="sst2", help="sst2 or yelp (configs/<dataset>/base.yaml)")
    parser.add_argument("--no-quantize", action="store_true", help="train the classifier on a float base (CPU)")
    parser.add_argument("--max-length", type=int, default=None, help="longest row in tokens (mini: 256)")
    parser.add_argument("--classifier-epochs", type=int, default=None)
    parser.add_argument("--unlearn-epochs", type=int, default=None)
    parser.add_argument("--prefix-steps", type=int, default=None,
                        help="optimizer steps of the PI-Prefix stages (mini: the recipe's 2000; else its epochs)")
    args, extra = parser.parse_known_args(argv)
    summary = run_pipeline(args.dataset, [m for m in args.methods.split(",") if m], args.out, args.mini,
                           not args.no_quantize, args.model, args.max_length, args.classifier_epochs,
                           args.unlearn_epochs, extra, args.seed, args.prefix_steps, args.dry_run)
    if not args.dry_run:
        print("\n" + format_markdown(summary, COLUMNS))
    return summary


if __name__ == "__main__":
    from lit_unlearn.__main__ import run_module

    run_module(main)
