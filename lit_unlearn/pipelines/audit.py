"""The re-quantization audit: does the forgetting survive quantizing the unlearned model?

Zhang et al. ("Catastrophic Failure of LLM Unlearning via Quantization", arXiv 2410.16454) find that 4-bit
quantization restores much of what gradient-ascent and NPO-style unlearning removed: the unlearning update is small
next to the quantization step, so rounding the weights to the 4-bit grid rounds much of it away. Any pipeline adds the
audit to its unlearning stages:

1. after the pipeline's fits, each unlearning stage's merged model is written (:func:`merged_model`: the learned
   adapter and the unlearning adapter folded into full-precision weights, ``<out>/<stage>/merged``);
2. then one evaluation per precision (``int8``: LLM.int8(); ``nf4``: 4-bit NormalFloat, bitsandbytes) of that
   merged model, loaded quantized as a plain model (``ScoredModel``) with the stage's own data and evaluators, in
   ``<out>/<stage>_<precision>``; the learned model is put through the same precisions as the control (quantizing it
   must leave the knowledge in).

:func:`recovery` reads the share of the forgotten knowledge a precision brings back, on any metric of it (higher
meaning known, as an accuracy, or forgotten, as TOFU's truth ratio: the ratio is the same):
(m_unlearned,q - m_unlearned) / (m_learned - m_unlearned), the learned and unlearned models at full precision
(as Zhang et al. compare them), 0 when quantizing keeps the forgetting, 1 when it undoes it, below 0 when quantizing
removes more (undefined where unlearning moved the metric less than ``min_gap``). The learned model at the same
precision is the control read beside it: where quantizing erases the learned knowledge itself (m_learned,q far
below m_learned), a low recovery says nothing about the unlearning.
"""

from __future__ import annotations

from pathlib import Path

from lit_unlearn.pipelines.runner import Runner, Stage

PRECISIONS = ("int8", "nf4")


def audit_precisions(text: str) -> tuple[str, ...]:
    """``--audit int8,nf4`` as a tuple of precisions; an unknown one is one error naming the flag."""
    from lit_unlearn.core.errors import ConfigError

    found = tuple(x.strip() for x in text.split(",") if x.strip())
    bad = [x for x in found if x not in PRECISIONS]
    if bad:
        raise ConfigError(f"--audit {text}: {bad[0]!r} is not a precision; choose from {', '.join(PRECISIONS)}")
    return found


def audit_stages(runner: Runner, stage: Stage, precisions: tuple[str, ...] = PRECISIONS,
                 model: str | None = None, overrides: dict | None = None, suffix: str = "") -> list[Stage]:
    """The evaluations of ``stage``'s merged model (``model``: another model directory, e.g. the learned model's
    merged export) loaded at each precision, with the stage's saved config (its data, evaluators and logger) and
    ``overrides`` (e.g. a pipeline's teacher-forced evaluators), each in ``<out>/<stage>_<precision><suffix>``."""
    run_dir = runner.out / stage.name
    merged = model or str(run_dir / "merged")
    name = stage.name if model is None else Path(model).parent.name
    return [Stage(f"{name}_{q}{suffix}", (str(run_dir / "config.yaml"),),
                  {"model": "ScoredModel", "model.init_args.model": merged, "model.init_args.init_adapter": None,
                   "model.init_args.quantize": q, **(overrides or {})}, "eval", common=False)
            for q in precisions]


def merged_model(run_dir: str | Path, model: str | None = None) -> Path:
    """``<run_dir>/merged``: the base of the fit run in ``run_dir`` with the adapters it started from (its saved
    config's ``init_adapter``, e.g. the learned LoRA) and its own saved ``adapter/`` folded in at full precision,
    written once (a stage run with ``export_merged: true`` has it already). ``model``: the base, where the saved
    config's is not to be used. A prefix, soft prompt or ReFT cannot be folded into weights: one error naming it."""
    import yaml

    from lit_unlearn.adapters.saved import saved_adapter_type
    from lit_unlearn.core.errors import AdapterError
    from lit_unlearn.models.assembly import assemble

    run_dir = Path(run_dir)
    out = run_dir / "merged"
    if (out / "config.json").is_file():
        return out
    args = yaml.safe_load((run_dir / "config.yaml").read_text())["model"]["init_args"]
    start = args.get("init_adapter")
    chain = [*([start] if isinstance(start, str) else start or []), str(run_dir / "adapter")]
    for path in chain:
        if not Path(path).is_dir():
            raise AdapterError(f"--audit: {path} is not a saved adapter; a run that trained the full model needs "
                               "export_merged: true to be audited")
        if saved_adapter_type(path) != "LoRA":
            raise AdapterError(f"--audit: {path} holds a {saved_adapter_type(path)} adapter, which cannot be merged "
                               "into the base's weights (only LoRA can); audit LoRA stages only")
    lm, tokenizer = assemble(model or args["model"], None, chain, "float32", None, "auto", False)
    lm.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    return out


def run_audit(runner: Runner, learned: str, unlearned: list[str], precisions: tuple[str, ...],
              model: str | None = None, overrides: dict | None = None, suffix: str = "") -> None:
    """The audit's evaluations (module docstring) after a pipeline's fits: each stage of ``unlearned`` and the
    ``learned`` stage (the control) merged (:func:`merged_model`) and evaluated at each precision, in
    ``<out>/<stage>_<precision><suffix>`` (``overrides``: over the stages' saved configs); finished evaluations are
    reused."""
    from lit_unlearn.core.errors import ConfigError

    if not unlearned:
        raise ConfigError("--audit needs at least one unlearning stage (--methods)")
    stages = [Stage(name, (str(runner.out / name / "config.yaml"),)) for name in unlearned]
    for stage in stages:
        merged_model(runner.out / stage.name, model)
        for check in audit_stages(runner, stage, precisions, overrides=overrides, suffix=suffix):
            runner.run_one(check)
    control = merged_model(runner.out / learned, model)  # evaluated with the first unlearning stage's data
    for check in audit_stages(runner, stages[0], precisions, str(control), overrides, suffix):
        runner.run_one(check)


def recovery(learned: float | None, unlearned: float | None, quantized: float | None,
             min_gap: float = 1e-3) -> float | None:
    """The share of what unlearning removed that the quantized model knows again (module docstring); None where a
    value was not measured (e.g. ROUGE in a teacher-forced audit)."""
    if learned is None or unlearned is None or quantized is None:
        return None
    gap = learned - unlearned
    return None if abs(gap) < min_gap else (quantized - unlearned) / gap


def audit_recovery(rows: dict, learned: str, methods: list[str], precisions: tuple[str, ...],
                   fields: tuple[str, ...], suffix: str = "") -> dict:
    """``summary["audit_recovery"]``: method -> precision -> field -> :func:`recovery`, read from a summary's
    ``rows`` (``summary["stages"]``: the learned row, each method's, and each audit row ``<method>_<q><suffix>``)."""
    return {m: {q: {f: recovery(rows[learned][f], rows[m][f], rows[f"{m}_{q}{suffix}"][f]) for f in fields}
                for q in precisions} for m in methods}
