"""Sequential unlearning: forget requests arrive one after the other, each unlearned from the previous result.

    python -m lit_unlearn.sequential --mini 40 --parts 4 --methods graddiff,npo_gd,simnpo,rmu   # 2-core CPU
    python -m lit_unlearn.sequential --requests forget01,forget05,forget10 --methods npo_gd     # TOFU's sets: GPU

Requests are either ``--parts k``: the forget set (forget01 with ``--mini``) cut into k consecutive parts of its rows,
the model learned on all of it (the TOFU pipeline's ``finetune`` stage); or ``--requests``: TOFU's nested forget sets
in turn (forget01 lies in forget05, forget05 in forget10), from a model learned on the largest (``finetune`` on
forget10's split: TOFU's full setting).

Stages (``lit_unlearn.pipelines.runner``, in ``<out>/``, beside the TOFU pipeline's ``retain`` and ``finetune``, which
are reused from the same folder): for each method and request r, ``seq_<method>/r<r>`` unlearns request r (the
method's TOFU configs, its forget rows those of request r) starting from the learned adapter and the adapters of
requests 1..r-1, merged in order; then ``seq_<method>/r<r>_seen`` evaluates that model (the learned and request
adapters folded into the base: ``ScoredModel``) on every request so far: the forget rows of requests 1..r (forget
quality against the retain-only model's rows of the same ids), retain, real authors, world facts and the membership
attacks. The table (``sequential_summary.json``, beside the TOFU pipeline's ``summary.json``; printed as Markdown)
and ``sequential.png`` give forget quality, model utility (teacher-forced and generated) and the forget probability
against the number of requests, per method.
"""

from __future__ import annotations

from pathlib import Path

from lit_unlearn.config_files import method_configs
from lit_unlearn.core.errors import ConfigError
from lit_unlearn.pipelines.runner import Column, Stage, format_markdown, pipeline_parser
from lit_unlearn.tofu import COLUMNS as TOFU_COLUMNS, RECIPE, make_runner, stages as tofu_stages

COLUMNS = tuple(c for c in TOFU_COLUMNS if c.split in ("tofu", "forget", "mia", "retain_eval"))
FORGET_SETS = ("forget01", "forget05", "forget10")
#: the summary's file, beside the TOFU pipeline's own summary.json in the folder both share
SUMMARY = "sequential_summary.json"
#: the plot's panels: column -> title (the teacher-forced utility beside the generated one, which is degenerate where
#: a mini setting's 10 real-author answers are scored by ROUGE)
PANELS = {"FQ": "forget quality", "MU tf": "model utility (teacher-forced)", "MU": "model utility (generated)",
          "f.prob": "forget probability"}


def requests_of(parts: int | None, requests: list[str] | None) -> list[dict]:
    """Each request's data values: ``--parts``: part r of k of the forget rows; ``--requests``: a TOFU forget set."""
    if (parts is None) == (not requests):
        raise ConfigError("give --parts K (one forget set cut into K requests) or --requests forget01,forget05,... ")
    if parts is not None:
        if parts < 1:
            raise ConfigError(f"--parts must be >= 1, got {parts}")
        return [{"data.init_args.forget_parts": [r, r, parts]} for r in range(1, parts + 1)]
    bad = [r for r in requests if r not in FORGET_SETS]
    if bad:
        raise ConfigError(f"--requests {','.join(requests)}: {bad[0]!r} is not one of {', '.join(FORGET_SETS)}")
    return [{"data.init_args.forget_split": r} for r in requests]


def seen(request: dict) -> dict:
    """The data values of the evaluation after a request: every request so far (the nested sets already hold the
    earlier ones; parts 1..r of the cut set)."""
    if "data.init_args.forget_parts" in request:
        _, last, k = request["data.init_args.forget_parts"]
        return {"data.init_args.forget_parts": [1, last, k]}
    return dict(request)


def sequence(method: str, requests: list[dict]) -> list[Stage]:
    """The stages of one method's sequence (module docstring)."""
    reference = {"data.init_args.reference": "retain:rows"}
    out, adapters = [], ["finetune:adapter"]
    for r, request in enumerate(requests, 1):
        name = f"seq_{method}/r{r}"
        needs = {**reference, **{f"model.init_args.init_adapter@{k}": a for k, a in enumerate(adapters)}}
        out.append(Stage(name, ("tofu/base", *method_configs("tofu", method)), {"eval_before": False, **request},
                         kind="unlearn", method=method, needs=needs, floor=("finetune", "retain_eval", "prob", 0.5)))
        adapters.append(f"{name}:adapter")
        out.append(Stage(f"{name}_seen", ("tofu/base",), {"model": "ScoredModel", **seen(request)},
                         "eval", needs={**reference, **{f"model.init_args.init_adapter@{k}": a
                                                        for k, a in enumerate(adapters)}}))
    return out


def run_pipeline(methods: list[str], out: str | Path = "checkpoints/tofu_run", mini: int | None = None,
                 parts: int | None = None, requests: list[str] | None = None, model: str | None = None,
                 seed: int = 0, dry_run: bool = False) -> dict:
    """The TOFU pipeline's retain-only and learned models (reused), then each method's sequence; the summary."""
    if requests and mini is not None:
        raise ConfigError("--requests runs TOFU's forget01 / 05 / 10 on the full setting; the mini setting has "
                          "forget01 only: use --parts with --mini")
    planned = requests_of(parts, requests)
    if requests:  # the learned model must know the largest request
        planned_learn = {"data.init_args.forget_split": requests[-1]}
    else:
        planned_learn = {}
    runner = make_runner(out, mini, model, seed, flags={"finetune": planned_learn, "retain": planned_learn},
                         dry_run=dry_run)
    runner.run([*tofu_stages([]), *(s for m in methods for s in sequence(m, planned))])
    summary = runner.summary(COLUMNS, file=SUMMARY, mini=mini, parts=parts, requests=requests, methods=methods)
    if not dry_run:
        summary["curves"] = curves(summary, methods, len(planned))
        plot(summary, runner.out / "sequential.png")
        runner.write(summary, SUMMARY)
    return summary


def curves(summary: dict, methods: list[str], n: int) -> dict:
    """Per method, the evaluation after each request (of every request so far) as lists over r = 1..n, with the
    learned model at r = 0."""
    rows = summary["stages"]
    out = {}
    for m in methods:
        points = [rows.get("finetune", {})] + [rows.get(f"seq_{m}/r{r}_seen", {}) for r in range(1, n + 1)]
        out[m] = {c.field: [p.get(c.field) for p in points] for c in COLUMNS}
    return out


def plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, len(PANELS), figsize=(4 * len(PANELS), 3.6), dpi=100)
    for ax, key in zip(axes, PANELS):
        for method, curve in summary["curves"].items():
            values = curve[key]
            xs = [i for i, v in enumerate(values) if v is not None]
            ax.plot(xs, [values[i] for i in xs], marker="o", label=method)
        ax.set_xlabel("forget requests so far (0: the learned model)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(PANELS[key])
        if key == "FQ":
            ax.set_yscale("log")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    parser = pipeline_parser(__doc__, "checkpoints/tofu", "graddiff,npo_gd,simnpo,rmu")
    parser.add_argument("--parts", type=int, default=None, help="cut the forget set into K requests")
    parser.add_argument("--requests", default=None, help="TOFU forget sets in turn: forget01,forget05,forget10")
    args = parser.parse_args(argv)
    out = args.out or ("checkpoints/tofu_mini" if args.mini else "checkpoints/tofu_run")
    requests = [r for r in args.requests.split(",") if r] if args.requests else None
    summary = run_pipeline([m for m in args.methods.split(",") if m], out, args.mini, args.parts, requests,
                           args.model, args.seed, args.dry_run)
    if not args.dry_run:
        print("\n" + format_markdown(summary, COLUMNS) + f"\n[lit_unlearn] sequential: {Path(out) / SUMMARY}, "
              f"{Path(out) / 'sequential.png'}")
    return summary


if __name__ == "__main__":
    from lit_unlearn.__main__ import run_module

    run_module(main)
