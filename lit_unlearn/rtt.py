"""RTT, the relearning attack of Deeb & Roger (docs/methods.md, section 2), on any model or checkpoint.

    python -m lit_unlearn.rtt --init-adapter checkpoints/deeb_roger/learn/adapter \\
        --init-adapter checkpoints/deeb_roger/gd/adapter --out checkpoints/deeb_roger/rtt_gd

The attacked model is ``--model`` (an alias, hub id or local directory; a merged export works as is) with the
adapters of ``--init-adapter`` merged in order (e.g. learn then unlearn). The forget splits are cut into folds
(:func:`folds`: fold k holds out V = forget_splits[k::n_folds]); in each fold the model is fine-tuned on the
questions of the other forget splits T and evaluated on V - whose questions it never trains on - and on the retain
splits after every epoch, once per learning rate of the sweep. Every (fold, lr) is its own seeded, logged sub-run
(``train.py fit`` with ``configs/deeb_roger/base.yaml`` + ``rtt.yaml``) in ``<out>/fold<k>_lr<lr>``, declared as a
stage whose arguments the pipeline runner builds (``lit_unlearn.pipelines.runner``); with several GPUs the sub-runs
fan out, one per device. A finished sub-run is reused, an interrupted one resumed, when the command runs again.

The summary (``<out>/rtt_summary.json``; printed as a table) gives per sub-run the V and retain accuracy of every
epoch (epoch 0: before retraining), and per fold and overall the best V accuracy over the sweep and its epochs -
Deeb & Roger's number: RTT recovers the information when the best V accuracy returns to the pre-unlearning level.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from lit_unlearn import stages
from lit_unlearn.cli import cli_main, package_versions, write_json_atomic
from lit_unlearn.core.errors import LitUnlearnError
from lit_unlearn.pipelines.runner import Runner, Stage, argv_values, given
#: the original sweep (Lion, full parameters of 7-8B models)
PAPER_LRS = (1e-7, 2e-7, 4e-7, 8e-7, 1.6e-6, 3.2e-6)
V_KEY, RETAIN_KEY = "val/heldout_mcq/mcq_acc", "val/retain_mcq/mcq_acc"


class RTTError(LitUnlearnError):
    """A bad RTT setting (one line, naming the flag)."""


def folds(forget_splits: list[int], n_folds: int = 2) -> list[tuple[list[int], list[int]]]:
    """``[(V, T), ...]``: fold k holds out V = forget_splits[k::n_folds] and trains on the rest T (disjoint)."""
    if n_folds < 2 or n_folds > len(forget_splits):
        raise RTTError(f"--folds must be between 2 and the number of forget splits ({len(forget_splits)}), "
                       f"got {n_folds}")
    out = []
    for k in range(n_folds):
        held = forget_splits[k::n_folds]
        out.append((held, [s for s in forget_splits if s not in held]))
    return out


def sub_run(name: str, heldout: list[int], train: list[int], lr: float, init_adapter: list[str], epochs: int,
            retain_splits: list[int], dataset: str, eval_before: bool) -> Stage:
    """One sub-run as a pipeline stage (``deeb_roger/base`` + ``deeb_roger/rtt``): its fold's splits, its lr."""
    return Stage(name, ("deeb_roger/base", "deeb_roger/rtt"), {
        "model.init_args.lr": lr, "trainer.max_epochs": epochs, "model.init_args.init_adapter": init_adapter,
        "data.init_args.dataset": dataset, "data.init_args.forget_splits": train,
        "data.init_args.heldout_splits": heldout, "data.init_args.retain_splits": retain_splits,
        "eval_before": eval_before})


def _run(args: list[str], device: int | None) -> int:
    """One sub-run: in this process (CPU, one device), or as a child process pinned to GPU ``device``."""
    if device is None:
        return cli_main(args).exit_code
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": str(device)}
    return subprocess.run([sys.executable, "-m", "lit_unlearn", *args], env=env).returncode


def run_rtt(init_adapter: list[str], out: str | Path, model: str | None = None, lrs: tuple[float, ...] = PAPER_LRS,
            epochs: int = 6, n_folds: int = 2, forget_splits: list[int] | None = None,
            retain_splits: list[int] | None = None, dataset: str = "random_bd", mini: int | None = None,
            seed: int = 0, devices: int | None = None, extra: list[str] | None = None) -> dict:
    """Run the sweep (module docstring); returns the summary."""
    import torch

    out = Path(out).resolve()
    forget_splits = list(range(5)) if forget_splits is None else list(forget_splits)
    retain_splits = list(range(5, 10)) if retain_splits is None else list(retain_splits)
    if not lrs:
        raise RTTError("--rtt-lrs is empty: give at least one learning rate")
    for path in init_adapter:
        if not Path(path).expanduser().is_dir():
            raise RTTError(f"--init-adapter {path}: no such adapter directory")
    # the sub-runs' arguments come from the pipeline runner (one precedence, one place); the runs themselves are
    # fanned out here, one per GPU when there are several
    runner = Runner(out, common={"seed_everything": seed, **given({"model.init_args.model": model,
                                                                   "data.init_args.questions_per_split": mini}),
                                 **argv_values(list(extra or []))},
                    settings=("deeb_roger/mini",) if mini is not None else ())
    plan = []
    for k, (heldout, train) in enumerate(folds(forget_splits, n_folds)):
        for j, lr in enumerate(lrs):
            name = f"fold{k}_lr{lr:g}"
            # one evaluation of the attacked model per fold (epoch 0), shared by the fold's learning rates
            stage = sub_run(name, heldout, train, lr, init_adapter, epochs, retain_splits, dataset, j == 0)
            plan.append((name, k, lr, heldout, runner.args(stage)))
    n_gpu = torch.cuda.device_count() if devices is None else devices
    t0 = time.time()
    todo = [p for p in plan if stages.stage_status(out / p[0]) != "finished"]
    if n_gpu > 1:
        with ThreadPoolExecutor(n_gpu) as pool:
            codes = list(pool.map(lambda ip: _run(ip[1][-1], ip[0] % n_gpu), enumerate(todo)))
    else:
        codes = []
        for p in todo:  # one at a time; a sub-run that fails or is stopped by a signal stops the sweep
            codes.append(_run(p[-1], None))
            if codes[-1] != 0:
                break
    for p, code in zip(todo, codes):
        if code != 0:
            what = "was stopped by a signal" if code >= 128 else f"failed (exit code {code})"
            print(f"lit_unlearn.rtt: sub-run {p[0]} {what}; see {out / p[0]}. Run the same command again to go on",
                  file=sys.stderr)
            raise SystemExit(code)
    summary = summarize(out, plan)
    summary.update(init_adapter=init_adapter, model=model, lrs=list(lrs), epochs=epochs, mini=mini, seed=seed,
                   wall_time_s=round(time.time() - t0, 1), versions=package_versions())
    write_json_atomic(out / "rtt_summary.json", summary)
    return summary


def summarize(out: Path, plan: list) -> dict:
    """Per sub-run curves and the best V accuracy over the sweep, per fold and averaged over folds (weighted by
    V's rows, so the overall number is the accuracy over all forget questions)."""
    runs, by_fold, heldout_of = {}, {}, {}
    for name, k, lr, heldout, _ in plan:
        heldout_of[k] = heldout
        rec = json.loads((out / name / "metrics.json").read_text())
        before = rec["metrics"].get("before") or {}
        history = rec["metrics"].get("history") or []
        curve = [{"epoch": h["epoch"], "heldout": h.get(V_KEY), "retain": h.get(RETAIN_KEY)} for h in history]
        if before:
            curve.insert(0, {"epoch": 0, "heldout": before["heldout_mcq"]["mcq_acc"],
                             "retain": before["retain_mcq"]["mcq_acc"]})
        runs[name] = {"fold": k, "lr": lr, "curve": curve, "n_heldout": _rows(out / name)}
        by_fold.setdefault(k, []).append(name)
    fold_rows = []
    for k, names in sorted(by_fold.items()):
        start = next(runs[n]["curve"][0] for n in names if runs[n]["curve"] and runs[n]["curve"][0]["epoch"] == 0)
        best_name, best = max(((n, pt) for n in names for pt in runs[n]["curve"] if pt["epoch"] > 0),
                              key=lambda x: x[1]["heldout"])
        fold_rows.append({"fold": k, "heldout_splits": heldout_of[k], "n": runs[best_name]["n_heldout"],
                          "before": start["heldout"], "retain_before": start["retain"], "best": best["heldout"],
                          "best_lr": runs[best_name]["lr"], "best_epoch": best["epoch"],
                          "retain_at_best": best["retain"]})
    n = sum(f["n"] for f in fold_rows)

    def mean(key: str) -> float:
        return sum(f[key] * f["n"] for f in fold_rows) / n

    return {"runs": runs, "folds": fold_rows,
            "overall": {"before": mean("before"), "best": mean("best"), "retain_before": mean("retain_before"),
                        "retain_at_best": mean("retain_at_best")}}


def _rows(run_dir: Path) -> int:
    """Rows of the held-out split (from the sub-run's per-row records)."""
    for stage in ("after", "before"):
        path = run_dir / "rows" / stage / "heldout_mcq.mcq.jsonl"
        if path.is_file():
            return sum(1 for line in path.read_text().splitlines() if line.strip())
    return 0


def format_summary(summary: dict) -> str:
    lines = [f"{'sub-run':<18}" + "".join(f"{'ep' + str(pt['epoch']):>12}" for pt in
                                          next(iter(summary["runs"].values()))["curve"])]
    for name, run in summary["runs"].items():
        lines.append(f"{name:<18}" + "".join(f"{pt['heldout']:>6.3f}/{pt['retain']:<5.3f}" for pt in run["curve"]))
    lines.append("(each cell: held-out V accuracy / retain accuracy)")
    for f in summary["folds"]:
        lines.append(f"fold {f['fold']} V={f['heldout_splits']}: before {f['before']:.3f} -> best {f['best']:.3f} "
                     f"(lr {f['best_lr']:g}, epoch {f['best_epoch']}; retain {f['retain_at_best']:.3f})")
    o = summary["overall"]
    lines.append(f"overall: V accuracy before RTT {o['before']:.3f}, best after RTT {o['best']:.3f}; retain "
                 f"{o['retain_before']:.3f} -> {o['retain_at_best']:.3f}")
    return "\n".join(lines)


def parse_floats(text: str, flag: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise RTTError(f"{flag} takes comma-separated numbers, got {text!r}") from None


def parse_ints(text: str, flag: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise RTTError(f"{flag} takes comma-separated split indices, got {text!r}") from None


def add_attack_args(parser: argparse.ArgumentParser) -> None:
    """The RTT flags shared with ``lit_unlearn.relearning``."""
    parser.add_argument("--rtt-lrs", default=",".join(f"{x:g}" for x in PAPER_LRS),
                        help="comma-separated learning rates of the sweep (default: the paper's, for full fine-tuning "
                             "with Lion)")
    parser.add_argument("--rtt-epochs", type=int, default=6, help="epochs of each sub-run (default 6)")
    parser.add_argument("--folds", type=int, default=2, help="folds over the forget splits (default 2)")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--init-adapter", action="append", default=[],
                        help="an adapter directory merged into the model before the attack (repeat: merged in order)")
    parser.add_argument("--model", default=None, help="base model (default: the configs' SmolLM2-135M-Instruct)")
    parser.add_argument("--out", default="checkpoints/deeb_roger/rtt", help="folder of the sub-runs")
    parser.add_argument("--dataset", default="random_bd")
    parser.add_argument("--forget-splits", default="0,1,2,3,4")
    parser.add_argument("--retain-splits", default="5,6,7,8,9")
    parser.add_argument("--mini", type=int, default=None, help="the first N questions of each split (CPU runs)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--devices", type=int, default=None, help="GPUs to fan out over (default: all visible)")
    add_attack_args(parser)
    args, extra = parser.parse_known_args(argv)
    try:
        summary = run_rtt(args.init_adapter, args.out, args.model, parse_floats(args.rtt_lrs, "--rtt-lrs"),
                          args.rtt_epochs, args.folds, parse_ints(args.forget_splits, "--forget-splits"),
                          parse_ints(args.retain_splits, "--retain-splits"), args.dataset, args.mini, args.seed,
                          args.devices, extra)
    except RTTError as err:
        raise SystemExit(f"lit_unlearn.rtt: error: {err}") from None
    print("\n" + format_summary(summary))
    print(f"[lit_unlearn] rtt: {Path(args.out) / 'rtt_summary.json'}")
    return summary


if __name__ == "__main__":
    from lit_unlearn.__main__ import run_module

    run_module(main)
