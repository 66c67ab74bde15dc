"""Chunked shared-negative softmax: a hand-checked batch, then against the plain autograd graph (cross-entropy over
the materialised logits) — same loss and gradients for every chunk size, with and without logQ and accidental-hit
masking."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from recsparse.kernels.softmax import materialized_shared_negative_softmax_loss, shared_negative_softmax_loss


def test_hand_checked_batch():
    # u0·p0 = 1, u0·n = (0, .5); u1·p1 = 1, u1·n = (1, .5) but n0 is u1's own positive (id 4): masked for row 1
    user = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    pos = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    neg = torch.tensor([[0.0, 1.0], [0.5, 0.5]])
    logq = torch.tensor([0.2, 0.1])
    t = 0.5

    def ce(row: list[float]) -> float:  # target = column 0
        return -(row[0] - math.log(sum(math.exp(x) for x in row)))
    want = (ce([2.0, 0.0 - .2, 1.0 - .1]) + ce([2.0, 1.0 - .1])) / 2
    ids = (torch.tensor([3, 4]), torch.tensor([4, 9]))
    for fn in (shared_negative_softmax_loss, materialized_shared_negative_softmax_loss):
        assert fn(user, pos, neg, t, logq, *ids).item() == pytest.approx(want, rel=1e-6)


def _inputs(B: int, M: int, d: int, seed: int, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    user = F.normalize(torch.randn(B, d, generator=g, dtype=dtype), dim=-1)
    pos = F.normalize(torch.randn(B, d, generator=g, dtype=dtype), dim=-1)
    neg = F.normalize(torch.randn(M, d, generator=g, dtype=dtype), dim=-1)
    pos_ids = torch.randint(0, 12, (B,), generator=g)
    neg_ids = torch.randint(0, 12, (M,), generator=g)  # few ids: many accidental hits
    logq = torch.rand(M, generator=g, dtype=dtype)
    return user, pos, neg, pos_ids, neg_ids, logq


def _grads(fn, tensors):
    xs = [x.clone().requires_grad_() for x in tensors]
    loss = fn(*xs)
    loss.backward()
    return loss.detach(), [x.grad for x in xs]


@pytest.mark.parametrize("chunk", [1, 3, 7, 64, None])
@pytest.mark.parametrize("with_ids,with_logq", [(False, False), (True, False), (True, True)])
def test_matches_plain_cross_entropy(chunk, with_ids, with_logq):
    user, pos, neg, pos_ids, neg_ids, logq = _inputs(B=17, M=23, d=8, seed=chunk or 0)
    kw = {"neg_logq": logq if with_logq else None,
          "pos_ids": pos_ids if with_ids else None, "neg_ids": neg_ids if with_ids else None}
    got, g_got = _grads(lambda u, p, n: shared_negative_softmax_loss(u, p, n, 0.1, chunk_rows=chunk, **kw),
                        (user, pos, neg))
    want, g_want = _grads(lambda u, p, n: materialized_shared_negative_softmax_loss(u, p, n, 0.1, **kw), (user, pos, neg))
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    for a, b in zip(g_got, g_want):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_row_with_every_negative_masked_is_finite():
    # row 0's positive equals every negative: its only candidate is the positive -> loss 0, no gradient
    user, pos, neg, _, _, _ = _inputs(B=3, M=4, d=5, seed=1)
    pos_ids, neg_ids = torch.tensor([5, 1, 2]), torch.tensor([5, 5, 5, 5])
    got, grads = _grads(lambda u, p, n: shared_negative_softmax_loss(u, p, n, 0.5, None, pos_ids, neg_ids,
                                                                     chunk_rows=2), (user, pos, neg))
    want = materialized_shared_negative_softmax_loss(user, pos, neg, 0.5, None, pos_ids, neg_ids)
    torch.testing.assert_close(got, want)
    assert all(torch.isfinite(g).all() for g in grads)
    assert grads[0][0].abs().max() == 0


def test_gradcheck_float64():
    user, pos, neg, pos_ids, neg_ids, logq = _inputs(B=5, M=6, d=3, seed=2)
    xs = tuple(x.clone().requires_grad_() for x in (user, pos, neg))
    assert torch.autograd.gradcheck(
        lambda u, p, n: shared_negative_softmax_loss(u, p, n, 0.3, logq, pos_ids, neg_ids, chunk_rows=2), xs)


def test_bad_arguments_are_named():
    x = torch.ones(2, 3)
    with pytest.raises(ValueError, match="neg"):
        shared_negative_softmax_loss(x, x, torch.ones(4, 2), 0.1)
    with pytest.raises(ValueError, match="temperature"):
        shared_negative_softmax_loss(x, x, x, 0.0)
    with pytest.raises(ValueError, match="pos_ids and neg_ids"):
        shared_negative_softmax_loss(x, x, x, 0.1, pos_ids=torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="chunk_rows"):
        shared_negative_softmax_loss(x, x, x, 0.1, chunk_rows=0)
