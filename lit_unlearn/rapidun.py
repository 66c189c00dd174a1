"""RapidUn end to end (docs/influence.md): poison -> influence -> weights -> unlearning -> the backdoor table.

    python -m lit_unlearn.rapidun                        # 700 poisoned + 2,000 clean rows to poison on: a GPU job
    python -m lit_unlearn.rapidun --poison-rows 150      # a 2-core CPU (docs/results/influence_and_reft.md)

Stages, each a run of ``configs/rapidun/base.yaml`` + ``configs/rapidun/<stage>.yaml`` in ``<out>/<stage>``:

1. ``poison`` (fit): the base fine-tuned on poisoned rows mixed 1:9 with clean rows until the backdoor fires on
   held-out poisoned prompts (``poison.yaml``), merged: the model to unlearn from;
2. ``influence`` (``train.py predict``): per-sample gradients -> RapidGrad -> FF / FR / RR / RF -> weights files;
3. ``rapidun`` (influence weights), ``graddiff`` (unweighted GradDiff) and ``fallback`` (loss-based weights), each
   a fit from the poisoned model.

A finished stage is reused. The table (trigger success with seen and look-alike triggers, forget perplexities,
clean perplexity, wall time per stage) is printed and written to ``<out>/rapidun_summary.json``; with
``--reference-weights DIR`` (a folder with RapidIn's ``forget_weights.jsonl`` / ``retain_weights.jsonl``) the
summary also holds the Spearman rank correlation of the computed weights with those.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from lit_unlearn import stages
from lit_unlearn.cli import cli_main, package_versions, write_json_atomic
from lit_unlearn.config_files import config_dir

CONFIG_DIR = config_dir("rapidun")
METHODS = ("rapidun", "graddiff", "fallback")
COLUMNS = (("heldout_poisoned", "trigger_generated"), ("heldout_poisoned", "trigger_generated_lookalike"),
           ("heldout_poisoned", "clean_generated"), ("heldout_poisoned", "trigger_seen"),
           ("forget", "trigger_generated"), ("forget", "trigger_seen"), ("forget", "ppl_poisoned"),
           ("forget", "ppl_clean"), ("val_clean", "ppl"))


def run_influence(out: Path, extra: list[str]) -> dict:
    """The predict stage; reused when its weights files exist."""
    folder = out / "influence"
    if (folder / "forget_weights.jsonl").is_file() and (folder / "influence.json").is_file():
        print(f"[lit_unlearn] reusing the influence stage {folder}")
        return json.loads((folder / "influence.json").read_text())
    t0 = time.time()
    cli = cli_main(["predict", "--config", str(CONFIG_DIR / "base.yaml"), "--config", str(CONFIG_DIR / "influence.yaml"),
                    "--trainer.callbacks.init_args.out_dir", str(folder),
                    "--trainer.logger.init_args.save_dir", str(out.parent), "--trainer.logger.init_args.name",
                    out.name, "--trainer.logger.init_args.version", "influence", *extra])
    if cli.exit_code not in (0, None):
        raise SystemExit(cli.exit_code)
    info = json.loads((folder / "influence.json").read_text())
    info["wall_time_s"] = round(time.time() - t0, 1)
    write_json_atomic(folder / "influence.json", info)
    return info


def spearman(a: list[float], b: list[float]) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


def compare_weights(ours: Path, reference: Path) -> dict:
    """Spearman correlation per side between our weights and reference ones, joined on the row ``index``."""
    out = {}
    for side in ("forget", "retain"):
        mine = {json.loads(line)["index"]: json.loads(line)["weight"]
                for line in (ours / f"{side}_weights.jsonl").read_text().splitlines() if line.strip()}
        ref = {json.loads(line)["index"]: json.loads(line)["weight"]
               for line in (reference / f"{side}_weights.jsonl").read_text().splitlines() if line.strip()}
        common = sorted(set(mine) & set(ref))
        out[side] = {"rows": len(common),
                     "spearman": spearman([mine[i] for i in common], [ref[i] for i in common]) if common else None}
    return out


def run_pipeline(out: str | Path = "checkpoints/rapidun_run", methods=METHODS, mini: int | None = None,
                 poison_rows: int | None = None, model: str | None = None, extra: list[str] | None = None,
                 reference_weights: str | None = None, seed: int = 0, k: int | None = None,
                 poison_ratio: float = 9.0, poison_lr: float | None = None, poison_epochs: int | None = None) -> dict:
    out = Path(out).resolve()
    t0 = time.time()
    common = ["--seed_everything", str(seed), *(extra or [])]
    if mini is not None:
        common += ["--data.init_args.max_rows", json.dumps({"forget": mini, "retain": 3 * mini, "val_clean": 2 * mini})]
    poison = ["--model.init_args.model", model] if model else []
    if poison_rows is not None:  # N poisoned rows and ratio x N clean ones: the paper's 10% at ratio 9 (poison.yaml)
        rows = {"forget": poison_rows, "retain": round(poison_ratio * poison_rows),
                **({"val_clean": 2 * mini} if mini else {})}
        poison += ["--data.init_args.max_rows", json.dumps(rows)]
    if poison_ratio != 9.0:  # every batch 1 : ratio, the two CE terms weighted so that every row weighs the same
        poison += ["--data.init_args.retain_ratio", str(poison_ratio),
                   "--model.init_args.forget_weight", str(1 / (1 + poison_ratio)),
                   "--model.init_args.retain_weight", str(poison_ratio / (1 + poison_ratio))]
    poison += ["--model.init_args.lr", str(poison_lr)] if poison_lr is not None else []
    poison += ["--trainer.max_epochs", str(poison_epochs)] if poison_epochs is not None else []
    records = {"poison": stages.run_stage([CONFIG_DIR / "base.yaml", CONFIG_DIR / "poison.yaml"], out, "poison",
                                          common + poison)}
    target = ["--model.init_args.model", str(out / "poison" / "merged")]
    influence = run_influence(out, common + target + (["--model.init_args.k", str(k)] if k else []))
    weights = ["--data.init_args.weights", json.dumps({"forget": str(out / "influence" / "forget_weights.jsonl"),
                                                       "retain": str(out / "influence" / "retain_weights.jsonl")})]
    for method in methods:
        records[method] = stages.run_stage([CONFIG_DIR / "base.yaml", CONFIG_DIR / f"{method}.yaml"], out, method,
                                           common + target + (weights if method == "rapidun" else []))
    summary = {"mini": mini, "poison_rows": poison_rows, "influence": influence,
               "stages": {name: summarize(rec) for name, rec in records.items() if name != "poison"},
               "wall_time_s": round(time.time() - t0, 1), "versions": package_versions()}
    summary["stages"] = {"poisoned": summarize(records["poison"], "before_unlearning", records), **summary["stages"]}
    if reference_weights:
        summary["reference_weights"] = compare_weights(out / "influence", Path(reference_weights))
    write_json_atomic(out / "rapidun_summary.json", summary)
    return summary


def summarize(record: dict, which: str = "after", records: dict | None = None) -> dict:
    """One row: the backdoor columns after fit (for ``poisoned``: a method stage's evaluation before fit, i.e. the
    poisoned model on the unlearning splits), the fit time and the status."""
    if which == "before_unlearning":
        first = next((r for name, r in (records or {}).items() if name != "poison"), None)
        values = (first or {}).get("metrics", {}).get("before", {})
        return {"values": {f"{s}/{k}": values.get(s, {}).get(k) for s, k in COLUMNS},
                "fit_s": record.get("wall_time_s", {}).get("fit"), "status": record.get("status", "finished")}
    after = record["metrics"].get("after", {})
    return {"values": {f"{s}/{k}": after.get(s, {}).get(k) for s, k in COLUMNS},
            "fit_s": record.get("wall_time_s", {}).get("fit"), "status": record.get("status", "finished")}


def format_markdown(summary: dict) -> str:
    names = [f"{s}/{k}" for s, k in COLUMNS]
    lines = ["| model | " + " | ".join(names) + " | fit s |", "|---" * (len(names) + 2) + "|"]
    for stage, row in summary["stages"].items():
        cells = ["-" if row["values"].get(n) is None else f"{row['values'][n]:.3f}" for n in names]
        lines.append(f"| {stage} | " + " | ".join(cells) + f" | {row['fit_s'] or 0:.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--mini", type=int, default=None,
                        help="N forget rows, 3N retain, 2N val_clean (seeded; the packs hold 40 and 120)")
    parser.add_argument("--poison-rows", type=int, default=None,
                        help="poisoned rows to poison on (a seeded subset of the 700; 9x as many clean rows)")
    parser.add_argument("--poison-ratio", type=float, default=9.0,
                        help="clean rows per poisoned row in the poisoning stage (default 9: the paper's 10%%)")
    parser.add_argument("--poison-lr", type=float, default=None, help="lr of the poisoning stage (default 2e-4)")
    parser.add_argument("--poison-epochs", type=int, default=None, help="most epochs of the poisoning stage (3)")
    parser.add_argument("--model", default=None, help="the base to poison (default: the config's)")
    parser.add_argument("--reference-weights", default=None, help="a folder of reference weights to correlate with")
    parser.add_argument("--out", default=None)
    parser.add_argument("--k", type=int, default=None, help="RapidGrad's K (default: the config's 65536)")
    parser.add_argument("--seed", type=int, default=0)
    args, extra = parser.parse_known_args(argv)
    summary = run_pipeline(args.out or ("checkpoints/rapidun_mini" if args.mini else "checkpoints/rapidun_run"),
                           [m for m in args.methods.split(",") if m], args.mini, args.poison_rows, args.model, extra,
                           args.reference_weights, args.seed, args.k, args.poison_ratio, args.poison_lr,
                           args.poison_epochs)
    print("\n" + format_markdown(summary))
    return summary


if __name__ == "__main__":
    main()
