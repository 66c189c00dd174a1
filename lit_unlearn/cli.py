"""``python train.py fit --config configs/...yaml`` and ``python eval.py --config ... --ckpt_path ...``.

LightningCLI with methods and data modules picked by short class name (``class_path: NPO``). Links:
``model.model -> data.tokenizer`` (one model name) and ``data.max_length -> model.max_length``.

Every ``fit`` run evaluates all splits before and after training (each split runs the evaluators its data module
names) and writes, next to its TensorBoard events, ``metrics.json`` (command, config, package versions, metrics
before/after, wall time per stage), ``adapter/`` (the adapter alone) and the evaluators' per-row records under
``rows/before/`` and ``rows/after/`` (``<split>.<evaluator>.jsonl``, keyed on stable row ids). ``validate``/``test``
runs write ``eval_metrics.json`` and ``rows/eval/`` the same way.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.plugins.io import CheckpointIO

import lit_unlearn.adapters  # noqa: F401  (registers adapter classes for class_path short names)
from lit_unlearn.callbacks import AtomicCheckpointIO, CollapseGuard, UnlearnCheckpoint  # noqa: F401
from lit_unlearn.data.base import ForgetRetainDataModule
from lit_unlearn.eval import format_table
from lit_unlearn.methods.base import UnlearningMethod

PACKAGES = ("lit_unlearn", "torch", "lightning", "transformers", "peft", "datasets", "torchmetrics",
            "jsonargparse", "bitsandbytes", "tokenizers")


def package_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def write_json_atomic(path: Path, obj) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str) + "\n")
    os.replace(tmp, path)


class UnlearnCLI(LightningCLI):
    def __init__(self, *args, **kwargs):
        self.timings: dict[str, float] = {}
        self.before: dict = {}
        self.argv = list(kwargs.get("args") or sys.argv[1:])
        super().__init__(*args, **kwargs)

    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("model.init_args.model", "data.init_args.tokenizer")
        parser.link_arguments("data.init_args.max_length", "model.init_args.max_length")
        parser.add_lightning_class_args(UnlearnCheckpoint, "checkpoint")
        parser.set_defaults({"checkpoint.save_last": True, "checkpoint.save_top_k": 1})
        parser.add_argument("--eval_before", type=bool, default=True,
                            help="evaluate every split before fit, for the before/after table in metrics.json")
        parser.add_argument("--export_merged", type=bool, default=False,
                            help="after fit, also save the base with the adapter merged in (merged/)")

    def instantiate_trainer(self, **kwargs):
        # checkpoints are written atomically unless the config brings its own CheckpointIO plugin
        plugins = kwargs.get("plugins") or self._get(self.config_init, "trainer", default={}).get("plugins") or []
        plugins = plugins if isinstance(plugins, list) else [plugins]
        if not any(isinstance(p, CheckpointIO) for p in plugins):
            kwargs["plugins"] = [*plugins, AtomicCheckpointIO()]
        return super().instantiate_trainer(**kwargs)

    # ---- run records ----------------------------------------------------------------------------------------
    def _run_dir(self) -> Path:
        # trainer.log_dir is a collective under DDP (a broadcast): every rank must call it, rank 0 alone writes
        d = Path(self.trainer.log_dir or self.trainer.default_root_dir)
        d.mkdir(parents=True, exist_ok=True)
        return d

    def _config_dict(self) -> dict:
        return self._sub_config().clone().as_dict()

    def _record(self, name: str, metrics: dict) -> Path | None:
        run_dir = self._run_dir()
        if self.trainer.global_rank != 0:
            return None
        path = run_dir / name
        write_json_atomic(path, {
            "command": " ".join(["python", Path(sys.argv[0]).name, *self.argv]),
            "subcommand": self.subcommand,
            "config": self._config_dict(),
            "versions": package_versions(),
            "metrics": metrics,
            "wall_time_s": self.timings,
        })
        return path

    def _write_rows(self, stage: str) -> None:
        """Each evaluator's per-row records of the evaluation just run: ``rows/<stage>/<split>.<evaluator>.jsonl``."""
        run_dir = self._run_dir()
        if self.trainer.global_rank == 0:
            self.model.evaluation_suite().write(run_dir / "rows" / stage)

    def _sub_config(self) -> dict:
        return self.config.get(self.subcommand, self.config)

    # ---- fit --------------------------------------------------------------------------------------------------
    def before_fit(self) -> None:
        if self._sub_config().get("eval_before", True):
            t0 = time.time()
            self.trainer.validate(self.model, datamodule=self.datamodule, verbose=False)
            self.timings["eval_before"] = round(time.time() - t0, 2)
            self.before = self.model.last_eval
            self._write_rows("before")
        self._fit_t0 = time.time()

    def after_fit(self) -> None:
        self.timings["fit"] = round(time.time() - self._fit_t0, 2)
        if self.trainer.interrupted:
            return
        t0 = time.time()
        self.trainer.validate(self.model, datamodule=self.datamodule, verbose=False)
        self.timings["eval_after"] = round(time.time() - t0, 2)
        after = self.model.last_eval
        self._write_rows("after")
        run_dir = self._run_dir()
        if self.trainer.global_rank == 0:
            if self.model.adapter is not None:
                self.model.export_adapter(run_dir / "adapter")
            if self._sub_config().get("export_merged", False):
                self.model.export_merged(run_dir / "merged")
        ckpt = self.trainer.checkpoint_callback
        path = self._record("metrics.json", {
            "before": self.before, "after": after,
            "best_checkpoint": getattr(ckpt, "best_model_path", None),
            "last_checkpoint": getattr(ckpt, "last_model_path", None),
            "global_step": self.trainer.global_step,
            "collapse_events": getattr(self.model, "collapse_events", []),
        })
        if path is not None:
            print(format_table(self.before, after, self.model.evaluation_suite().table_keys()))
            print(f"[lit_unlearn] run directory: {run_dir}")

    # ---- validate / test ----------------------------------------------------------------------------------------
    def before_validate(self) -> None:
        self._eval_t0 = time.time()

    def after_validate(self) -> None:
        self.timings["eval"] = round(time.time() - self._eval_t0, 2)
        self._write_rows("eval")
        path = self._record("eval_metrics.json", {"eval": self.model.last_eval,
                                                  "ckpt_path": self._sub_config().get("ckpt_path")})
        if path is not None:
            print(format_table({}, self.model.last_eval, self.model.evaluation_suite().table_keys()))

    before_test = before_validate
    after_test = after_validate


def cli_main(args=None, run: bool = True, config_filename: str = "config.yaml") -> UnlearnCLI:
    """The project's CLI; ``args`` (a list) lets tests and scripts call the real thing in-process."""
    import lit_unlearn.data  # noqa: F401
    import lit_unlearn.methods  # noqa: F401

    return UnlearnCLI(
        UnlearningMethod,
        ForgetRetainDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        seed_everything_default=0,
        save_config_kwargs={"overwrite": True, "config_filename": config_filename},
        trainer_defaults={
            "logger": {"class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                       "init_args": {"save_dir": "checkpoints", "name": "default"}},
            "log_every_n_steps": 1,
            "num_sanity_val_steps": 0,
            # no_grad rather than inference_mode: metric states are updated in and out of evaluation
            "inference_mode": False,  # every fit already evaluates all splits before training
        },
        args=args,
        run=run,
    )


def eval_main(args=None) -> UnlearnCLI:
    """``eval.py``: the ``validate`` subcommand (all splits of the data module), e.g. on a checkpoint."""
    args = list(sys.argv[1:] if args is None else args)
    if not (args and args[0] in ("validate", "test")):
        args = ["validate", *args]
    # evaluating a run in its own directory must not overwrite the config.yaml its fit wrote
    return cli_main(args, config_filename="eval_config.yaml")
