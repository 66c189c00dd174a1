"""The throughput benchmark runs from a clean checkout on CPU and its systems compute the same first loss (a smoke run:
numbers of a 1-step run are not measurements, so nothing here is timed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO_ROOT


def test_the_benchmark_runs_and_its_systems_agree_on_the_first_loss(tmp_path):
    out = tmp_path / "bench.json"
    cmd = [sys.executable, str(REPO_ROOT / "bench" / "throughput.py"), "--shape", "tiny", "--seq-len", "16",
           "--batch", "2", "--pool", "1", "--warmup", "1", "--steps", "1", "--rounds", "1",
           "--vocab", "2048", "--methods", "GradDiff,NPO:cached", "--systems", "a,b,lit,lit-logits", "--model-dir",
           str(tmp_path / "model"), "--json", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)))
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {(r["system"], r["method"]): r for r in json.loads(out.read_text())["summary"]}
    assert set(rows) == {("a", "CE"), ("b", "GradDiff"), ("b", "NPO"), ("lit", "GradDiff"), ("lit", "NPO:cached"),
                         ("lit-logits", "GradDiff"), ("lit-logits", "NPO:cached")}
    # a fresh LoRA is the identity: every implementation of a loss sees the same first batch and model
    for lit in ("lit", "lit-logits"):
        assert rows[(lit, "GradDiff")]["first_loss"] == pytest.approx(rows[("b", "GradDiff")]["first_loss"], abs=1e-4)
        assert rows[(lit, "NPO:cached")]["first_loss"] == pytest.approx(rows[("b", "NPO")]["first_loss"], abs=1e-4)
        assert rows[(lit, "GradDiff")]["vs_b"] > 0 and rows[(lit, "GradDiff")]["mem_vs_b"] > 0
    # the exact step-memory probe (a private profiler API) still works, and the lean head needs less than logits
    for key, row in rows.items():
        assert row["step_peak_bytes"], key
    assert rows[("lit", "GradDiff")]["step_peak_bytes"] < rows[("lit-logits", "GradDiff")]["step_peak_bytes"]
    # the markdown view of the same file renders every row
    md = subprocess.run([sys.executable, str(REPO_ROOT / "bench" / "throughput.py"), "--markdown", str(out)],
                        capture_output=True, text=True, timeout=120, env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)))
    assert md.returncode == 0
    assert sum(line.startswith("| ") for line in md.stdout.splitlines()) == len(rows) + 1  # header + a row each
