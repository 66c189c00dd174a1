"""The report: the runs pooled into one summary row per (system, method) with its ratios to (a) and (b), the
printed table and notes, the ``--json`` file (with a record of the environment) and its ``--markdown`` view."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from .measure import Run
from .systems import HF_METHOD, METHODS, SYSTEMS
from .workload import SHAPES


def summarise(runs: list[Run]) -> list[dict]:
    """Pool the rounds of each (system, method): median step time over all timed steps, max peak memory."""
    groups: dict[tuple[str, str], list[Run]] = {}
    for r in runs:
        groups.setdefault((r.system, r.method), []).append(r)
    rows = []
    for (system, method), rs in groups.items():
        steps = [t for r in rs for t in r.step_s]
        med = statistics.median(steps)
        n_timed = sum(len(r.step_s) for r in rs)
        rows.append({
            "system": system, "method": method, "tokens_per_step": rs[0].tokens_per_step,
            "step_ms_median": med * 1e3, "step_ms_min": min(steps) * 1e3, "step_ms_max": max(steps) * 1e3,
            "tokens_per_s": rs[0].tokens_per_step / med,
            "wall_tokens_per_s": rs[0].tokens_per_step * n_timed / sum(r.loop_s for r in rs),
            "peak_bytes": max(r.peak_bytes for r in rs),
            "step_peak_bytes": max((r.step_peak_bytes for r in rs if r.step_peak_bytes is not None), default=None),
            "first_loss": rs[0].first_loss, "setup_s": statistics.median(r.setup_s for r in rs),
            "timed_steps": n_timed, "rounds": len(rs),
        })
    # ratios: per round (the systems of one round run minutes apart at most, so a drifting machine speed mostly
    # cancels), then the median over rounds; the per-round values are kept
    def tps(system: str, method: str, rnd: int) -> float | None:
        rs = [r for r in runs if r.system == system and r.method == method and r.round == rnd]
        steps = [t for r in rs for t in r.step_s]
        return rs[0].tokens_per_step / statistics.median(steps) if steps else None

    def ratios(num: tuple[str, str], den: tuple[str, str]) -> list[float]:
        out = []
        for rnd in sorted({r.round for r in runs}):
            x, y = tps(*num, rnd), tps(*den, rnd)
            if x is not None and y is not None:
                out.append(x / y)
        return out

    peaks = {(r["system"], r["method"]): r["peak_bytes"] for r in rows}
    step_peaks = {(r["system"], r["method"]): r["step_peak_bytes"] for r in rows}
    for r in rows:
        key = (r["system"], r["method"])
        refs = {}
        if r["system"] != "a":
            refs["a"] = ("a", "CE")
        if r["system"].startswith("lit"):
            refs["b"] = ("b", HF_METHOD[r["method"]])
        for name, ref in refs.items():
            vals = ratios(key, ref)
            r[f"vs_{name}"] = statistics.median(vals) if vals else None
            r[f"vs_{name}_per_round"] = vals
        if "b" in refs and peaks.get(refs["b"]):
            r["mem_vs_b"] = r["peak_bytes"] / peaks[refs["b"]]
        if "b" in refs and r["step_peak_bytes"] and step_peaks.get(refs["b"]):
            r["step_mem_vs_b"] = r["step_peak_bytes"] / step_peaks[refs["b"]]
    b_order = list(dict.fromkeys(HF_METHOD.values()))
    rows.sort(key=lambda r: (SYSTEMS.index(r["system"]), METHODS.index(r["method"]) if r["system"].startswith("lit")
                             else b_order.index(r["method"]) if r["system"] == "b" else 0))
    return rows


# ---------------------------------------------------------------------------------------------------------------
# cells shared by the printed table and the markdown view
# ---------------------------------------------------------------------------------------------------------------
def fmt_mem(nbytes: int, device: str) -> str:
    return f"{nbytes / 2**30:.2f} GiB" if device == "cuda" else f"~{nbytes / 2**20:.0f} MiB"


def fmt_ratio(r: dict, k: str, bold: bool = False) -> str:
    v = r.get(k)
    return "-" if v is None else (f"**{v:.2f}x**" if bold else f"{v:.2f}x")


def fmt_loss(r: dict) -> str:
    return f"{r['first_loss']:.4f}" if r["first_loss"] is not None else "-"


def fmt_step_peak(r: dict) -> str:
    sp = r.get("step_peak_bytes")
    return f"{sp / 2**20:.1f} MiB" if sp else "-"


def per_round(r: dict) -> str:
    return " ".join(f"{v:.2f}" for v in r.get("vs_b_per_round", []))


def has_step_memory(rows: list[dict]) -> bool:
    return any(r.get("step_peak_bytes") for r in rows)


# ---------------------------------------------------------------------------------------------------------------
# printed report
# ---------------------------------------------------------------------------------------------------------------
def print_table(rows: list[dict], args) -> None:
    mem_head = "peak mem" if args.device == "cuda" else "peak RSS+ (approx)"
    step_mem = has_step_memory(rows)
    head = (f"{'system':<7}{'method':<17}{'tok/step':>9}{'step ms':>10}{'tokens/s':>11}{'wall tok/s':>11}"
            f"{mem_head:>20}{'loss@0':>10}{'vs (a)':>8}{'vs (b)':>8}{'mem/(b)':>9}"
            + (f"{'step peak':>11}{'step/(b)':>10}" if step_mem else "") + "   vs (b) per round")
    print(head)
    print("-" * len(head))
    name = {"a": "(a)", "b": "(b)", "lit": "lit", "lit-logits": "lit-lg"}
    for r in rows:
        step = f"{fmt_step_peak(r):>11}{fmt_ratio(r, 'step_mem_vs_b'):>10}" if step_mem else ""
        print(f"{name[r['system']]:<7}{r['method']:<17}{r['tokens_per_step']:>9}{r['step_ms_median']:>10.1f}"
              f"{r['tokens_per_s']:>11.0f}{r['wall_tokens_per_s']:>11.0f}{fmt_mem(r['peak_bytes'], args.device):>20}"
              f"{fmt_loss(r):>10}{fmt_ratio(r, 'vs_a'):>8}{fmt_ratio(r, 'vs_b'):>8}{fmt_ratio(r, 'mem_vs_b'):>9}"
              f"{step}   " + per_round(r))


def print_report(rows: list[dict], args, vocab: int, t_start: float, load_start) -> None:
    """The settings line, the table and its notes on stdout."""
    print()
    print(f"shape={args.shape}  device={args.device}  dtype={args.dtype}  quantize={args.quantize}  "
          f"attn={args.attn_impl}  vocab={vocab}  batch={args.batch} forget + {args.batch} retain x {args.seq_len} "
          f"tokens  LoRA r={args.lora_r} alpha={args.lora_alpha:g} all-linear  data={args.data}"
          f"  lit logging={'TensorBoard every step' if args.lit_cli_logging else 'off'}")
    print(f"median over {args.rounds} round(s) x {args.steps} timed steps (after {args.warmup} warm-up)  "
          f"torch {torch.__version__}  threads={torch.get_num_threads()}")
    print_table(rows, args)
    if args.device == "cpu":
        print("peak RSS+ is approximate: the increase of the process RSS over its value before the system was "
              "built, sampled every 5 ms.")
    if args.step_memory:
        print("step peak is exact: the profiler's peak of bytes of tensors allocated during one extra, untimed step "
              "and alive at once (weights and optimizer state excluded); step/(b) its ratio to (b)'s.")
    print("tokens/step: non-pad tokens of the rows the step feeds through the model (GradAscent: forget rows only).")
    print("step ms, tokens/s: median over the timed steps of all rounds; vs (a) / vs (b): tokens/s ratio computed "
          "within each round, median over rounds (lit NPO:* vs (b) NPO).")
    print(f"total wall time {time.time() - t_start:.0f}s  load average at start {load_start}, at end "
          f"{os.getloadavg() if hasattr(os, 'getloadavg') else None}")


# ---------------------------------------------------------------------------------------------------------------
# --json file and its --markdown view
# ---------------------------------------------------------------------------------------------------------------
def environment(args) -> dict:
    import lightning
    import peft
    import transformers

    env = {"python": platform.python_version(), "torch": torch.__version__, "lightning": lightning.__version__,
           "transformers": transformers.__version__, "peft": peft.__version__, "nproc": os.cpu_count(),
           "torch_threads": torch.get_num_threads(), "platform": platform.platform()}
    try:
        cpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        env["cpu"] = next((ln.split(":", 1)[1].strip() for ln in cpu.splitlines() if ln.startswith("Model name")), None)
    except OSError:
        env["cpu"] = platform.processor()
    if args.device == "cuda":
        env["gpu"] = torch.cuda.get_device_name()
        env["cuda"] = torch.version.cuda
    return env


def write_json(path: str, args, model_dir: Path, vocab: int, rows: list[dict], runs: list[Run], t_start: float,
               load_start) -> None:
    out = {"args": {k: v for k, v in vars(args).items()}, "model_dir": str(model_dir), "vocab": vocab,
           "model_config": SHAPES[args.shape]["config"], "environment": environment(args), "summary": rows,
           "runs": [vars(r) for r in runs], "total_wall_s": time.time() - t_start}
    out["environment"]["loadavg_start"] = load_start
    try:
        out["environment"]["loadavg_end"] = os.getloadavg()
    except OSError:
        pass
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(out, indent=2, default=str) + "\n")
    print(f"[bench] wrote {path}", file=sys.stderr)


def markdown_table(path: str) -> str:
    """The summary of a ``--json`` result file as the markdown table docs/benchmarks.md shows."""
    d = json.loads(Path(path).read_text())
    device = d["args"]["device"]
    rows = d["summary"]
    step_mem = has_step_memory(rows)
    name = {"a": "(a)", "b": "(b)", "lit": "lit", "lit-logits": "lit, logits"}
    head = ["system", "method", "tok/step", "step ms median [min-max]", "tokens/s", "wall tok/s",
            "peak mem" if device == "cuda" else "peak RSS+ (approx)", "loss@0", "vs (a)", "vs (b) (per round)",
            "mem / (b)"] + (["step peak (exact)", "step / (b)"] if step_mem else [])
    out = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * 2 + ["---:"] * (len(head) - 2)) + "|"]
    for r in rows:
        lit = r["system"].startswith("lit")
        cells = [name[r["system"]], r["method"].replace(":", ", ") if lit else
                 (f"CE, {r['tokens_per_step'] // d['args']['seq_len']} rows" if r["system"] == "a" else r["method"]),
                 str(r["tokens_per_step"]),
                 f"{r['step_ms_median']:.1f} [{r['step_ms_min']:.0f}-{r['step_ms_max']:.0f}]",
                 f"{r['tokens_per_s']:.0f}", f"{r['wall_tokens_per_s']:.0f}", fmt_mem(r["peak_bytes"], device),
                 fmt_loss(r), fmt_ratio(r, "vs_a"),
                 (f"{fmt_ratio(r, 'vs_b', r['system'] == 'lit')} ({per_round(r)})" if lit else "-"),
                 fmt_ratio(r, "mem_vs_b")]
        if step_mem:
            cells += [fmt_step_peak(r), fmt_ratio(r, "step_mem_vs_b", r["system"] == "lit")]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)
