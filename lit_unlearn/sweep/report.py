"""A sweep's outputs, in its folder: ``sweep_summary.json``, ``trials.md`` (every trial, the frontier, the best
constrained point), ``frontier.png`` (forget vs utility, the frontier drawn; also in TensorBoard under
``tensorboard/``) and ``best.yaml`` (the best constrained trial's full config: ``train.py fit --config best.yaml``
reruns it as it is)."""

from __future__ import annotations

import contextlib
import io
import math
from pathlib import Path

from lit_unlearn.sweep.objectives import feasible, pareto_front, Objective

STATES = ("COMPLETE", "PRUNED")


def fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:.3g}" if (value != 0 and (abs(value) < 0.01 or abs(value) >= 1000)) else f"{value:.3f}"
    return str(value)


def is_feasible(trial) -> bool:
    return trial.state.name == "COMPLETE" and feasible(trial.user_attrs.get("constraints") or [])


def best_trial(plan, trials):
    """The best feasible complete trial on the first objective (None: none feasible)."""
    first = plan.objectives[0]
    candidates = [t for t in trials if is_feasible(t)]
    if not candidates:
        return None
    return min(candidates, key=lambda t: (first.sign * t.values[0], t.number))


def axis_objectives(plan) -> list[Objective]:
    """The two plotted metrics as objectives: the forget metric in its objective's direction (else minimized), the
    utility metric maximized (unless an objective says otherwise)."""
    by_metric = {o.metric: o for o in plan.objectives}
    x, y = plan.axes
    return [by_metric.get(x, Objective(x, "minimize")), by_metric.get(y, Objective(y, "maximize"))]


def frontier(plan, trials) -> list:
    """The complete trials no other complete trial beats on both axes (forget and utility), by forget metric."""
    axes = axis_objectives(plan)
    points = []
    for t in trials:
        values = [(t.user_attrs.get("metrics") or {}).get(a.metric) for a in axes]
        if t.state.name == "COMPLETE" and all(v is not None and math.isfinite(v) for v in values):
            points.append((t.number, values))
    keep = set(pareto_front(points, axes))
    chosen = [t for t in trials if t.number in keep]
    return sorted(chosen, key=lambda t: axes[0].sign * t.user_attrs["metrics"][axes[0].metric])


def trial_row(t) -> dict:
    attrs = t.user_attrs
    return {"number": t.number, "state": t.state.name, "status": attrs.get("status"), "params": t.params,
            "metrics": attrs.get("metrics") or {}, "constraint_violations": attrs.get("constraints"),
            "feasible": is_feasible(t), "seconds": attrs.get("seconds") or {}, "wall_s": attrs.get("wall_s"),
            "run_dir": attrs.get("run_dir"), "retry_of": attrs.get("retry_of"),
            "pruned_at_epoch": attrs.get("pruned_at_epoch"), "values": list(t.values) if t.values else None}


def collapsed_metrics(plan, row: dict) -> dict | None:
    """What a collapsed trial scored at the trip, read from its run's metrics.json (None where it is not readable)."""
    import json

    from lit_unlearn.sweep.study import read_outcome

    path = plan.directory / "trials" / str(row["run_dir"]) / "metrics.json"
    if not path.is_file():
        return None
    return read_outcome(plan, json.loads(path.read_text()), None).get("metrics")


def summarize(plan, study, frontier_trials, full: dict, runner, template, setting) -> dict:
    trials = [t for t in study.get_trials(deepcopy=False) if t.state.name in (*STATES, "FAIL")]
    ended = [t for t in trials if t.state.name in STATES]
    best = best_trial(plan, ended)
    fits = [t.user_attrs.get("seconds", {}).get("fit") for t in ended]
    evals = [t.user_attrs.get("seconds", {}).get("eval") for t in ended]
    walls = [t.user_attrs.get("wall_s") for t in ended]
    fits, evals, walls = ([v for v in vs if v] for vs in (fits, evals, walls))
    cost = {"trials_ended": len(ended), "complete": sum(t.state.name == "COMPLETE" for t in ended),
            "pruned": sum(t.state.name == "PRUNED" for t in ended),
            "failed": sum(t.state.name == "FAIL" for t in trials),
            "mean_trial_s": round(sum(walls) / len(walls), 1) if walls else None,
            "trials_per_hour": round(3600 * len(walls) / sum(walls), 2) if walls else None,
            "fit_s_total": round(sum(fits), 1), "proxy_eval_s_total": round(sum(evals), 1),
            # the in-loop proxy evaluations are part of fit's wall time: their share of it
            "proxy_eval_share_of_fit": round(sum(evals) / sum(fits), 3) if fits and sum(fits) else None}
    rows = []
    for t in sorted(trials, key=lambda t: t.number):
        row = trial_row(t)
        if row["status"] == "collapsed":  # read again from its run: a study from before the trip's numbers were kept
            row["metrics"] = collapsed_metrics(plan, row) or row["metrics"]
        rows.append(row)
    return {"name": plan.name, "method": plan.method, "benchmark": setting.benchmark, "storage": plan.storage,
            **plan.describe(), "pruner": study.user_attrs.get("pruner"), "axes": list(plan.axes),
            "proxy": plan.proxy, "fixed": plan.space.fixed,
            "n_trials": plan.n_trials, "reference": plan.reference,
            "trials": rows,
            "frontier": [t.number for t in frontier_trials],
            "best": None if best is None else {**trial_row(best), "full_evaluation": full.get(best.number)},
            "full_evaluation": {str(k): v for k, v in full.items() if v is not None},
            "cost": cost}


def markdown(summary: dict) -> str:
    keys = list(summary["space"])
    metrics = list(dict.fromkeys([*summary["axes"], *(m.split(":")[0] for m in summary["objectives"]),
                                  *(c.split(" ")[0] for c in summary["constraints"])]))
    short = {k: k.split(".")[-1] for k in keys}
    head = ["trial", "state", *[short[k] for k in keys], *metrics, "feasible", "fit s"]
    lines = [f"Sweep `{summary['name']}`: {summary['method']} on {summary['benchmark']}; objectives "
             f"{', '.join(summary['objectives'])}" + (f"; constraints {', '.join(summary['constraints'])}"
                                                      if summary["constraints"] else "") + ".",
             "", "| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    ref = summary["reference"]
    ref_cells = [fmt((ref.get(m.split("/")[0]) or {}).get(m.split("/")[1])) for m in metrics]
    lines.append("| reference | - | " + " | ".join("-" for _ in keys) + " | " + " | ".join(ref_cells) + " | | |")
    front = set(summary["frontier"])
    for row in summary["trials"]:
        state = row["state"].lower() + (" (frontier)" if row["number"] in front else "")
        if row["state"] != "COMPLETE" and row["status"] not in (None, "finished"):
            state += f": {row['status']}" + (" (metrics at the trip)" if row["status"] == "collapsed" else "")
        cells = [str(row["number"]), state, *[fmt(row["params"].get(k)) for k in keys],
                 *[fmt(row["metrics"].get(m)) for m in metrics],
                 "yes" if row["feasible"] else "no" if row["state"] == "COMPLETE" else "-",
                 "-" if row["seconds"].get("fit") is None else f"{row['seconds']['fit']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    best = summary["best"]
    lines.append("")
    if best:
        lines.append(f"Best constrained point: trial {best['number']} ("
                     + ", ".join(f"{short[k]} {fmt(v)}" for k, v in best["params"].items()) + ")")
    else:
        lines.append("No trial met the constraints.")
    lines.append("")
    for number, full in summary["full_evaluation"].items():
        lines.append(f"Full evaluation of trial {number}: " + ", ".join(
            f"{split}/{k} {fmt(v)}" for split, vals in full.items() for k, v in vals.items()
            if not k.endswith("time_s") and "/" not in k))  # per-subject / per-split breakdowns stay in the JSON
    cost = summary["cost"]
    lines.append("")
    lines.append(f"{cost['trials_ended']} trials ({cost['complete']} complete, {cost['pruned']} pruned, "
                 f"{cost['failed']} failed); {fmt(cost['trials_per_hour'])} trials per hour; the proxy evaluation "
                 f"took {fmt(cost['proxy_eval_share_of_fit'])} of fit time.")
    return "\n".join(lines)


def terminal(summary: dict) -> str:
    return markdown(summary).replace("|---", "")


def plot(summary: dict, path: Path):
    """The forget-vs-utility scatter with the frontier (and the reference model, and a bound on the utility axis);
    returns the figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x_metric, y_metric = summary["axes"]
    fig, ax = plt.subplots(figsize=(6.4, 4.8), dpi=100)
    rows = summary["trials"]

    def xy(row):
        return row["metrics"].get(x_metric), row["metrics"].get(y_metric)

    groups = {"feasible": [], "infeasible": [], "pruned": []}
    for row in rows:
        x, y = xy(row)
        if x is None or y is None:
            continue
        key = "pruned" if row["state"] != "COMPLETE" else "feasible" if row["feasible"] else "infeasible"
        groups[key].append((x, y, row["number"]))
    styles = {"feasible": dict(c="tab:blue", marker="o"), "infeasible": dict(facecolors="none",
                                                                             edgecolors="tab:blue", marker="o"),
              "pruned": dict(c="tab:gray", marker="x")}
    for key, pts in groups.items():
        if pts:
            ax.scatter([p[0] for p in pts], [p[1] for p in pts], label=f"{key} ({len(pts)})", **styles[key])
            for x, y, n in pts:
                ax.annotate(str(n), (x, y), textcoords="offset points", xytext=(3, 3), fontsize=7)
    front = [xy(r) for r in rows if r["number"] in set(summary["frontier"])]
    front = sorted(front)
    if front:
        ax.step([p[0] for p in front], [p[1] for p in front], where="post", c="tab:red", label="frontier")
    best = summary.get("best")
    if best is not None and None not in xy(best):
        ax.scatter(*xy(best), s=220, facecolors="none", edgecolors="tab:red", linewidths=1.5,
                   label=f"best constrained (trial {best['number']})")
    ref = summary["reference"]
    rx = (ref.get(x_metric.split("/")[0]) or {}).get(x_metric.split("/")[1])
    ry = (ref.get(y_metric.split("/")[0]) or {}).get(y_metric.split("/")[1])
    if rx is not None and ry is not None:
        ax.scatter([rx], [ry], marker="*", s=160, c="tab:green", label="reference (before unlearning)")
    for text in summary["constraints"]:
        if text.split(" ")[0] == y_metric and ry is not None:
            from lit_unlearn.sweep.objectives import parse_constraint

            ax.axhline(parse_constraint(text).bound(ref), ls="--", c="tab:orange", lw=1, label=text)
    ax.set_xlabel(x_metric)
    ax.set_ylabel(y_metric)
    ax.set_title(f"{summary['method']} on {summary['benchmark']}: {len(rows)} trials")
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path)
    return fig


def best_config(plan, summary: dict, runner, template) -> str | None:
    """The best constrained trial's whole config (its sampled values and the space's fixed keys over the stage's
    configs and recipe, without the proxy evaluation or the reporting callback), as ``fit --print_config`` writes it."""
    from dataclasses import replace

    from lit_unlearn.cli import cli_main

    best = summary["best"]
    if best is None:
        return None
    stage = replace(template, name=str(plan.directory.relative_to(runner.out) / "best"))
    runner.flags[stage.name] = {**plan.space.fixed, **best["params"]}
    args = runner.args(stage)
    if "--ckpt_path" in args:  # a best/ run already started there: the config is the same, without resuming
        i = args.index("--ckpt_path")
        args = args[:i] + args[i + 2:]
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        try:
            cli_main([*args, "--print_config"])
        except SystemExit as stop:
            if stop.code not in (0, None):
                raise
    where = plan.directory / "best.yaml"
    values = ", ".join(f"{k}={fmt(v)}" for k, v in best["params"].items())
    return (f"# python train.py fit --config {where}\n"
            f"# The best constrained trial ({best['number']}) of the sweep {plan.name!r} ({plan.method}): {values}.\n"
            "# Its proxy metrics: " + ", ".join(f"{m} {fmt(v)}" for m, v in best["metrics"].items()) + "\n"
            + buffer.getvalue())


def write_all(plan, summary: dict, runner, template) -> None:
    from lit_unlearn.cli import write_json_atomic

    out = plan.directory
    text = best_config(plan, summary, runner, template)
    if text is not None:
        (out / "best.yaml").write_text(text)
        summary["best_config"] = str(out / "best.yaml")
    fig = plot(summary, out / "frontier.png")
    summary["plot"] = str(out / "frontier.png")
    try:
        from torch.utils.tensorboard import SummaryWriter

        with SummaryWriter(str(out / "tensorboard")) as writer:
            writer.add_figure("sweep/frontier", fig, global_step=len(summary["trials"]))
            for row in summary["trials"]:
                for metric, value in row["metrics"].items():
                    if value is not None and math.isfinite(value):
                        writer.add_scalar(f"sweep/{metric}", value, row["number"])
    except ImportError:  # tensorboard is a dependency; a stripped environment still gets the PNG
        pass
    (out / "trials.md").write_text(markdown(summary) + "\n")
    write_json_atomic(out / "sweep_summary.json", summary)
    print(terminal(summary))
    print(f"[lit_unlearn] sweep {plan.name}: {out / 'sweep_summary.json'}, {out / 'trials.md'}, "
          f"{out / 'frontier.png'}" + (f", {out / 'best.yaml'}" if text else ""))
