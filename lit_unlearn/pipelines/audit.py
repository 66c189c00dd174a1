"""The re-quantization audit: does the forgetting survive quantizing the unlearned model?

Zhang et al. ("Catastrophic Failure of LLM Unlearning via Quantization", arXiv 2410.16454) find that 4-bit
quantization restores much of what gradient-ascent and NPO-style unlearning removed: the unlearning update is small
next to the quantization step, so rounding the weights to the 4-bit grid rounds much of it away. Any pipeline adds the
audit to its unlearning stages:

1. the unlearning stage exports its merged model (``export_merged: true``: the learned adapter and the unlearning
   adapter folded into full-precision weights);
2. after it, one evaluation per precision (``int8``: LLM.int8(); ``nf4``: 4-bit NormalFloat, bitsandbytes) of that
   merged model, loaded quantized as a plain model (``ScoredModel``) with the stage's own data and evaluators, in
   ``<out>/<stage>_<precision>``; the learned model is put through the same precisions as the control (quantizing it
   must leave the knowledge in).

:func:`recovery` reads the share of the forgotten knowledge a precision brings back, on a metric where higher means
known: (m_unlearned,q - m_unlearned) / (m_learned - m_unlearned), the learned and unlearned models at full precision
(as Zhang et al. compare them), 0 when quantizing keeps the forgetting, 1 when it undoes it, below 0 when quantizing
removes more (undefined where unlearning moved the metric less than ``min_gap``). The learned model at the same
precision is the control read beside it: where quantizing erases the learned knowledge itself (m_learned,q far
below m_learned), a low recovery says nothing about the unlearning.
"""

from __future__ import annotations

from dataclasses import replace
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


def exporting(stage: Stage) -> Stage:
    """``stage`` writing its merged model (``<out>/<stage>/merged``) for the audit."""
    return replace(stage, overrides={**stage.overrides, "export_merged": True})


def audit_stages(runner: Runner, stage: Stage, precisions: tuple[str, ...] = PRECISIONS,
                 model: str | None = None) -> list[Stage]:
    """The evaluations of ``stage``'s merged model (``model``: another model directory, e.g. the learned model's
    merged export) loaded at each precision, with the stage's saved config (its data, evaluators and logger)."""
    run_dir = runner.out / stage.name
    merged = model or str(run_dir / "merged")
    name = stage.name if model is None else Path(model).parent.name
    return [Stage(f"{name}_{q}", (str(run_dir / "config.yaml"),),
                  {"model": "ScoredModel", "model.init_args.model": merged, "model.init_args.init_adapter": None,
                   "model.init_args.quantize": q}, "eval", common=False)
            for q in precisions]


def export_learned(run_dir: str | Path, model: str, adapter: str | Path) -> Path:
    """``<run_dir>/merged``: ``model`` with the saved ``adapter`` folded in at full precision (the learned model's
    control for the audit), written once."""
    from lit_unlearn.models.assembly import assemble

    out = Path(run_dir) / "merged"
    if not (out / "config.json").is_file():
        lm, tokenizer = assemble(model, None, str(adapter), "float32", None, "auto", False)
        lm.save_pretrained(str(out))
        tokenizer.save_pretrained(str(out))
    return out


def recovery(learned: float, unlearned: float, quantized: float, min_gap: float = 1e-3) -> float | None:
    """The share of what unlearning removed that the quantized model knows again (module docstring)."""
    gap = learned - unlearned
    return None if abs(gap) < min_gap else (quantized - unlearned) / gap
