"""The adapter contract (``lit_unlearn.adapters.base.Adapter``), in the manner of PEFT's tuner tests: every class in
``lit_unlearn.adapters.ADAPTERS`` and each of its declared ``variants`` goes through every check below, so a new
adapter gets them by being registered. What a class declares (``starts_as_identity``, ``mergeable``) decides which
checks apply to it; nothing here names an adapter.

Checks: gradients reach the adapter's parameters and nothing of the base; save -> load into a fresh base gives
bit-identical outputs; ``disabled`` computes the base model; a fresh adapter that declares itself the identity is
one; ``merge`` gives a plain model with the same outputs where declared, an ``AdapterError`` where not; one step
of two gloo DDP processes on half a batch each equals one single-process step on the whole batch; and every method
admits exactly the adapters its ``adapter_types`` names (tests/test_methods.py runs the method contract on each).
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F

from lit_unlearn.adapters import ADAPTERS, AdapterError
from lit_unlearn.core.tokens import IGNORE
from lit_unlearn.methods import ALL_METHODS
from lit_unlearn.models import load_causal_lm

#: (id, class name, constructor arguments): the default configuration of each adapter and its declared variants
CASES = [(name if not variant else f"{name}-{variant}", name, kwargs) for name, cls in ADAPTERS.items()
         for variant, kwargs in {"": {}, **cls.variants}.items()]
IDS = [case[0] for case in CASES]
ROWS, LENGTH, PROMPT = 4, 12, 5  # a batch of equal-length rows (no padding), the first 5 tokens the prompt


def make(name: str, kwargs: dict):
    return ADAPTERS[name](**kwargs)


def toy_batch(vocab: int, seed: int = 0) -> dict:
    """Rows of random token ids, all of one length: the same batch whether cut in halves (DDP) or not."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (ROWS, LENGTH), generator=g)
    labels = ids.clone()
    labels[:, :PROMPT] = IGNORE
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


def forward(model, adapter, batch: dict) -> torch.Tensor:
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
    return model(**inputs, **adapter.forward_kwargs(batch), use_cache=False).logits


def row_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean over rows of each row's mean answer-token CE (equal rows per half, so halves average to the whole)."""
    tgt = labels[:, 1:]
    tok = F.cross_entropy(logits[:, :-1].transpose(1, 2).float(), tgt.clamp(min=0), reduction="none")
    mask = (tgt != IGNORE).float()
    return ((tok * mask).sum(1) / mask.sum(1)).mean()


def randomize(model, adapter, seed: int = 1, scale: float = 0.1) -> None:
    """Move every adapter parameter away from its initialisation (LoRA's B = 0 would hide a broken load)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in adapter.trainable_parameters(model):
            p.add_(torch.randn(p.shape, generator=g) * scale)


@pytest.fixture
def adapted(tiny_model_dir):
    """``adapted(name, kwargs)``: (model, adapter, batch) with the adapter applied to a fresh tiny base, eval mode."""

    def _make(name: str, kwargs: dict):
        torch.manual_seed(0)
        model = load_causal_lm(tiny_model_dir)
        adapter = make(name, kwargs)
        model = adapter.apply(model)
        model.eval()
        return model, adapter, toy_batch(model.config.vocab_size)

    return _make


def test_every_adapter_is_covered():
    """The cases come from the registry: every adapter class, and it is an Adapter with its capabilities declared."""
    assert {case[1] for case in CASES} == set(ADAPTERS) and len(ADAPTERS) >= 4
    for cls in ADAPTERS.values():
        assert isinstance(cls.mergeable, bool) and isinstance(cls.starts_as_identity, bool)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_gradients_reach_adapter_parameters_only(adapted, case):
    model, adapter, batch = adapted(case[1], case[2])
    model.train()
    trainable = dict(adapter.trainable_parameters(model))
    assert trainable, "the adapter has no trainable parameters"
    assert {id(p) for p in trainable.values()} == {id(p) for p in model.parameters() if p.requires_grad}
    row_loss(forward(model, adapter, batch), batch["labels"]).backward()
    leaked = [n for n, p in model.named_parameters() if p.grad is not None and id(p) not in
              {id(q) for q in trainable.values()}]
    assert not leaked, f"gradients reached base weights: {leaked[:3]}"
    reached = [n for n, p in trainable.items() if p.grad is not None and p.grad.abs().sum() > 0]
    assert reached, "no adapter parameter received a gradient"


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_save_load_round_trip_is_bit_identical(adapted, case, tmp_path):
    model, adapter, batch = adapted(case[1], case[2])
    randomize(model, adapter)
    with torch.no_grad():
        expected = forward(model, adapter, batch)
    adapter.save(model, tmp_path / "adapter")

    fresh_model, fresh, _ = adapted(case[1], case[2])
    fresh.load(fresh_model, tmp_path / "adapter")
    with torch.no_grad():
        got = forward(fresh_model, fresh, batch)
    assert torch.equal(got, expected)
    saved = {n: p for n, p in adapter.trainable_parameters(model)}
    for name, p in fresh.trainable_parameters(fresh_model):
        assert torch.equal(p, saved[name]), name


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_disabled_is_the_base_model(adapted, tiny_model_dir, case):
    model, adapter, batch = adapted(case[1], case[2])
    randomize(model, adapter)
    base = load_causal_lm(tiny_model_dir).eval()
    with torch.no_grad():
        reference = base(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        adapted_logits = forward(model, adapter, batch)
        with adapter.disabled(model):
            off = forward(model, adapter, batch)
        again = forward(model, adapter, batch)
    torch.testing.assert_close(off, reference, rtol=0, atol=1e-5)
    assert (adapted_logits - reference).abs().max() > 1e-3, "the randomized adapter did not change the outputs"
    assert torch.equal(again, adapted_logits), "disabled() did not switch the adapter back on"


@pytest.mark.parametrize("case", [c for c in CASES if ADAPTERS[c[1]].starts_as_identity],
                         ids=[c[0] for c in CASES if ADAPTERS[c[1]].starts_as_identity])
def test_a_fresh_adapter_that_declares_identity_is_one(adapted, tiny_model_dir, case):
    model, adapter, batch = adapted(case[1], case[2])
    base = load_causal_lm(tiny_model_dir).eval()
    with torch.no_grad():
        reference = base(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        torch.testing.assert_close(forward(model, adapter, batch), reference, rtol=0, atol=1e-5)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_merge_where_declared_and_a_clear_error_where_not(adapted, case):
    model, adapter, batch = adapted(case[1], case[2])
    randomize(model, adapter)
    if not type(adapter).mergeable:
        with pytest.raises(AdapterError, match=type(adapter).__name__):
            adapter.merge(model)
        return
    with torch.no_grad():
        expected = forward(model, adapter, batch)
        merged = adapter.merge(model)
        assert type(merged).__module__.startswith("transformers."), type(merged)
        assert not any(type(m).__module__.split(".")[0] not in ("transformers", "torch") for m in merged.modules())
        got = merged(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


# ---- DDP: a 2-process gloo step equals the single-process step ----------------------------------------------------
LR = 0.05


def one_step(model_dir: str, name: str, kwargs: dict, rows: slice, ddp: bool) -> dict[str, torch.Tensor]:
    """One SGD step on ``rows`` of the toy batch from the seeded fresh adapter; the adapter's parameters after it."""
    torch.manual_seed(0)
    model = load_causal_lm(model_dir)
    adapter = make(name, kwargs)
    model = adapter.apply(model)
    model.train()
    randomize(model, adapter)  # every parameter gets a gradient (LoRA's A gets none while B = 0)
    batch = {k: v[rows] for k, v in toy_batch(model.config.vocab_size).items()}
    params = dict(adapter.trainable_parameters(model))
    wrapped = torch.nn.parallel.DistributedDataParallel(model) if ddp else model
    logits = wrapped(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                     **adapter.forward_kwargs(batch), use_cache=False).logits
    row_loss(logits, batch["labels"]).backward()
    torch.optim.SGD(params.values(), lr=LR).step()
    return {n: p.detach().clone() for n, p in params.items()}


def _ddp_worker(rank: int, model_dir: str, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        half = ROWS // 2
        for case_id, name, kwargs in CASES:
            params = one_step(model_dir, name, kwargs, slice(rank * half, (rank + 1) * half), ddp=True)
            if rank == 0:
                torch.save(params, os.path.join(out_dir, f"{case_id}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ddp_steps(tiny_model_dir, tmp_path_factory):
    """Every case's adapter parameters after one 2-process DDP step (one spawn for all cases)."""
    out = tmp_path_factory.mktemp("ddp")
    mp.spawn(_ddp_worker, args=(tiny_model_dir, str(out / "init"), str(out)), nprocs=2, join=True)
    return {case[0]: torch.load(out / f"{case[0]}.pt") for case in CASES}


@pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                    reason="needs torch.distributed with gloo")
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_ddp_step_equals_the_single_process_step(ddp_steps, tiny_model_dir, case):
    single = one_step(tiny_model_dir, case[1], case[2], slice(0, ROWS), ddp=False)
    ddp = ddp_steps[case[0]]
    assert set(ddp) == set(single)
    torch.manual_seed(0)
    start = load_causal_lm(tiny_model_dir)
    adapter = make(case[1], case[2])
    start = adapter.apply(start)
    randomize(start, adapter)
    moved = 0.0
    for name, p0 in adapter.trainable_parameters(start):
        torch.testing.assert_close(ddp[name], single[name], rtol=1e-4, atol=1e-6)
        moved = max(moved, (single[name] - p0).abs().max().item())
    assert moved > 1e-6, "the step did not move the adapter"


# ---- methods x adapters ------------------------------------------------------------------------------------------
def test_the_method_contract_covers_every_registered_adapter():
    """tests/test_methods.py runs the method contract (finite loss, adapter-only gradients, steps move the adapter,
    fused = separate forward) over every method x adapter pair the method admits; its adapter list must be the
    registry, so a newly registered adapter fails here until the method contract runs on it."""
    from test_methods import ADAPTER_KINDS, CONTRACT

    assert set(ADAPTER_KINDS.values()) == set(ADAPTERS)
    for cls in ALL_METHODS:
        admitted = set(ADAPTERS) if cls.adapter_types is None else set(cls.adapter_types)
        assert admitted <= set(ADAPTERS), f"{cls.__name__}.adapter_types names an unregistered adapter"
        assert {ADAPTER_KINDS[k] for c, k in CONTRACT if c is cls} == admitted, cls.__name__


def test_a_method_refuses_an_adapter_it_does_not_admit(make_method):
    """The other side of ``adapter_types``: a pair outside it is one MethodError naming the admitted adapters."""
    from lit_unlearn.methods import MethodError

    refused = [(cls, case) for cls in ALL_METHODS for case in CASES
               if cls.adapter_types is not None and case[1] not in cls.adapter_types]
    assert refused, "every method admits every adapter: nothing to check"
    cls, case = refused[0]
    with pytest.raises(MethodError, match=" or ".join(cls.adapter_types)):
        make_method(cls, adapter=make(case[1], case[2]))
