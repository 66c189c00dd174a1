"""One runner for the multi-stage pipelines: a pipeline declares its stages, the runner does the rest.

A :class:`Stage` names its configs (shipped names such as ``tofu/base``, or paths), its overrides (dotted keys to
values), its subcommand, the recipe section that applies to it, the artifacts it takes from earlier stages
(``needs``: a dotted key -> ``"<stage>:<artifact>"``) and, for an unlearning stage, the earlier evaluation that sets
its collapse-guard floor. The :class:`Runner` owns everything else, once for every pipeline:

- **run directories**: ``<out>/<stage>``; a stage that already ended (``metrics.json`` says finished, collapsed or
  diverged) is reused, one stopped by a signal or killed resumes from its ``last.ckpt``;
- **values, in one place, with one precedence**: command-line flag > setting recipe (its section for the stage by
  name, then for the method config it runs where it is named otherwise, e.g. ``npo_gd`` for ``seq_npo_gd/r1``, then
  for the stage's method class, e.g. ``PIPrefix``, then for the stage's kind: ``learn`` / ``unlearn``) >
  the stage's configs, last one winning > the class default. :meth:`Runner.resolve` returns each value with where
  it came from, and ``--dry-run`` prints it;
- **a method's own stages**, declared on the method class, so that no method name appears here: ``prerequisite``
  (TNPO's token selection, RapidUn's influence: its config in the pipeline's config folder, subcommand, and which
  of its files reach which key), run once before the first stage that needs it; ``follow_up`` (PI-Prefix's
  trained reading: an evaluation of the stage's saved config with overrides), run right after the stage;
- **the guard floor**: ``floor = ("finetune", "retain_eval", "prob", 0.5)`` sets ``--guard.retain_floor`` to 0.5 x
  that stage's evaluated value, absolute, unless the stage's configs switch the floor off (``retain_floor: null``);
- **summary**: the declared columns per stage or per declared row (and, for a run the guard stopped, what it scored
  at the trip), the terminal and Markdown tables, ``<out>/summary.json``;
- **exit codes**: a stage's 0 (finished) and 3 (collapsed: its restored adapter is the result) continue the
  pipeline; any other code ends it with that code (2 bad input, 130 / 143 signals); errors of ours are one line
  (``lit_unlearn.__main__``).

Artifacts of a stage's run directory: ``adapter`` (``adapter/``), ``rows`` (``rows/after``: its evaluation's
per-row records), ``merged`` (``merged/``) and any file name it writes (``token_masks.jsonl``); a ``needs`` key
``key@side`` passes ``{side: path}``, and several sides of one key are gathered into one mapping.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from importlib.resources import files
from pathlib import Path
from typing import Any

import yaml

from lit_unlearn.config_files import method_class, resolve_config
from lit_unlearn.core.errors import ConfigError
from lit_unlearn.stages import fit_action, stage_status

ARTIFACTS = {"adapter": "adapter", "rows": "rows/after", "merged": "merged"}
RECIPES = Path(str(files("lit_unlearn.pipelines") / "recipes"))


@dataclass(frozen=True)
class Stage:
    name: str
    configs: tuple[str, ...]
    overrides: Mapping[str, Any] = field(default_factory=dict)
    subcommand: str = "fit"
    kind: str | None = None  # the recipe section that applies (learn / unlearn); None: no recipe
    needs: Mapping[str, str] = field(default_factory=dict)  # dotted key -> "<stage>:<artifact>"
    floor: tuple[str, str, str, float] | None = None  # (stage, split, metric, factor): the guard's absolute floor
    common: bool = True  # False: the pipeline's common values do not apply (a follow-up on a saved config)
    #: the method config it runs (``npo_gd``), for a stage named otherwise (``seq_npo_gd/r1``): that recipe section
    #: applies to it too, between the method class's and the stage name's
    method: str | None = None


@dataclass(frozen=True)
class Column:
    """A summary column: ``key`` of split ``split`` in a stage's evaluation after fit (``split`` None: a value the
    pipeline fills itself, e.g. RTT's), headed ``label``, kept in the row as ``name`` (default: ``label``)."""

    split: str | None
    key: str
    label: str
    fmt: str = ".3f"
    name: str | None = None

    @property
    def field(self) -> str:
        return self.name or self.label


def load_recipe(name: str | None) -> dict[str, dict[str, Any]]:
    """A setting recipe (``lit_unlearn/pipelines/recipes/<name>.yaml``): sections by stage kind or stage name, each
    a mapping of dotted keys to values."""
    if name is None:
        return {}
    path = RECIPES / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"no recipe {name!r} (lit_unlearn/pipelines/recipes/{name}.yaml)")
    recipe = yaml.safe_load(path.read_text()) or {}
    bad = [k for k, v in recipe.items() if not isinstance(v, dict)]
    if bad:
        raise ConfigError(f"{path}: section {bad[0]!r} must map dotted keys to values")
    return recipe


def load_configs(configs: list[Path]) -> list[dict]:
    """The parsed YAML of each of ``configs``, in order."""
    return [yaml.safe_load(Path(config).read_text()) or {} for config in configs]


def config_value(docs: list[dict], key: str) -> tuple[bool, Any]:
    """``(set?, value)`` of the dotted ``key`` in the composition of the parsed configs ``docs`` (the last one that
    sets it wins)."""
    found, value = False, None
    for node in docs:
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                break
            node = node[part]
        else:
            found, value = True, node
    return found, value


def init_args(docs: list[dict]) -> dict:
    """The method's ``model.init_args`` as the parsed configs ``docs`` compose them (later files win per key)."""
    merged: dict = {}
    for doc in docs:
        found, args = config_value([doc], "model.init_args")
        merged.update(args if found and isinstance(args, dict) else {})
    return merged


def given(values: Mapping[str, Any]) -> dict[str, Any]:
    """``values`` without the keys left None: the flags a user gave, as dotted keys -> values."""
    return {key: value for key, value in values.items() if value is not None}


def argv_values(argv: list[str], flag: str = "extra arguments") -> dict[str, str]:
    """``--dotted.key value`` pairs (a pipeline's pass-through flags) as a mapping of dotted keys to values; a flag
    without a value, or a word that is not a flag, is one error naming it."""
    values, i = {}, 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("--"):
            raise ConfigError(f"{flag}: {arg!r} is not a --key value pair")
        if "=" in arg:
            key, value = arg[2:].split("=", 1)
            i += 1
        elif i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            key, value = arg[2:], argv[i + 1]
            i += 2
        else:
            raise ConfigError(f"{flag}: {arg} has no value")
        values[key] = value
    return values


def flag_value(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


class Runner:
    """Runs one pipeline's stages in ``out`` (module docstring)."""

    def __init__(self, out: str | Path, recipe: str | None = None, flags: Mapping[str, Mapping[str, Any]] | None = None,
                 common: Mapping[str, Any] | None = None, settings: tuple[str, ...] = (), dry_run: bool = False,
                 on_stage: Callable[[Stage, Any], None] | None = None, processes: bool = False):
        """
        Args:
            out: the run folder; each stage in ``out/<stage>``.
            recipe: the setting recipe's name (``tofu_mini``), or None.
            flags: values from the command line, by stage kind or stage name (the highest precedence).
            common: command-line values every stage gets (seed, base model, the setting's size).
            settings: configs appended to every stage (the setting: ``tofu/mini``).
            dry_run: print what each stage would do, run nothing.
            on_stage: called with each stage that ran and its CLI object (the demo samples generations from it).
            processes: run each stage as ``python -m lit_unlearn ...`` in a process of its own instead of in this
                one (a DDP stage: Lightning's launcher starts the other ranks by re-running the command it sees).
        """
        self.out = Path(out).resolve()
        self.recipe, self.recipe_name = load_recipe(recipe), recipe
        self.flags = {k: dict(v) for k, v in (flags or {}).items()}
        self.common, self.settings, self.dry_run = dict(common or {}), tuple(settings), dry_run
        self.on_stage, self.processes = on_stage, processes
        self.records: dict[str, dict] = {}
        self.plan: list[str] = []
        self._parsed: dict[tuple[Path, ...], list[dict]] = {}  # shipped configs do not change during a run
        self.t0 = time.time()

    # ---- values ---------------------------------------------------------------------------------------------------
    def config_paths(self, stage: Stage) -> list[Path]:
        if not stage.common:  # a follow-up: the saved config of a stage (written when that stage runs)
            return [Path(c) for c in stage.configs]
        paths = [resolve_config(c) for c in (*stage.configs, *self.settings)]
        return [Path(p) for p in paths]

    def docs(self, stage: Stage) -> list[dict]:
        """The parsed configs of ``stage``, read once per set of paths (resolve, the floor, the method class and its
        init_args all read them)."""
        paths = tuple(self.config_paths(stage))
        if paths not in self._parsed:
            self._parsed[paths] = load_configs(list(paths))
        return self._parsed[paths]

    def resolve(self, stage: Stage) -> dict[str, tuple[Any, str]]:
        """Every value the runner decides for ``stage``: dotted key -> (value, source); keys the recipe or a flag
        name but neither sets for this stage report the configs' value or the class default."""
        if not stage.common:
            return {key: (value, "pipeline") for key, value in stage.overrides.items()}
        docs = self.docs(stage)
        sections = tuple(dict.fromkeys(x for x in (stage.kind, method_class(docs), stage.method, stage.name) if x))
        layers = [("pipeline", stage.overrides)]
        for section in sections:
            if section in self.recipe:
                layers.append((f"recipe {self.recipe_name}: {section}", self.recipe[section]))
        layers.append(("flag", self.common))
        for section in sections:
            layers.append(("flag", self.flags.get(section, {})))
        values: dict[str, tuple[Any, str]] = {}
        for source, layer in layers:
            for key, value in layer.items():
                values[key] = (value, source)
        tracked = {k for section in self.recipe.values() for k in section} | {k for f in self.flags.values() for k in f}
        for key in sorted(tracked - set(values)):
            found, value = config_value(docs, key)
            values[key] = (value, "config") if found else (None, "class default")
        return values

    def args(self, stage: Stage) -> list[str]:
        args = [] if stage.subcommand == "eval" else [stage.subcommand]
        for path in self.config_paths(stage):
            if not path.is_file():
                raise ConfigError(f"no config {path}")
            args += ["--config", str(path)]
        args += ["--trainer.logger.init_args.save_dir", str(self.out.parent), "--trainer.logger.init_args.name",
                 self.out.name, "--trainer.logger.init_args.version", stage.name]
        for key, (value, source) in self.resolve(stage).items():
            if source not in ("config", "class default"):
                args += [f"--{key}", flag_value(value)]
        for key, value in self.artifacts(stage).items():
            args += [f"--{key}", value]
        if self.floor_applies(stage):
            src, split, metric, factor = stage.floor
            learned = self.records[src]["metrics"]["after"] if src in self.records else {}
            if split in learned:
                args += ["--guard.relative", "false", "--guard.retain_floor", str(factor * learned[split][metric])]
        if self.action(stage) == "resume":
            args += ["--ckpt_path", "last"]
        return args

    def artifacts(self, stage: Stage) -> dict[str, str]:
        """The argument of each ``needs`` key: the artifact's path; ``key@side`` entries of one key are gathered
        into one JSON mapping ``{side: path, ...}`` (RapidUn's two weights files, TNPO's forget masks), or, when every
        side is a number, into a JSON list in that order (a chain of saved adapters to merge)."""
        plain, sides = {}, {}
        for key, ref in stage.needs.items():
            src, name = ref.split(":")
            path = str(self.out / src / ARTIFACTS.get(name, name))
            if "@" in key:
                base, side = key.split("@")
                sides.setdefault(base, {})[side] = path
            else:
                plain[key] = path
        for key, value in sides.items():
            if all(side.isdigit() for side in value):
                sides[key] = [value[side] for side in sorted(value, key=int)]
        return {**plain, **{k: json.dumps(v) for k, v in sides.items()}}

    def floor_applies(self, stage: Stage) -> bool:
        """A declared floor, unless the stage's configs switch the floor off (``guard.retain_floor: null``)."""
        if stage.floor is None or not stage.common:
            return False
        found, value = config_value(self.docs(stage), "guard.retain_floor")
        return not (found and value is None)

    def action(self, stage: Stage) -> str:
        run_dir = self.out / stage.name
        if stage.subcommand == "eval":
            return "reuse" if (run_dir / "eval_metrics.json").is_file() else "run"
        if stage.subcommand != "fit":
            return "reuse" if any(run_dir.glob("*.jsonl")) else "run"
        return fit_action(run_dir)

    # ---- running --------------------------------------------------------------------------------------------------
    def with_prerequisite(self, stage: Stage) -> tuple[Stage | None, Stage]:
        """The stage the method of ``stage`` declares it needs first (``UnlearningMethod.prerequisite``: its config
        in the stage's config folder, subcommand, written file and receiving key), and ``stage`` wired to its file;
        ``(None, stage)`` for a method that needs none."""
        cls = self.method(stage)
        spec = cls.prerequisite_for(init_args(self.docs(stage))) if cls else None
        if not spec:
            return None, stage
        run_dir = str(self.out / spec["config"])
        overrides = {k: (run_dir if v == "{run_dir}" else v) for k, v in spec.get("overrides", {}).items()}
        folder = str(Path(stage.configs[0]).parent)
        pre = Stage(spec["config"], (stage.configs[0], f"{folder}/{spec['config']}"), overrides, spec["subcommand"],
                    stage.kind, {k: v for k, v in stage.needs.items() if k.startswith("model.")})
        into = {key: f"{pre.name}:{artifact}" for key, artifact in spec["into"].items()}
        return pre, replace(stage, needs={**stage.needs, **into})

    def follow_up(self, stage: Stage) -> Stage | None:
        """The evaluation the method of ``stage`` declares after it (``UnlearningMethod.follow_up``: a name suffix
        and overrides of the stage's saved config, ``{run_dir}`` the stage's folder; PI-Prefix's trained reading)."""
        spec = getattr(self.method(stage), "follow_up", None)
        if not spec:
            return None
        run_dir = str(self.out / stage.name)
        overrides = {k: (v.replace("{run_dir}", run_dir) if isinstance(v, str) else v)
                     for k, v in spec.get("overrides", {}).items()}
        return Stage(stage.name + spec["suffix"], (str(self.out / stage.name / "config.yaml"),), overrides,
                     spec.get("subcommand", "eval"), common=False)

    def method(self, stage: Stage) -> type | None:
        """The method class ``stage``'s configs compose to (None: a follow-up, or not a registered method)."""
        from lit_unlearn.methods import METHODS

        name = method_class(self.docs(stage)) if stage.common else None
        return METHODS.get(name) if name else None

    def run(self, stages: list[Stage]) -> dict[str, dict]:
        """Run (reuse, resume) ``stages`` in order, each after its method's prerequisite (once per run folder);
        returns each fit stage's metrics.json by name. Every stage's configs are found before anything runs."""
        for stage in stages:
            self.config_paths(stage)
        for stage in stages:
            pre, stage = self.with_prerequisite(stage)
            if pre is not None and pre.name not in self.plan:
                self.run_one(pre)
            self.run_one(stage)
            after = self.follow_up(stage)
            if after is not None:
                self.run_one(after)
        return self.records

    def run_one(self, stage: Stage) -> None:
        from lit_unlearn.cli import cli_main, eval_main

        self.plan.append(stage.name)
        action = self.action(stage)
        if self.dry_run:
            print(self.describe(stage, action))
            return
        run_dir = self.out / stage.name
        if action == "reuse":
            print(f"[lit_unlearn] reusing the {stage_status(run_dir) or 'finished'} run {run_dir}")
        elif self.processes:  # a process of its own: a multi-GPU stage's DDP launcher re-runs this command
            import subprocess
            import sys

            args = self.args(stage)
            args = ["eval", *args] if stage.subcommand == "eval" else args
            code = subprocess.run([sys.executable, "-m", "lit_unlearn", *args]).returncode
            if code not in (0, 3):
                raise SystemExit(code)
        else:
            cli = (eval_main if stage.subcommand == "eval" else cli_main)(self.args(stage))
            if cli.exit_code not in (0, 3, None):
                raise SystemExit(cli.exit_code)
            if self.on_stage is not None:
                self.on_stage(stage, cli)
        record = {"fit": "metrics.json", "eval": "eval_metrics.json"}.get(stage.subcommand)
        if record:
            self.records[stage.name] = json.loads((run_dir / record).read_text())

    def describe(self, stage: Stage, action: str) -> str:
        lines = [f"{stage.name}: {action} ({stage.subcommand})",
                 "  configs: " + " ".join(str(p) for p in self.config_paths(stage))]
        for key, (value, source) in self.resolve(stage).items():
            lines.append(f"  {key}: set by no config (the class default)" if source == "class default"
                         else f"  {key} = {value!r}  ({source})")
        for key, ref in stage.needs.items():
            lines.append(f"  {key} <- {ref}")
        if self.floor_applies(stage):
            lines.append(f"  guard.retain_floor = {stage.floor[3]} x {stage.floor[0]}'s {stage.floor[1]}/"
                         f"{stage.floor[2]}")
        return "\n".join(lines)

    def summary(self, columns: tuple[Column, ...], per_split: Mapping[str, str] | None = None,
                rows: Mapping[str, tuple[str, str]] | None = None, file: str = "summary.json", write: bool = True,
                **extra) -> dict:
        """The declared columns of every stage run so far (``rows``: instead, row name -> (stage, ``after`` or
        ``before``), e.g. the poisoned model as the first unlearning stage saw it before fit), written to
        ``<out>/<file>`` (``write=False``: by the caller's :meth:`write`, once it has added what it reads from the
        rows)."""
        from lit_unlearn.cli import package_versions

        rows = rows or {name: (name, "after") for name in self.records}
        summary = {"stages": {row: summarize(self.records[name], columns, per_split, which)
                              for row, (name, which) in rows.items() if name in self.records},
                   **extra, "versions": package_versions()}
        return self.write(summary, file) if write else summary  # write adds the wall time

    def write(self, summary: dict, file: str = "summary.json") -> dict:
        """``summary`` to ``<out>/<file>`` (atomic; not in a dry run), its wall time brought up to date; a pipeline
        that shares its folder with another (sequential beside TOFU's) names its own file."""
        from lit_unlearn.cli import write_json_atomic

        summary["wall_time_s"] = round(time.time() - self.t0, 1)
        if not self.dry_run:
            write_json_atomic(self.out / file, summary)
        return summary


def pipeline_parser(doc: str, out: str, methods: str | None = None, kinds: tuple[str, ...] = ()):
    """The flags every pipeline has: --out, --model, --seed, --mini, --dry-run, --markdown; --methods (default
    ``methods``: comma-separated method configs, configs/methods/ or the benchmark's); --<kind>-lr and
    --<kind>-epochs for each stage kind of ``kinds``."""
    import argparse

    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    if methods is not None:
        parser.add_argument("--methods", default=methods, help="comma-separated method configs (configs/methods/ "
                            f"or the benchmark's; default {methods})")
    for kind in kinds:
        parser.add_argument(f"--{kind}-lr", type=float, default=None, help=f"lr of the {kind} stages")
        parser.add_argument(f"--{kind}-epochs", type=int, default=None, help=f"epochs of the {kind} stages")
    parser.add_argument("--out", default=None, help=f"run folder (default {out}_run, or {out}_mini with --mini)")
    parser.add_argument("--model", default=None, help="base model (default: the configs' SmolLM2-135M-Instruct)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--mini", type=int, default=None, help="the CPU-sized setting of size N")
    parser.add_argument("--dry-run", action="store_true",
                        help="print every stage with its configs and resolved values, and whether it would run, be "
                             "reused or resume; run nothing")
    parser.add_argument("--markdown", action="store_true", help="also print the table as Markdown")
    return parser


# ---- summaries ----------------------------------------------------------------------------------------------------
def summarize(record: dict, columns: tuple[Column, ...], per_split: Mapping[str, str] | None = None,
              which: str = "after") -> dict:
    """One table row: the declared columns of the evaluation after fit (``which``: or before it; an evaluation-only
    run's own); for a run the collapse guard stopped, also the evaluation that tripped it; ``per_split`` (row key
    -> metric) collects a metric over every split (GRUN's gate)."""
    metrics = record["metrics"]
    after = metrics.get(which, metrics.get("eval", {}))
    row = {c.field: after.get(c.split, {}).get(c.key) if c.split else None for c in columns}
    row["status"] = record.get("status", "finished")
    row["trainable_params"] = record["metrics"].get("trainable_params")
    row["measured"] = record["metrics"].get("measured") or {}  # what the method measured (RMU's scale, ...)
    for name, metric in (per_split or {}).items():
        values = {split: v[metric] for split, v in after.items() if metric in v}
        if values:
            row[name] = values
    row["wall_time_s"] = record.get("wall_time_s", {}) if which == "after" else {}  # a "before" row trained nothing
    events = record["metrics"].get("collapse_events") or []
    if events and events[-1].get("evaluation"):
        tripped = events[-1]["evaluation"]
        row["collapsed"] = {c.field: tripped.get(f"val/{c.split}/{c.key}") if c.split else None for c in columns}
        row["collapsed"]["step"] = events[-1]["step"]
    return row


def _cell(column: Column, value, width: int = 0) -> str:
    text = "-" if value is None else format(value, column.fmt)
    return f"{text:>{width}}" if width else text


#: the tables' fit and evaluation seconds
SECONDS = Column(None, "", "", ".0f")


def eval_seconds(wall: Mapping[str, float]) -> float | None:
    """A row's evaluation time: after fit, or an evaluation-only run's own (the audit's, a sequential request's)."""
    return wall.get("eval_after", wall.get("eval"))


def format_table(summary: dict, columns: tuple[Column, ...]) -> str:
    """The terminal table: one line per stage, and a ``tripped`` line for a run the guard stopped."""
    widths = [max(11, len(c.label) + 2) for c in columns]
    lines = [f"{'stage':<12}" + "".join(f"{c.label:>{w}}" for c, w in zip(columns, widths))
             + f"{'fit s':>8}{'eval s':>8}"]
    for stage, row in summary["stages"].items():
        wall = row["wall_time_s"]
        lines.append(f"{stage:<12}" + "".join(_cell(c, row.get(c.field), w) for c, w in zip(columns, widths))
                     + _cell(SECONDS, wall.get("fit"), 8) + _cell(SECONDS, eval_seconds(wall), 8)
                     + ("" if row["status"] == "finished" else f"  ({row['status']})"))
        if "collapsed" in row:
            lines.append(f"{'  tripped':<12}" + "".join(_cell(c, row["collapsed"].get(c.field), w)
                                                       for c, w in zip(columns, widths))
                         + f"  (step {row['collapsed']['step']}, before the guard restored the last good adapter)")
    return "\n".join(lines)


def format_markdown(summary: dict, columns: tuple[Column, ...], names: Mapping[str, str] | None = None) -> str:
    """The summary as a Markdown table (docs/results): one row per stage (``names``: a stage's row title), and for a
    run the collapse guard stopped, a row with what the collapsed model scored when the guard tripped."""
    lines = ["| stage | " + " | ".join(c.label for c in columns) + " | fit s | eval s |",
             "|---" * (len(columns) + 3) + "|"]
    for stage, row in summary["stages"].items():
        wall = row["wall_time_s"]
        name = (names or {}).get(stage, stage)
        name = name if row["status"] == "finished" else f"{name} ({row['status']}: restored)"
        lines.append(f"| {name} | " + " | ".join(_cell(c, row.get(c.field)) for c in columns)
                     + f" | {_cell(SECONDS, wall.get('fit'))} | {_cell(SECONDS, eval_seconds(wall))} |")
        if "collapsed" in row:
            tripped = row["collapsed"]
            lines.append(f"| {stage} at the trip (step {tripped['step']}) | "
                         + " | ".join(_cell(c, tripped.get(c.field)) for c in columns) + " | | |")
    return "\n".join(lines)
