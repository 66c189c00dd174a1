"""The embedded default experiment: learn fictitious facts, then unlearn half of them with NPO + retain NLL.

    python -m lit_unlearn.demo            # ~2 minutes on an idle 2-core CPU; outputs under checkpoints/demo/

1. ``data``: 40 invented people with a birth city (``lit_unlearn.data.synthetic``); 20 are the forget set,
   20 the retain set. SmolLM2-135M-Instruct cannot know them.
2. ``learn``: ``configs/demo/learn.yaml`` - Finetune with LoRA on all 40 until it answers them.
3. ``unlearn``: ``configs/demo/unlearn_npo.yaml`` - the learned LoRA merged into the base, a fresh LoRA
   trained with NPO on the forget people and NLL on the retain people.

It prints answer accuracy (teacher-forced, answer tokens) per split for the base model, after learning and
after unlearning, and two greedy generations per split before unlearning (the learned model) and after it, and
writes ``summary.json``. Forget accuracy should fall sharply; retain should stay close to its learned level.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from lit_unlearn.cli import cli_main, package_versions, write_json_atomic
from lit_unlearn.config_files import config_dir
from lit_unlearn.data.synthetic import write_fact_splits
from lit_unlearn.eval import greedy_generate

CONFIG_DIR = config_dir("demo")


#: sample generations per split and stage, and their length
SAMPLES, SAMPLE_TOKENS = 2, 8


def _stage(config: Path, out_dir: Path, name: str, extra: list[str]) -> tuple[dict, dict]:
    """Run one stage; returns its metrics.json and greedy answers of the trained model to ``SAMPLES`` rows a split."""
    run_dir = out_dir / name
    if run_dir.exists():
        shutil.rmtree(run_dir)
    if not config.is_file():
        raise FileNotFoundError(f"demo config {config} is missing: the package was installed without its configs")
    cli = cli_main(["fit", "--config", str(config),
                    "--trainer.logger.init_args.save_dir", str(out_dir.parent),
                    "--trainer.logger.init_args.name", out_dir.name,
                    "--trainer.logger.init_args.version", name, *extra])
    if cli.exit_code != 0:
        raise SystemExit(f"[lit_unlearn] demo stage {name!r} ended with status {cli.status!r} (exit code "
                         f"{cli.exit_code}); see {run_dir}")
    samples = {}
    for split, ds in cli.datamodule.datasets.items():
        rows = ds.rows[:SAMPLES]
        answers = greedy_generate(cli.model.lm, cli.model.tokenizer, [r["prompt"] for r in rows], SAMPLE_TOKENS)
        samples[split] = [{"question": r["question"], "answer": r["answer"].strip(), "generated": g.strip()}
                          for r, g in zip(rows, answers)]
    return json.loads((run_dir / "metrics.json").read_text()), samples


def run_demo(out_dir: str | Path = "checkpoints/demo", n_people: int = 40, seed: int = 0,
             model: str | None = None, extra: list[str] | None = None) -> dict:
    """Run data -> learn -> unlearn; returns ``{stage: {split: metrics}}`` plus wall times, also in summary.json."""
    out = Path(out_dir).resolve()
    t0 = time.time()
    paths = write_fact_splits(out / "data", n_people=n_people, seed=seed)
    data_args = ["--data.init_args.forget", str(paths["forget"]), "--data.init_args.retain", str(paths["retain"]),
                 "--seed_everything", str(seed), *(["--model.init_args.model", model] if model else []), *(extra or [])]
    learn, learned_says = _stage(CONFIG_DIR / "learn.yaml", out, "learn", data_args)
    unlearn, unlearned_says = _stage(CONFIG_DIR / "unlearn_npo.yaml", out, "unlearn",
                                     [*data_args, "--model.init_args.init_adapter", str(out / "learn" / "adapter")])
    summary = {
        "base": learn["metrics"]["before"],
        "learn": learn["metrics"]["after"],
        "unlearn": unlearn["metrics"]["after"],
        "generations": {"learn": learned_says, "unlearn": unlearned_says},
        "wall_time_s": {"learn": learn["wall_time_s"], "unlearn": unlearn["wall_time_s"],
                        "total": round(time.time() - t0, 1)},
        "versions": package_versions(),
    }
    write_json_atomic(out / "summary.json", summary)
    return summary


def format_summary(summary: dict) -> str:
    header = f"{'stage':<10}{'forget acc':>12}{'retain acc':>12}{'forget prob':>13}{'retain prob':>13}"
    lines = [header, "-" * len(header)]
    for stage in ("base", "learn", "unlearn"):
        m = summary[stage]
        lines.append(f"{stage:<10}{m['forget']['acc']:>12.3f}{m['retain']['acc']:>12.3f}"
                     f"{m['forget']['prob']:>13.3f}{m['retain']['prob']:>13.3f}")
    lines.append("\ngreedy answers, before unlearning (learn) -> after (unlearn):")
    gens = summary["generations"]
    for split, rows in gens["learn"].items():
        for before, after in zip(rows, gens["unlearn"][split]):
            lines.append(f"  [{split}] {before['question']}  (true: {before['answer']})")
            lines.append(f"      {before['generated']!r} -> {after['generated']!r}")
    lines.append(f"wall time: {summary['wall_time_s']['total']:.0f} s")
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
    main()
