"""``python train.py fit --config configs/...yaml`` and ``python eval.py --config ... --ckpt_path ...``.

LightningCLI with methods and data modules picked by short class name (``class_path: NPO``). Links:
``model.model -> data.tokenizer`` (one model name) and ``data.max_length -> model.max_length``.

Every ``fit`` run evaluates all splits before and after training (each split runs the evaluators its data module
names) and writes, next to its TensorBoard events, ``metrics.json`` (run id, status, command, config, package
versions, metrics before/after, wall time per stage), ``adapter/`` (the adapter alone) and the evaluators' per-row
records under ``rows/before/`` and ``rows/after/`` (``<split>.<evaluator>.jsonl``, keyed on stable row ids).
The evaluation before training is also saved as soon as it is done (``eval_before.json``); a fit resumed with
``--ckpt_path`` reads it back instead of evaluating again, when its model, data and seed are the same.
``validate``/``test`` runs write ``eval_metrics.json`` and ``rows/eval/`` the same way.

A fit claims its run directory (:class:`lit_unlearn.runs.RunDirectory`: no second fit at once, no finished run
replaced without ``--overwrite true``), runs under the collapse guard (``--guard.*``, on by default) and stops at a
step boundary with a checkpoint on SIGINT / SIGTERM. :func:`main` turns the outcome into the exit code of
:mod:`lit_unlearn.runs`, and any error of ours into one line on stderr (``LIT_UNLEARN_TRACEBACK=1`` shows the
traceback instead).
"""

from __future__ import annotations

import json
import math
import os
import platform
import signal
import sys
import time
import warnings
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch
from lightning.pytorch.callbacks import ProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.plugins.io import CheckpointIO
from lightning.pytorch.utilities.exceptions import SIGTERMException

import lit_unlearn.adapters  # noqa: F401  (registers adapter classes for class_path short names)
from lit_unlearn.callbacks import CollapseGuard, StopOnSignal, UnlearnCheckpoint
from lit_unlearn.checkpoints import AtomicCheckpointIO
from lit_unlearn.checkpoints import load_weights_only
from lit_unlearn.checkpoints import verify as verify_checkpoint
from lit_unlearn.config_files import expand_config_args
from lit_unlearn.core.errors import AdapterError, LitUnlearnError
from lit_unlearn.data.base import ForgetRetainDataModule
from lit_unlearn.eval import format_table
from lit_unlearn.methods.base import UnlearningMethod
from lit_unlearn.eval.module import ScoredModel
from lit_unlearn.runs import (
    EXIT_COLLAPSED,
    EXIT_ERROR,
    EXIT_OK,
    SIGNALS,
    RunDirectory,
    RunInterrupted,
    new_run_id,
    stamp_config,
)

def quiet_third_party() -> None:
    """Drop the messages other libraries print on every run that say nothing about it: transformers' deprecation of
    ``is_gradient_checkpointing`` (peft reads it), Lightning's ``LeafSpec`` deprecation and its litlogger tip, and
    bitsandbytes' note that an optional CPU kernel package is absent (it falls back to its own 4-bit kernels)."""
    import logging

    warnings.filterwarnings("ignore", message=r".*is_gradient_checkpointing.* is deprecated", category=FutureWarning)
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")

    class Drop(logging.Filter):
        def __init__(self, text: str):
            super().__init__()
            self.text = text

        def filter(self, record: logging.LogRecord) -> bool:
            return self.text not in record.getMessage()

    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(  # rank_zero_info logs through it
        Drop("seamless cloud logging"))
    logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(Drop("Failed to load CPU gemm_4bit_forward"))


quiet_third_party()

PACKAGES = ("lit_unlearn", "torch", "lightning", "transformers", "peft", "datasets", "torchmetrics",
            "jsonargparse", "bitsandbytes", "tokenizers")
#: set to 1 to see the full traceback of an error of ours instead of its one line
TRACEBACK_ENV = "LIT_UNLEARN_TRACEBACK"


def _whole_version(get_metrics):
    def metrics(trainer, pl_module):
        out = get_metrics(trainer, pl_module)
        if "v_num" in out and trainer.logger is not None and isinstance(trainer.logger.version, str):
            out["v_num"] = trainer.logger.version
        return out
    return metrics


def package_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


#: the evaluation before fit, saved as soon as it is done and read back when the fit is resumed
BEFORE_FILE = "eval_before.json"


def write_json_atomic(path: Path, obj) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def _choices(key: str) -> str:
    """The class names a ``class_path`` under parser key ``key`` may take (methods, data modules, adapters)."""
    from lit_unlearn.adapters import ADAPTERS
    from lit_unlearn.core.registry import subclasses_in
    from lit_unlearn.methods import METHODS

    if key.endswith("adapter"):
        return ", ".join(ADAPTERS)
    if key.split(".")[0] == "data":
        return ", ".join(n for n in subclasses_in(ForgetRetainDataModule, "lit_unlearn.data") if n != "ForgetRetainDataModule")
    stages = subclasses_in(UnlearningMethod, "lit_unlearn.predict_stages")  # the predict stages (Influence, ...)
    return ", ".join([*METHODS, *stages, "ScoredModel (eval.py only)"])


#: the trainer flags an evaluation uses (every other trainer flag, and the fit-only groups, are hidden from
#: ``eval.py --help``; they still parse, so a fit's saved config.yaml evaluates as it is)
EVAL_TRAINER_FLAGS = ("accelerator", "strategy", "devices", "num_nodes", "precision", "logger", "callbacks",
                      "limit_val_batches", "limit_test_batches", "enable_progress_bar", "default_root_dir",
                      "inference_mode", "deterministic", "profiler", "plugins")
FIT_ONLY = ("guard", "checkpoint", "eval_before", "export_merged", "restore_best", "overwrite", "optimizer",
            "lr_scheduler")


def hide_fit_flags(parser) -> None:
    """Hide from ``parser``'s help the flags only ``fit`` reads (``eval.py --help`` lists evaluation flags)."""
    import argparse

    def hidden(dest: str) -> bool:
        head, _, rest = dest.partition(".")
        return head in FIT_ONLY or (head == "trainer" and rest and rest.split(".")[0] not in EVAL_TRAINER_FLAGS)

    for action in parser._actions:
        if hidden(action.dest):
            action.help = argparse.SUPPRESS
    for group in parser._action_groups:
        for field in ("title", "description"):
            if str(getattr(group, field, "") or "").startswith("Customize every aspect of training"):
                setattr(group, field, "The trainer flags an evaluation uses (fit's others parse and are ignored)")
    parser.description = ("Evaluate a model, a saved adapter or a run on every split of its data module: the "
                          "evaluators' metrics, metrics.json / eval_metrics.json and per-row records.")


#: the marker a shipped config puts before a path inside the run root (an earlier stage's output)
RUN_ROOT = "{save_dir}"


def under_run_root(value, root: Path):
    """``value`` with every string that starts with ``{save_dir}/`` (in lists, mappings and namespaces too) made
    absolute under ``root``, the logger's save_dir: ``{save_dir}/tofu/finetune/adapter`` is the adapter the learn
    stage wrote, wherever ``--trainer.logger.init_args.save_dir`` puts the runs and whatever the working directory."""
    from jsonargparse import Namespace

    if isinstance(value, str) and value.startswith(RUN_ROOT + "/"):
        return str(root.resolve() / value[len(RUN_ROOT) + 1:])
    if isinstance(value, list):
        return [under_run_root(v, root) for v in value]
    if isinstance(value, dict):
        return {k: under_run_root(v, root) for k, v in value.items()}
    if isinstance(value, Namespace):
        for key, inner in list(value.items()):
            value[key] = under_run_root(inner, root)
    return value


def run_name(configs: list[str]) -> str | None:
    """A run's default version: the file name of the last of ``configs`` that sets ``model.class_path`` (the method
    file); None when none does (the logger numbers its runs)."""
    from lit_unlearn.config_files import method_class_of

    named = [Path(c) for c in configs if Path(c).is_file() and method_class_of(Path(c))]
    return named[-1].stem if named else None


def one_line(message: str) -> str:
    """jsonargparse's multi-line parse error as the one sentence that matters, with the valid names where it knows
    them: an unknown class lists the classes of its kind, an unknown argument names the class it is not one of."""
    import re

    def key_at(position: int) -> str:  # the nested parser keys before ``position``: model, then its adapter
        keys = [m.group(1) for m in re.finditer(r'Parser key "([^"]+)"', message) if m.start() < position]
        return ".init_args.".join(keys)

    key = key_at(len(message))
    unknown_class = re.search(r"Expected a dot import path string: (\S+)", message)
    if unknown_class:
        key = key_at(unknown_class.start())
        return f"--{key}.class_path {unknown_class.group(1)} is not a known class; one of: {_choices(key)}"
    option = re.search(r"Option '([^']+)' is not accepted", message)
    if option:
        key = key_at(option.start())
        paths = [m for m in re.finditer(r"given class_path '([^']+)'", message) if m.start() < option.start()]
        cls = paths[-1].group(1).rsplit(".", 1)[-1] if paths else "the class"  # the innermost: e.g. the adapter
        if cls in _choices("adapter").split(", ") and not key.endswith("adapter"):
            key = f"{key}.init_args.adapter"
        where = f"--{key}.init_args.{option.group(1)}" if key else f"--{option.group(1)}"
        return (f"{where}: {cls} has no argument {option.group(1)!r} (its arguments: python -m lit_unlearn fit "
                f"--{key or 'model'}.help {cls})")
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    given = re.search(r"Given value: (.+)", message)
    bad = f"--{key} {given.group(1)!r} is not a valid value" if key and given else " ".join(lines[:2])
    return (bad + (f" ({lines[1]})" if key and given and len(lines) > 1 else ""))[:400]


DESCRIPTION = ("lit_unlearn: machine unlearning for LLMs on PyTorch Lightning. A run is a method (--model: NPO, "
               "RMU, ...), a benchmark (--data: TOFUDataModule, ...) and a trainer, given as YAML configs (--config "
               "<file> or a shipped name such as tofu/npo_gd; lit-unlearn list names them all). Exit codes: 0 "
               "finished, 2 an error of ours (one line), 3 collapsed or diverged, 130 / 143 SIGINT / SIGTERM.")


class OneLineParser(LightningArgumentParser):
    """Parse errors as one line on stderr and exit code 2, not a usage dump of every option."""

    def error(self, message: str, ex: Exception | None = None):
        if not self.exit_on_error:  # a nested parser (a class's arguments): the outer one reports, with context
            return super().error(message, ex)
        print(f"lit_unlearn: error: {one_line(message)}", file=sys.stderr)
        raise SystemExit(EXIT_ERROR)


class UnlearnCLI(LightningCLI):
    def __init__(self, *args, **kwargs):
        self.timings: dict[str, float] = {}
        self.before: dict = {}
        self.exit_code = EXIT_OK
        self.status = "finished"
        self._claim: RunDirectory | None = None
        self.argv = list(kwargs.get("args") or sys.argv[1:])
        super().__init__(*args, **kwargs)

    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("model.init_args.model", "data.init_args.tokenizer")
        parser.link_arguments("data.init_args.max_length", "model.init_args.max_length")
        parser.add_lightning_class_args(UnlearnCheckpoint, "checkpoint")
        parser.set_defaults({"checkpoint.save_last": True, "checkpoint.save_top_k": 1})
        parser.add_lightning_class_args(CollapseGuard, "guard")
        parser.add_argument("--eval_before", type=bool, default=True,
                            help="evaluate every split before fit, for the before/after table in metrics.json")
        parser.add_argument("--export_merged", type=bool, default=False,
                            help="after fit, also save the base with the adapter merged in (merged/)")
        parser.add_argument("--restore_best", type=bool, default=False,
                            help="after fit, go back to the best checkpoint on --checkpoint.monitor before the "
                                 "evaluation after fit and the exports (e.g. a poisoning stage's best epoch)")
        parser.add_argument("--overwrite", type=bool, default=False,
                            help="let fit replace a run already in its directory (otherwise that is refused)")


    def before_instantiate_classes(self) -> None:
        # the logger block lives in each benchmark's base config; a run's version (its folder) defaults to the name
        # of the last config that picks the method (``--config tofu/base --config methods/npo`` -> checkpoints/tofu/npo)
        sub = self.config.get(self.subcommand) if self.subcommand else self.config
        logger = sub.get("trainer", {}).get("logger") if sub is not None else None
        init_args = getattr(logger, "init_args", None)
        name = run_name([str(c) for c in (sub.get("config") or [])]) if sub is not None else None
        if name and init_args is not None and "version" in init_args and init_args.get("version") is None:
            init_args["version"] = name
        if sub is not None:  # a config names an earlier stage's output under the run root, not the working directory
            root = (init_args.get("save_dir") if init_args is not None else None) or sub.get("trainer.default_root_dir")
            for key, value in list(sub.items()):
                sub[key] = under_run_root(value, Path(root or "."))

    def _prepare_subcommand_parser(self, klass, subcommand: str, **kwargs):
        parser = super()._prepare_subcommand_parser(klass, subcommand, **kwargs)
        if subcommand in ("validate", "test"):  # the evaluation prints our table; Lightning's box would repeat it
            parser.set_defaults({"verbose": False})
            hide_fit_flags(parser)
        return parser

    def instantiate_trainer(self, **kwargs):
        # checkpoints are written atomically and checksummed unless the config brings its own CheckpointIO plugin
        plugins = kwargs.get("plugins") or self._get(self.config_init, "trainer", default={}).get("plugins") or []
        plugins = plugins if isinstance(plugins, list) else [plugins]
        if not any(isinstance(p, CheckpointIO) for p in plugins):
            kwargs["plugins"] = [*plugins, AtomicCheckpointIO()]
        trainer = super().instantiate_trainer(**kwargs)
        trainer.callbacks.append(StopOnSignal())
        for cb in trainer.callbacks:
            if isinstance(cb, ProgressBar):  # Lightning shows the last 4 characters of a named version ("hole")
                cb.get_metrics = _whole_version(cb.get_metrics)
        return trainer

    def _parse_ckpt_path(self) -> None:
        # LightningCLI reads a --ckpt_path file's hyperparameters while parsing: check the file before it does
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if ckpt_path and Path(ckpt_path).is_file():
            verify_checkpoint(ckpt_path)
            load_weights_only(Path(ckpt_path), super()._parse_ckpt_path)  # a pickle payload: one line, not a traceback
            return
        super()._parse_ckpt_path()

    def _run_subcommand(self, subcommand: str) -> None:
        with SIGNALS.caught():
            try:
                super()._run_subcommand(subcommand)
            except RunInterrupted as stop:
                self._interrupted(stop.signum, stop.step, stop.checkpoint)
            except SIGTERMException:  # Lightning's own stop on SIGTERM, e.g. inside an evaluation
                self._interrupted(signal.SIGTERM, self.trainer.global_step, None)
            finally:
                if self._claim is not None:
                    self._claim.release()

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
            "run_id": getattr(self.model, "run_id", None),
            "status": self.status,
            "command": " ".join(["python", Path(sys.argv[0]).name, *self.argv]),
            "subcommand": self.subcommand,
            "config": self._config_dict(),
            "versions": package_versions(),
            "metrics": metrics,
            "wall_time_s": self.timings,
        })
        if name == "metrics.json":
            stamp_config(run_dir / "config.yaml", self.model.run_id)
        return path

    def _write_rows(self, stage: str) -> None:
        """Each evaluator's per-row records of the evaluation just run: ``rows/<stage>/<split>.<evaluator>.jsonl``."""
        run_dir = self._run_dir()
        if self.trainer.global_rank == 0:
            self.model.evaluation_suite().write(run_dir / "rows" / stage)

    def _sub_config(self) -> dict:
        return self.config.get(self.subcommand, self.config)

    def _interrupted(self, signum: int, step: int, checkpoint: str | None) -> None:
        """Record a signal's stop in metrics.json and set the exit code (the checkpoint is already written)."""
        self.status, self.exit_code = "interrupted", 128 + int(signum)
        name = signal.Signals(signum).name
        if self.subcommand != "fit":
            print(f"[lit_unlearn] {name}: evaluation stopped", file=sys.stderr)
            return
        self.timings["fit"] = round(time.time() - getattr(self, "_fit_t0", time.time()), 2)
        resume = "--ckpt_path last" if checkpoint else None
        path = self._record("metrics.json", {
            "before": self.before, "global_step": step,
            "interrupted": {"signal": name, "global_step": step, "checkpoint": checkpoint, "resume_with": resume},
        })
        if path is not None:
            where = f"saved {checkpoint}; resume with the same command and {resume}" if checkpoint else \
                "no new checkpoint (it stopped outside a training step)"
            print(f"[lit_unlearn] {name} at step {step}: {where}", file=sys.stderr)

    # ---- fit --------------------------------------------------------------------------------------------------
    def before_fit(self) -> None:
        if not isinstance(self.model, UnlearningMethod):
            from lit_unlearn.methods import METHODS

            raise LitUnlearnError(f"fit trains an unlearning method; --model {type(self.model).__name__} only "
                                  f"evaluates (use eval.py, or name a method: {', '.join(METHODS)})")
        config = self._sub_config()
        adapter = getattr(self.model, "adapter", None)
        if config.get("export_merged", False) and adapter is not None and not type(adapter).mergeable:
            # refused before training, not after it: the adapter declares it cannot be folded into weights
            raise AdapterError(f"--export_merged true: a {type(adapter).__name__} cannot be merged into the base's "
                               "weights (only LoRA can); drop --export_merged, the run saves adapter/ to stack with "
                               "--model.init_adapter")
        if config.get("restore_best", False) and not (config.get("checkpoint") or {}).get("monitor"):
            raise LitUnlearnError("--restore_best true needs --checkpoint.monitor (the metric that picks the best "
                                  "checkpoint, e.g. val/gap) and --checkpoint.mode")
        run_dir = self._run_dir()
        self.model.run_id = self.model.run_id or new_run_id()
        if self.trainer.global_rank == 0:
            self._claim = RunDirectory(run_dir)
            self._claim.claim(resume=config.get("ckpt_path") is not None, overwrite=config.get("overwrite", False))
        if config.get("eval_before", True):
            saved = self._saved_before(run_dir) if config.get("ckpt_path") is not None else None
            if saved is not None:  # a resumed fit: the weights before training are those the first launch scored
                self.before = self.model.last_eval = saved
                self.timings["eval_before"] = 0.0
                if self.trainer.global_rank == 0:
                    print(f"[lit_unlearn] resumed: the evaluation before fit is read from {run_dir / BEFORE_FILE}")
            else:
                t0 = time.time()
                self.trainer.validate(self.model, datamodule=self.datamodule, verbose=False)
                self.timings["eval_before"] = round(time.time() - t0, 2)
                self.before = self.model.last_eval
                self._write_rows("before")
                self._record(BEFORE_FILE, {"before": self.before})
        self._fit_t0 = time.time()

    def _saved_before(self, run_dir: Path) -> dict | None:
        """The evaluation before fit that an earlier launch of this run saved (``eval_before.json``), when it was
        made with the same model, data and seed as this resumed fit; None otherwise (it is then run again). Rank 0
        decides and every rank follows, so that all of them skip the collective evaluation or none does."""
        found = None
        if self.trainer.global_rank == 0:
            path = run_dir / BEFORE_FILE
            try:
                saved = json.loads(path.read_text())
            except (OSError, ValueError):
                saved = None
            same = ("model", "data", "seed_everything")
            now = json.loads(json.dumps({k: self._config_dict().get(k) for k in same}, default=str))
            if saved is not None and {k: (saved.get("config") or {}).get(k) for k in same} == now \
                    and (run_dir / "rows" / "before").is_dir():
                found = (saved.get("metrics") or {}).get("before") or None
            elif path.exists():
                print(f"[lit_unlearn] {path} was made with another model, data or seed (or is unreadable, or "
                      "rows/before is gone): evaluating again before fit", file=sys.stderr)
        return self.trainer.strategy.broadcast(found, src=0)

    def after_fit(self) -> None:
        self.timings["fit"] = round(time.time() - self._fit_t0, 2)
        events = getattr(self.model, "collapse_events", [])
        restored = self._restore_best() if self._sub_config().get("restore_best", False) and not events else None
        if self.model.last_eval_at == ("fit", self.trainer.global_step) and not events and restored is None:
            # the loop evaluated these very weights at its last step: that evaluation is the one after fit
            self.timings["eval_after"] = 0.0
        else:
            t0 = time.time()
            self.trainer.validate(self.model, datamodule=self.datamodule, verbose=False)
            self.timings["eval_after"] = round(time.time() - t0, 2)
        after = self.model.last_eval
        self._write_rows("after")
        finite = all(bool(torch.isfinite(p).all()) for p in self.model.parameters() if p.requires_grad)
        self.status = "finished" if finite and not events else "collapsed" if finite else "diverged"
        run_dir = self._run_dir()
        if self.trainer.global_rank == 0 and finite:  # nothing non-finite leaves the run
            if self.model.adapter is not None:
                self.model.export_adapter(run_dir / "adapter")
                write_json_atomic(run_dir / "adapter" / "lit_unlearn_run.json", {
                    "run_id": self.model.run_id, "method": type(self.model).__name__,
                    "global_step": self.trainer.global_step, "status": self.status})
            if self._sub_config().get("export_merged", False):
                self.model.export_merged(run_dir / "merged")
        ckpt = self.trainer.checkpoint_callback
        path = self._record("metrics.json", {
            "before": self.before, "after": after,
            "best_checkpoint": getattr(ckpt, "best_model_path", None),
            "last_checkpoint": getattr(ckpt, "last_model_path", None),
            "global_step": self.trainer.global_step,
            "collapse_events": events,
            "history": self.model.eval_history,  # the evaluations inside fit, one per validation
            "trainable_params": sum(p.numel() for _, p in self.model.trainable()),
            "measured": dict(getattr(self.model, "measured", {})),  # what the method measured (e.g. RMU's scale)
            "restored_best": restored,  # --restore_best: the checkpoint "after" and the exports are of
        })
        if self.status != "finished":
            self.exit_code = EXIT_COLLAPSED
        if path is not None:
            print(format_table(self.before, after, self.model.evaluation_suite().table_keys()))
            print(f"[lit_unlearn] run directory: {run_dir}")
            if self.status == "diverged":
                print("[lit_unlearn] the weights are not finite (the collapse guard is off): nothing was exported; "
                      "exit code 3", file=sys.stderr)
            elif self.status == "collapsed":
                print(f"[lit_unlearn] the collapse guard stopped the run ({events[-1]['reason']}); the adapter of "
                      f"step {events[-1]['restored_step']} was restored and exported; exit code 3", file=sys.stderr)

    def _restore_best(self) -> dict | None:
        """``--restore_best``: load the trainable tensors of the best checkpoint on ``checkpoint.monitor`` (verified,
        through the run's checkpoint IO) into the model; what was restored, or None where no checkpoint was ranked
        (no validation logged the monitor) - then the last weights stay, and the run says so."""
        ckpt = self.trainer.checkpoint_callback
        best = getattr(ckpt, "best_model_path", "") or ""
        if not best:
            print(f"[lit_unlearn] --restore_best: no checkpoint was ranked on {getattr(ckpt, 'monitor', None)!r}; "
                  "the last weights are evaluated and exported", file=sys.stderr)
            return None
        verify_checkpoint(best)
        state = self.trainer.strategy.checkpoint_io.load_checkpoint(best)
        trainable = self.model.trainable_names()
        missing = [n for n in trainable if n not in state["state_dict"]]
        if missing:
            raise LitUnlearnError(f"--restore_best: {best} lacks {len(missing)} trainable tensors (e.g. {missing[0]})")
        self.model.load_state_dict({n: state["state_dict"][n] for n in trainable}, strict=False)
        score = ckpt.best_model_score
        print(f"[lit_unlearn] --restore_best: the weights of step {state.get('global_step')} ({ckpt.monitor} = "
              f"{float(score):.4g}) are evaluated and exported", file=sys.stderr)
        return {"path": best, "global_step": state.get("global_step"), "epoch": state.get("epoch"),
                "monitor": ckpt.monitor, "score": float(score)}

    # ---- validate / test ----------------------------------------------------------------------------------------
    def before_validate(self) -> None:
        self._eval_t0 = time.time()

    def after_validate(self) -> None:
        self.timings["eval"] = round(time.time() - self._eval_t0, 2)
        self._write_rows("eval")
        bad = [f"{s}/{k}" for s, d in self.model.last_eval.items() for k, v in d.items() if not math.isfinite(v)]
        if bad:  # NaN metrics are a broken model (or checkpoint), never a result
            self.status, self.exit_code = "diverged", EXIT_COLLAPSED
        path = self._record("eval_metrics.json", {"eval": self.model.last_eval,
                                                  "ckpt_path": self._sub_config().get("ckpt_path")})
        if path is not None:
            print(format_table({}, self.model.last_eval, self.model.evaluation_suite().table_keys()))
            if bad:
                print(f"[lit_unlearn] the evaluation gave non-finite metrics ({', '.join(bad[:4])}): the model or "
                      "checkpoint is broken; exit code 3", file=sys.stderr)

    before_test = before_validate
    after_test = after_validate


def cli_main(args=None, run: bool = True, config_filename: str = "config.yaml") -> UnlearnCLI:
    """The project's CLI; ``args`` (a list) lets tests and scripts call the real thing in-process. The returned
    CLI's ``exit_code`` and ``status`` say how the run ended; errors propagate (see :func:`main`)."""
    import lit_unlearn.data  # noqa: F401
    import lit_unlearn.predict_stages  # noqa: F401  (the Influence and TokenScores predict stages, writers)
    import lit_unlearn.methods  # noqa: F401

    args = expand_config_args(list(sys.argv[1:] if args is None else args))  # config names -> shipped paths
    with warnings.catch_warnings():
        # LightningCLI always gets its arguments as ``args`` here (the command line's, or one stage's of a pipeline),
        # beside the process's own sys.argv, which DDP's launcher re-runs: its warning about both is noise
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
        return _cli(args, run, config_filename)


def _cli(args: list[str], run: bool, config_filename: str) -> UnlearnCLI:
    return UnlearnCLI(
        ScoredModel,
        ForgetRetainDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        parser_class=OneLineParser,
        parser_kwargs={"description": DESCRIPTION},
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


def our_error(err: BaseException) -> LitUnlearnError | None:
    """The error of ours behind ``err`` (jsonargparse and Lightning wrap the ones raised while building classes)."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, LitUnlearnError):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


def main(args=None, evaluate: bool = False) -> int:
    """``train.py`` / ``eval.py``: run the CLI and return its exit code (``lit_unlearn.runs``); an error of ours is one
    line on stderr and exit code 2, unless ``$LIT_UNLEARN_TRACEBACK`` is set."""
    try:
        cli = eval_main(args) if evaluate else cli_main(args)
    except KeyboardInterrupt:
        print("[lit_unlearn] interrupted (SIGINT)", file=sys.stderr)
        return 128 + signal.SIGINT
    except Exception as err:
        ours = our_error(err)
        if ours is None or os.environ.get(TRACEBACK_ENV, "") not in ("", "0"):
            raise
        print(f"lit_unlearn: error: {ours}", file=sys.stderr)
        return EXIT_ERROR
    return cli.exit_code
