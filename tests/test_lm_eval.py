"""The merged export of an unlearned run loads in lm-evaluation-harness as is (``lm_eval --model hf
--model_args pretrained=<run>/merged``): lm-eval's own HF wrapper scores continuations with the log-probabilities
the run's model gives them."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import FORGET_ROWS, RETAIN_ROWS, write_jsonl
from lit_unlearn.cli import cli_main

lm_eval = pytest.importorskip("lm_eval", reason="lm-eval is a test extra (pip install -e .[test])")


def test_a_merged_export_loads_in_lm_eval_with_the_runs_log_probs(tiny_model_dir, tmp_path):
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    write_jsonl(tmp_path / "forget.jsonl", FORGET_ROWS)
    write_jsonl(tmp_path / "retain.jsonl", RETAIN_ROWS)
    cli = cli_main(["fit", "--model", "GradDiff", "--model.init_args.model", tiny_model_dir,
                    "--model.init_args.lr", "0.05", "--data", "QADataModule",
                    "--data.init_args.forget", str(tmp_path / "forget.jsonl"),
                    "--data.init_args.retain", str(tmp_path / "retain.jsonl"), "--data.init_args.max_length", "64",
                    "--trainer.max_steps", "3", "--trainer.accelerator", "cpu",
                    "--trainer.enable_progress_bar", "false", "--export_merged", "true",
                    "--trainer.logger.init_args.save_dir", str(tmp_path / "logs")])
    merged = Path(cli.trainer.log_dir) / "merged"
    assert (merged / "config.json").is_file()
    rows = FORGET_ROWS[:3] + RETAIN_ROWS[:2]
    prompts, answers = [r["question"] for r in rows], [" " + r["answer"] for r in rows]
    # the run's model (merged in place by the export: same outputs as base + adapter) in this process
    ours = cli.model.answer_nlls(prompts, [[a] for a in answers])
    n_tokens = [cli.model.encode([p], [a])["labels"].ne(-100).sum().item() for p, a in zip(prompts, answers)]

    lm = HFLM(pretrained=str(merged), device="cpu", batch_size=2, dtype="float32")
    requests = [Instance(request_type="loglikelihood", doc={}, arguments=(p, a), idx=i)
                for i, (p, a) in enumerate(zip(prompts, answers))]
    got = lm.loglikelihood(requests)
    for (logprob, _), nll, n in zip(got, ours, n_tokens):
        torch.testing.assert_close(torch.tensor(-logprob / n), torch.tensor(nll[0]), rtol=1e-4, atol=1e-5)
    # ... and they are the unlearned model's, not the base model's
    base = HFLM(pretrained=tiny_model_dir, device="cpu", batch_size=2, dtype="float32").loglikelihood(requests)
    assert max(abs(a[0] - b[0]) for a, b in zip(got, base)) > 1e-3
