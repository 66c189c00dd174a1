"""The embedded default experiment: learn fictitious facts, then unlearn half of them with NPO + retain NLL.

    python -m lit_unlearn.demo            # ~2 minutes on an idle 2-core CPU; outputs under checkpoints/demo/

1. ``data``: 40 invented people with a birth city (``lit_unlearn.data.synthetic``); 20 are the forget set,
   20 the retain set. SmolLM2-135M-Instruct cannot know them.
2. ``learn``: ``configs/demo/learn.yaml`` - Finetune with LoRA on all 40 until it answers them.
3. ``unlearn``: ``configs/demo/unlearn_npo.yaml`` - the learned LoRA merged into the base, a fresh LoRA
   trained with NPO on the forget people and NLL on the retain people.

The stages run on ``lit_unlearn.pipelines.runner``, afresh each time (the demo's run folders are replaced). It
prints answer accuracy (teacher-forced, answer tokens) per split for the base model, after learning and after
unlearning, and two greedy generations per split before unlearning (the learned model) and after it, and writes
``summary.json``. Forget accuracy should fall sharply; retain should stay close to its learned level.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from lit_unlearn.data.synthetic import write_fact_splits
from lit_unlearn.pipelines.runner import Column, Runner, Stage, argv_values, format_table

#: sample generations per split and stage, and their length
SAMPLES, SAMPLE_TOKENS = 2, 8
COLUMNS = (Column("forget", "acc", "forget acc"), Column("retain", "acc", "retain acc"),
           Column("forget", "prob", "forget prob"), Column("retain", "prob", "retain prob"))
#: table row -> (stage, evaluation): the base model is the learn stage's evaluation before fit
ROWS = {"base": ("learn", "before"), "learn": ("learn", "after"), "unlearn": ("unlearn", "after")}
STAGES = [Stage("learn", ("demo/learn",)),
          Stage("unlearn", ("demo/unlearn_npo",), needs={"model.init_args.init_adapter": "learn:adapter"})]


def sample_answers(generations: dict, stage: Stage, cli) -> None:
    """Greedy answers of the model ``stage`` trained to ``SAMPLES`` rows of each split, into ``generations``."""
    generations[stage.name] = {}
    for split, ds in cli.datamodule.datasets.items():
        rows = ds.rows[:SAMPLES]
        answers = cli.model.generate([r["prompt"] for r in rows], SAMPLE_TOKENS)
        generations[stage.name][split] = [{"question": r["question"], "answer": r["answer"].strip(),
                                           "generated": g.strip()} for r, g in zip(rows, answers)]


def run_demo(out_dir: str | Path = "checkpoints/demo", n_people: int = 40, seed: int = 0,
             model: str | None = None, extra: list[str] | None = None) -> dict:
    """Run data -> learn -> unlearn; returns the table rows, each stage's full evaluation, the generations and the
    wall times, also in summary.json."""
    out = Path(out_dir).resolve()
    for stage in STAGES:
        shutil.rmtree(out / stage.name, ignore_errors=True)
    paths = write_fact_splits(out / "data", n_people=n_people, seed=seed)
    common = {"data.init_args.forget": str(paths["forget"]), "data.init_args.retain": str(paths["retain"]),
              "seed_everything": seed, **({"model.init_args.model": model} if model else {}),
              **argv_values(extra or [])}
    generations: dict = {}
    runner = Runner(out, common=common, on_stage=lambda stage, cli: sample_answers(generations, stage, cli))
    records = runner.run(STAGES)
    full = {row: records[stage]["metrics"][which] for row, (stage, which) in ROWS.items()}
    return runner.summary(COLUMNS, rows=ROWS, **full, generations=generations)


def format_summary(summary: dict) -> str:
    lines = [format_table(summary, COLUMNS), "\ngreedy answers, before unlearning (learn) -> after (unlearn):"]
    gens = summary["generations"]
    for split, rows in gens["learn"].items():
        for before, after in zip(rows, gens["unlearn"][split]):
            lines.append(f"  [{split}] {before['question']}  (true: {before['answer']})")
            lines.append(f"      {before['generated']!r} -> {after['generated']!r}")
    lines.append(f"wall time: {summary['wall_time_s']:.0f} s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out_dir", default="checkpoints/demo", help="where data, runs and summary.json go")
    parser.add_argument("--people", type=int, default=40, help="number of invented people (half are forgotten)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", default=None, help="the base model (default: the configs' SmolLM2-135M-Instruct)")
    args, extra = parser.parse_known_args(argv)  # any other flag goes to both stages (--data.init_args.max_length 64)
    summary = run_demo(args.out_dir, args.people, args.seed, args.model, extra)
    print("\n" + format_summary(summary))
    print(f"TensorBoard: tensorboard --logdir {args.out_dir}")
    return summary


if __name__ == "__main__":
    from lit_unlearn.__main__ import run_module

    run_module(main)
