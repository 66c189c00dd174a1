"""Influence stage pieces: RapidGrad, batched per-sample gradients, streamed top-k influence, and the
influence -> weights mapping on hand-made cases."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import perturb_lora
from lit_unlearn.core.errors import ConfigError
from lit_unlearn.influence import RapidGrad, TopK, influence_weights, loss_weights, per_sample_gradients, \
    top_influences, view_scores
from lit_unlearn.influence.gradients import trainable_linears
from lit_unlearn.methods import Finetune


# ---- RapidGrad -----------------------------------------------------------------------------------------------------------
def test_rapidgrad_preserves_inner_products_within_the_pooling_bound():
    """Shuffles and signs keep inner products exactly; pooling D -> K adds an error of order |a||b| / sqrt(K). On
    random pairs (correlated and not) the error stays under 5 |a||b| / sqrt(K), and norms within 5%."""
    g = torch.Generator().manual_seed(0)
    dim, k = 50_000, 4096
    rg = RapidGrad(dim, k=k, shuffles=20, seed=3, pad_multiple=2**16)
    assert rg.padded == 65536 and sorted(rg.order.tolist()) == list(range(65536))  # one permutation
    a = torch.randn(8, dim, generator=g)
    b = 0.6 * a + 0.8 * torch.randn(8, dim, generator=g)  # correlation 0.6
    ca, cb = rg(a), rg(b)
    assert ca.shape == (8, k)
    exact = (a * b).sum(1)
    bound = 5 * a.norm(dim=1) * b.norm(dim=1) / math.sqrt(k)
    assert ((ca * cb).sum(1) - exact).abs().lt(bound).all()
    torch.testing.assert_close(ca.norm(dim=1), a.norm(dim=1), rtol=0.05, atol=0)
    # the same seed gives the same transform; another seed another one
    torch.testing.assert_close(RapidGrad(dim, k=k, seed=3, pad_multiple=2**16)(a), ca)
    assert not torch.allclose(RapidGrad(dim, k=k, seed=4, pad_multiple=2**16)(a), ca)
    with pytest.raises(ConfigError, match="power of two"):
        RapidGrad(dim, k=1000)
    with pytest.raises(ConfigError, match="D=50000"):
        rg(torch.randn(3, 10))


# ---- per-sample gradients ---------------------------------------------------------------------------------------------------
def test_per_sample_gradients_equal_one_backward_per_row(make_method, qa_batch):
    method = make_method(Finetune)
    perturb_lora(method, scale=0.1, seed=0)
    batch = qa_batch["retain"]
    batched = per_sample_gradients(method.lm, lambda: method(batch).mean_nll)
    linears = trainable_linears(method.lm)
    assert batched.shape == (batch["input_ids"].size(0), sum(m.weight.numel() for _, m in linears))
    for i in range(batch["input_ids"].size(0)):
        row = {k: v[i:i + 1] for k, v in batch.items() if isinstance(v, torch.Tensor)}
        method.lm.zero_grad(set_to_none=True)
        method(row).mean_nll.sum().backward()
        single = torch.cat([m.weight.grad.reshape(-1) for _, m in linears])
        torch.testing.assert_close(batched[i], single, rtol=1e-4, atol=1e-6)
    assert batched.abs().sum() > 0


def test_per_sample_gradients_refuse_non_linear_trainables(make_method, qa_batch):
    method = make_method(Finetune, adapter="prefix")
    with pytest.raises(ConfigError, match="trainable nn.Linear weights only"):
        per_sample_gradients(method.lm, lambda: method(qa_batch["forget"]).mean_nll)


# ---- influence and weights -----------------------------------------------------------------------------------------------------
def test_streamed_top_k_equals_the_full_computation():
    g = torch.Generator().manual_seed(1)
    train, test = torch.randn(23, 16, generator=g), torch.randn(5, 16, generator=g)
    chunks = [(torch.arange(s, min(s + 7, 23)), train[s:s + 7]) for s in range(0, 23, 7)]
    top = top_influences(chunks, test, k=4)
    full = (test @ train.T).topk(4, dim=1)
    torch.testing.assert_close(top.values, full.values)
    assert torch.equal(top.index, full.indices)


def test_view_scores_and_weights_on_a_hand_made_case():
    top = TopK(3, 2)  # 3 test rows, top-2 each, over 4 train rows
    top.values = torch.tensor([[5.0, 1.0], [4.0, 2.0], [3.0, 1.0]])
    top.index = torch.tensor([[0, 1], [0, 2], [1, 0]])
    # dense vectors: test0 [5,1,0,0], test1 [4,0,2,0], test2 [1,3,0,0]; medians per train row [4,1,0,0]
    torch.testing.assert_close(view_scores(top, 4, top_n=2), torch.tensor([4.0, 1.0, 0.0, 0.0]))
    # top_n = 1 keeps each test's largest only: [5,0,0,0], [4,0,0,0], [0,3,0,0] -> medians [4,0,0,0]
    torch.testing.assert_close(view_scores(top, 4, top_n=1), torch.tensor([4.0, 0.0, 0.0, 0.0]))

    primary, cross = torch.tensor([4.0, 1.0, 0.0, 0.0]), torch.tensor([0.0, 0.0, 1.0, 0.0])
    s = primary - cross  # [4, 1, -1, 0]: median 0.5, |s - med| = [3.5, .5, 1.5, .5], MAD 1.0
    z = (s - 0.5) / 1.4826
    w = torch.exp((z / 0.7).clamp(math.log(0.2), math.log(3.0)))
    torch.testing.assert_close(influence_weights(primary, cross, tau=0.7), w / w.mean())
    assert influence_weights(primary, cross, tau=0.7).mean().item() == pytest.approx(1.0)
    # all equal scores: MAD 0 -> the 1e-3 floor, z = 0, every weight 1
    torch.testing.assert_close(influence_weights(torch.ones(5), torch.zeros(5), tau=1.2), torch.ones(5))


def test_loss_based_fallback_weights():
    losses = torch.tensor([1.0, 2.0, 3.0, 10.0])
    w = torch.exp((losses.double() - 2.5) / 0.8)
    torch.testing.assert_close(loss_weights(losses), (w / w.mean()).clamp(0.5, 3.0).float())
    assert loss_weights(losses)[-1] == pytest.approx(3.0)  # the outlier is capped


def test_non_finite_influence_is_refused_naming_the_view():
    top = TopK(2, 2)
    top.values = torch.tensor([[1.0, float("nan")], [0.5, 0.2]])
    top.index = torch.tensor([[0, 1], [1, 0]])
    with pytest.raises(ConfigError, match="influence view FR holds NaN or inf"):
        view_scores(top, 2, view="FR")
    with pytest.raises(ConfigError, match="NaN or inf"):
        loss_weights(torch.tensor([1.0, float("inf")]))


# ---- token scores (TNPO's token selection) ---------------------------------------------------------------------------
def test_token_scores_equal_gradient_dot_products_per_token(make_method, qa_batch):
    """d^T grad l(x_t) by two forwards (central difference) equals one backward per token, to 1% of the largest
    score: the float32 rounding of the two forwards' NLLs bounds the difference quotient's accuracy."""
    from lit_unlearn.influence.tokens import token_scores

    method = make_method(Finetune)
    perturb_lora(method, scale=0.1, seed=0)
    linears = trainable_linears(method.lm)
    g = torch.Generator().manual_seed(0)
    direction = torch.randn(sum(m.weight.numel() for _, m in linears), generator=g)
    batch = qa_batch["forget"]
    got = token_scores(method.lm, lambda b: method(b).token_nll, batch, direction)
    answer = batch["labels"] != -100
    assert (got[~answer] == 0).all()
    exact = torch.zeros_like(got)
    for i, t in answer.nonzero().tolist():
        method.lm.zero_grad(set_to_none=True)
        method(batch).token_nll[i, t - 1].backward()  # position t - 1 predicts token t
        exact[i, t] = float(direction @ torch.cat([m.weight.grad.reshape(-1) for _, m in linears]))
    assert exact.abs().max() > 0.1
    torch.testing.assert_close(got, exact, rtol=0, atol=0.01 * float(exact.abs().max()))


def test_select_tokens_keeps_the_top_tokens_widened_within_the_answer():
    from lit_unlearn.influence.tokens import select_tokens

    labels = torch.tensor([[-100, -100, 5, 6, 7, 8, 9, 10, 11, 12]])
    scores = torch.tensor([[9.0, 9.0, 0.1, 0.2, 0.3, 5.0, 0.1, 0.2, 0.1, 0.0]])
    mask = select_tokens(scores, labels, top=1, window=1)
    assert mask.tolist() == [[0, 0, 0, 0, 1, 1, 1, 0, 0, 0]]  # token 5, widened by one either side
    assert select_tokens(scores, labels, top=1, window=3).tolist() == [[0, 0, 1, 1, 1, 1, 1, 1, 1, 0]]


def test_token_masks_travel_in_the_batch_and_bad_positions_are_refused(tiny_model_dir, qa_files, tmp_path):
    from conftest import first_train_batch, make_qa_datamodule, write_jsonl

    from lit_unlearn.core.errors import DataError

    plain = make_qa_datamodule(tiny_model_dir, qa_files)
    rows = plain.datasets["forget"].rows
    first = {r["id"]: [r["labels"].index(next(x for x in r["labels"] if x != -100))] for r in rows}
    masks = write_jsonl(tmp_path / "m.jsonl", [{"id": k, "tokens": v} for k, v in first.items()])
    dm = make_qa_datamodule(tiny_model_dir, qa_files, token_masks={"forget": str(masks)})
    batch = first_train_batch(dm)["forget"]
    assert batch["token_mask"].shape == batch["input_ids"].shape
    assert batch["token_mask"].sum(1).tolist() == [1] * batch["input_ids"].size(0)
    for i, rid in enumerate(batch["id"]):
        assert batch["token_mask"][i].nonzero().flatten().tolist() == first[rid]
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"id": k, "tokens": [0]} for k in first])
    with pytest.raises(DataError, match="selects position 0 of row .* not one of its answer tokens"):
        make_qa_datamodule(tiny_model_dir, qa_files, token_masks={"forget": str(bad)})
